"""syncbus.stages: the replication path costed stage by stage, in CPU time and
in instructions under callgrind (nothing here judges the figures' size)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from syncbus import stages
from syncbus.stages import STAGES, CallgrindError, instruction_costs, stage_costs


def test_stage_costs_time_every_stage() -> None:
    res = stage_costs(100)
    assert list(res) == [f"{name}_us" for name in STAGES]
    assert all(v > 0 for v in res.values()), res


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_are_the_same_under_load() -> None:
    """Two counts at once (each loading the other's CPU) give the same figures
    to the instruction: what makes them the measure to compare code versions
    with on a shared machine. Each stage gets its own count, start-up and
    set-up excluded: a card's pre-install shows as the difference between an
    insert with and without the card, and the lazy decode as cheaper than the
    full one."""
    with ThreadPoolExecutor(2) as pool:
        one, two = pool.map(lambda _: instruction_costs(150), range(2))
    assert one == two
    assert list(one) == [f"{name}_instr" for name in STAGES]
    assert all(v > 1000 for v in one.values()), one
    assert one["decode_instr"] < one["decode_full_instr"]
    assert one["apply_insert_with_card_instr"] > one["apply_insert_instr"] + 10_000
    assert one["apply_update_with_card_instr"] > one["apply_update_instr"]


def test_without_valgrind_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages.shutil, "which", lambda name: None)
    with pytest.raises(CallgrindError, match="apt-get install valgrind"):
        instruction_costs(10)
    assert stages.main(["--instructions", "--records", "10"]) == 1


def test_records_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        stages.main(["--records", "0"])
    assert exc.value.code == 2
    assert "--records must be at least 1" in capsys.readouterr().err
