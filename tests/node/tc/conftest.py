"""Helpers for the tc tests: a model, and running tc lines against it."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from node.tc.args import makeargs
from node.tc.cli import line_options, run_batch_text, run_line
from node.tc.errors import CliExit
from node.tc.model import TcModel
from node.tc.parse import Options


@dataclass
class Result:
    code: int
    out: str
    err: str


class Tc:
    """`tc` against one offline model: tc("filter add ...") like a shell line."""

    def __init__(self, model: TcModel | None = None) -> None:
        self.model = model if model is not None else TcModel()

    def __call__(self, line: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        words = makeargs(line) or []
        words, opts = line_options(words, Options(), err)
        try:
            code = run_line(self.model, words, opts, out, err)
        except CliExit as exc:
            code = exc.code
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, line: str) -> str:
        res = self(line)
        assert res.code == 0, f"{line!r}: {res.err}"
        return res.out

    def batch(self, text: str, force: bool = False) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = run_batch_text(self.model, Options(force=force), "test.batch", text, out, err)
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def tc() -> Tc:
    return Tc()


@pytest.fixture
def tci() -> Tc:
    """A model with an ingress qdisc on eth0 and eth1."""
    t = Tc()
    t.ok("qdisc add dev eth0 ingress")
    t.ok("qdisc add dev eth1 ingress")
    return t
