"""`ctlab tc`: tc.c's option loop and batch mode over the offline model."""

from __future__ import annotations

import io
import json
from pathlib import Path

from node.tc.cli import main, tc_main
from node.tc.model import TcModel


def run(argv: list[str], model: TcModel | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = tc_main(argv, out, err, model)
    return code, out.getvalue(), err.getvalue()


def batch_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.batch"
    path.write_text(text)
    return str(path)


RULES = """\
# the firewall of the talk, chain 0
qdisc add dev eth0 ingress
filter add dev eth0 ingress prio 1 chain 0 proto ip flower ct_state -trk \\
    action ct zone 2 pipe action goto chain 2   # comment after a continuation
filter add dev eth0 ingress prio 1 chain 2 proto ip flower ct_state +trk+est action pass
filter show dev eth0 ingress
"""


def test_batch_runs_every_line_on_one_model(tmp_path: Path) -> None:
    code, out, err = run(["-batch", batch_file(tmp_path, RULES)])
    assert (code, err) == (0, "")
    assert out.count("handle 0x1") == 2 and "action order 2: gact action goto chain 2" in out


def test_global_options_apply_to_every_batch_line(tmp_path: Path) -> None:
    code, out, _ = run(["-s", "-j", "-batch", batch_file(tmp_path, RULES)])
    assert code == 0
    data = json.loads(out)
    assert data[1]["options"]["actions"][0]["stats"]["packets"] == 0


def test_the_first_failure_stops_the_batch(tmp_path: Path) -> None:
    text = ("qdisc add dev eth0 ingress\nqdisc add dev eth0 ingress\n"
            "filter add dev eth0 ingress pref 1 protocol ip flower action drop\n")
    path = batch_file(tmp_path, text)
    model = TcModel()
    code, _, err = run(["-batch", path], model)
    assert code == 1
    assert err == f"Error: Exclusivity flag on, cannot modify.\nCommand failed {path}:2\n"
    assert not model.devices["eth0"].ingress.chains  # type: ignore[union-attr]
    model = TcModel()
    code, _, err = run(["-force", "-batch", path], model)
    assert code == 1 and err.endswith(f"Command failed {path}:2\n")
    assert model.devices["eth0"].ingress.chains  # type: ignore[union-attr]


def test_an_exit_ends_the_batch_even_with_force(tmp_path: Path) -> None:
    text = ("actions add action ct label zz\n"
            "actions add action ct zone 1 index 1\n")
    model = TcModel()
    code, _, err = run(["-force", "-batch", batch_file(tmp_path, text)], model)
    assert code == 255
    assert err == 'Error: argument "zz" is wrong: ct: labels must be a hex string\n\n'
    assert model.actions.get("ct", 1) is None


def test_batch_line_conveniences(tmp_path: Path) -> None:
    text = ("tc qdisc add dev eth0 ingress\n"
            "-j qdisc show dev eth0\n"
            "qdisc show dev 'eth0'\n")
    code, out, _ = run(["-batch", batch_file(tmp_path, text)])
    assert code == 0
    assert out.splitlines() == ['[{"kind":"ingress","handle":"ffff:","parent":"ffff:fff1",'
                                '"options":{}}]', "qdisc ingress ffff: parent ffff:fff1 "
                                "---------------- "]


def test_unterminated_quote_and_missing_file(tmp_path: Path) -> None:
    code, _, err = run(["-batch", batch_file(tmp_path, "qdisc add dev 'eth0 ingress\n")])
    assert (code, err) == (1, "Unterminated quoted string\n")
    code, _, err = run(["-batch", str(tmp_path / "nope")])
    assert code == 255 and err.startswith('Cannot open file "')


def test_single_commands_and_options() -> None:
    assert run(["-V"])[1].startswith("tc utility, iproute2-")
    code, _, err = run(["-x", "qdisc", "show"])
    assert (code, err) == (255, 'Option "-x" is unknown, try "tc -help".\n')
    code, _, err = run(["foo"])
    assert (code, err) == (255, 'Object "foo" is unknown, try "tc help".\n')
    code, _, err = run(["filter", "frob"])
    assert (code, err) == (255, 'Command "frob" is unknown, try "tc filter help".\n')
    assert run(["qdisc", "add", "dev", "eth0", "ingress"])[0] == 0
    code, _, err = run(["actions", "add", "action", "ct", "nat"])
    assert (code, err) == (255, 'Command line is not complete. Try option "help"\n')


def test_main_uses_the_process_streams(capsys: object) -> None:
    assert main(["qdisc", "show"]) == 0
