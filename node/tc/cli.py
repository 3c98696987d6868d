"""``ctlab tc``: iproute2's tc front end (tc/tc.c main and batch) over an
offline in-memory model (DESIGN.md §5).

    ctlab tc [OPTIONS] OBJECT COMMAND ...
    ctlab tc [-s] [-j] [-force] -batch FILE      (FILE "-" is stdin)

In a batch file each line is one tc command without the "tc" word, '#' starts
a comment and a trailing backslash continues the line; the first failing
command stops the batch ("Command failed FILE:LINE", exit 1) unless -force.
Two conveniences beyond iproute2, so that pasted lines and kernel tdc cases
run unchanged: a line may start with "tc", and a line may carry its own
global options ("-s filter show dev eth0 ingress").
"""

from __future__ import annotations

import sys
from typing import TextIO

from node.tc.args import Args, getcmdlines, makeargs
from node.tc.errors import CliExit, CmdFailed
from node.tc.model import TcModel
from node.tc.parse import TC_USAGE, Options, parse_options

VERSION = "tc utility, iproute2-7.1.0 (ctlab offline model)\n"


def tc_main(argv: list[str], stdout: TextIO, stderr: TextIO,
            model: TcModel | None = None) -> int:
    """One tc invocation; returns the exit code."""
    opts = Options()
    args = Args(list(argv), stderr.write)
    try:
        special = parse_options(args, opts)
    except (CmdFailed, CliExit) as exc:
        return exc.code
    if special == "version":
        stdout.write(VERSION)
        return 0
    if special == "help":
        stderr.write(TC_USAGE)
        return 0
    if model is None:
        model = TcModel()
    if opts.batch is not None:
        return run_batch(model, opts, opts.batch, stdout, stderr)
    if not args:
        stderr.write(TC_USAGE)
        return 0
    try:
        return run_line(model, args.argv[args.pos:], opts, stdout, stderr)
    except CliExit as exc:
        return exc.code


def run_line(model: TcModel, argv: list[str], opts: Options, stdout: TextIO,
             stderr: TextIO) -> int:
    """One command; CliExit propagates after its output is written."""
    try:
        code, out, err = model.run(argv, opts)
    except CliExit as exc:
        stdout.write(exc.stdout)
        stderr.write(exc.stderr)
        raise
    stdout.write(out)
    stderr.write(err)
    return code


def line_options(words: list[str], opts: Options, stderr: TextIO) -> tuple[list[str], Options]:
    """The batch-line conveniences: an optional leading "tc", then options."""
    if words and words[0] == "tc":
        words = words[1:]
    if not words or not words[0].startswith("-"):
        return words, opts
    local = Options(**{k: getattr(opts, k) for k in opts.__dataclass_fields__})
    args = Args(words, stderr.write)
    parse_options(args, local)
    return words[args.pos:], local


def run_batch(model: TcModel, opts: Options, name: str, stdout: TextIO,
              stderr: TextIO) -> int:
    """tc.c batch()."""
    try:
        if name == "-":
            text = sys.stdin.read()
        else:
            with open(name, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        stderr.write(f'Cannot open file "{name}" for reading: {exc.strerror}\n')
        return 255
    return run_batch_text(model, opts, name, text, stdout, stderr)


def run_batch_text(model: TcModel, opts: Options, name: str, text: str, stdout: TextIO,
                   stderr: TextIO) -> int:
    ret = 0
    for lineno, line in getcmdlines(text):
        words = makeargs(line)
        if words is None:
            stderr.write("Unterminated quoted string\n")
            return 1
        if not words:
            continue
        try:
            words, local = line_options(words, opts, stderr)
            code = run_line(model, words, local, stdout, stderr) if words else 0
        except CmdFailed as exc:
            code = exc.code
        except CliExit as exc:
            return exc.code
        if code:
            stderr.write(f"Command failed {name}:{lineno}\n")
            ret = 1
            if not opts.force:
                break
    return ret


def main(argv: list[str]) -> int:
    """Entry point for ``ctlab tc ...`` (argv without the program name)."""
    return tc_main(argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
