"""The kernel's tdc cases (tools/testing/selftests/tc-testing) through the batch runner.

Each case runs in a fresh offline model, as tdc runs it on a fresh namespace:
setup (with its allowed exit codes), cmdUnderTest (its exit code must be
expExitCode), verifyCmd (matchPattern, a regex with DOTALL|MULTILINE as tdc
compiles it, must occur matchCount times), teardown. The cases are read from
tests/fixtures/tc-testing, a copy of the shared corpus (CTLAB_SHARED_DIR, default
<repo>/../shared) so the test does not depend on it; a separate test checks the
copy is current when the shared corpus is there.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from node.tc.args import makeargs
from node.tc.cli import line_options, run_batch_text, run_line
from node.tc.errors import CliExit
from node.tc.model import TcModel
from node.tc.parse import Options

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "tc-testing"
SHARED = Path(os.environ.get("CTLAB_SHARED_DIR", REPO.parent / "shared"))
CORPORA = ("actions-ct.json", "filters-flower.json")
# tdc_config.py's names for the test devices
NAMES = {"$TC ": "", "$TC": "", "$DEV0": "v0p0", "$DEV1": "v0p1", "$DEV2": "v0p2",
         "$DUMMY": "dummy1", "$ETH": "eth0"}


def _cases() -> list[Any]:
    out = []
    for name in CORPORA:
        data = json.loads((FIXTURES / name).read_text())
        for case in data["tests"]:
            out.append(pytest.param(case, id=f"{name.split('.')[0]}-{case['id']}"))
    return out


def _subst(cmd: str) -> str:
    for key, value in NAMES.items():
        cmd = cmd.replace(key, value)
    return cmd


def _run(model: TcModel, cmd: str) -> tuple[int, str, str]:
    """One tdc command line, through the batch runner's per-line path."""
    out, err = io.StringIO(), io.StringIO()
    words = makeargs(_subst(cmd)) or []
    words, opts = line_options(words, Options(), err)
    try:
        code = run_line(model, words, opts, out, err)
    except CliExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def _steps(model: TcModel, steps: list[Any]) -> None:
    for step in steps:
        cmd, allowed = (step[0], step[1:]) if isinstance(step, list) else (step, [0])
        code, _, err = _run(model, cmd)
        assert code in allowed, f"{cmd!r}: exit {code}, {err}"


@pytest.mark.parametrize("case", _cases())
def test_tdc_case(case: dict[str, Any]) -> None:
    model = TcModel()
    _steps(model, case.get("setup", []))
    code, _, err = _run(model, case["cmdUnderTest"])
    assert code == int(case["expExitCode"]), err
    code, out, err = _run(model, case["verifyCmd"])
    pattern = re.compile(case["matchPattern"], re.DOTALL | re.MULTILINE)
    assert len(pattern.findall(out)) == int(case["matchCount"]), out + err
    _steps(model, case.get("teardown", []))


@pytest.mark.parametrize("case", _cases())
def test_tdc_case_as_one_batch_file(case: dict[str, Any]) -> None:
    """The same case as a `ctlab tc -force -batch FILE` run: setup, command, verify."""
    lines = [s[0] if isinstance(s, list) else s for s in case.get("setup", [])]
    lines += [case["cmdUnderTest"], case["verifyCmd"]]
    out, err = io.StringIO(), io.StringIO()
    code = run_batch_text(TcModel(), Options(force=True), "case.batch",
                          "\n".join(_subst(line) for line in lines) + "\n", out, err)
    expect_fail = int(case["expExitCode"]) != 0
    assert code == (1 if expect_fail else 0), err.getvalue()
    pattern = re.compile(case["matchPattern"], re.DOTALL | re.MULTILINE)
    assert len(pattern.findall(out.getvalue())) == int(case["matchCount"])


@pytest.mark.skipif(not (SHARED / "corpora" / "tc-testing").is_dir(),
                    reason="shared corpus not present")
def test_fixture_copy_matches_shared_corpus() -> None:
    for name in CORPORA:
        shared = json.loads((SHARED / "corpora" / "tc-testing" / name).read_text())
        assert json.loads((FIXTURES / name).read_text()) == shared, name
