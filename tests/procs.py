"""What a test needs to check that a command left nothing behind: the
processes below a PID, the network namespaces there are (and those of one
run), and a command run until it is ready and then sent SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _stat(path: Path) -> list[str]:
    """/proc/PID/stat's fields after the command name (state, ppid, ...)."""
    return path.read_text().rsplit(")", 1)[1].split()


def state(pid: int) -> str:
    """The process's state letter (R, S, T when stopped by a signal, Z ...)."""
    return _stat(Path(f"/proc/{pid}/stat"))[0]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat(stat)
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` that still exist (zombies count: nobody reaped them)."""
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def netns_names() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def netns_of_run(pid: int) -> set[str]:
    """The network namespaces of the netns run below `pid`: those its processes
    are in (`ip netns identify`: the same inode as /run/netns/NAME), and those
    sharing their run's prefix (the hub, where no process lives). Unlike a
    difference of two listings, it holds while other runs come and go."""
    inodes = set()
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/proc/{p}/ns/net").st_ino)
    names = netns_names()
    runs = set()
    for name in names:
        with contextlib.suppress(OSError):
            if os.stat(f"/run/netns/{name}").st_ino in inodes:
                runs.add(name.split("-")[0])
    return {name for name in names if name.split("-")[0] in runs}


@dataclass
class Terminated:
    returncode: int
    output: str  # stdout and stderr
    processes: set[int]  # the command's descendants just before the SIGTERM
    ready: Any  # what `ready` returned just before the SIGTERM


def sigterm_when(argv: list[str], ready: Callable[[int], Any], *, settle: float = 3.0,
                 timeout: float = 60.0, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> Terminated:
    """Start `argv`, wait until ready(pid) is truthy, let it run `settle`
    seconds more, send it SIGTERM and wait for it to exit. If that fails (it
    never gets ready, or does not exit), the command and the processes it had
    started are killed by their PIDs before the error goes on."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ours: set[int] = set()
    try:
        deadline = time.monotonic() + timeout
        while not ready(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{argv[2:4]} never got ready: {proc.communicate()[0]}")
            time.sleep(0.2)
        time.sleep(settle)
        state = ready(proc.pid)
        ours = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        for pid in alive(ours | descendants(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Terminated(proc.returncode, out, ours, state)
