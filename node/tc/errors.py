"""The three ways a tc command fails, as iproute2 and the kernel report them.

- `CliExit`: iproute2 calls exit() (usage(), invarg(), duparg(), an incomplete
  command line). The process ends, so a -batch run stops here even with -force.
- `CmdFailed`: a command returns non-zero after printing its own message
  (``fprintf(stderr, ...); return -1``). -batch prints "Command failed" and
  continues only with -force.
- `KernelError`: the kernel refused the request (an errno plus an optional
  extack message); iproute2 prints "Error: <extack>." or "RTNETLINK answers:
  <strerror>" and the command fails with its own exit code.
"""

from __future__ import annotations

import errno as _errno

# strerror() texts of glibc for the errnos the model returns
STRERROR = {
    _errno.EPERM: "Operation not permitted",
    _errno.ENOENT: "No such file or directory",
    _errno.ENOMEM: "Cannot allocate memory",
    _errno.EBUSY: "Device or resource busy",
    _errno.EEXIST: "File exists",
    _errno.ENODEV: "No such device",
    _errno.EINVAL: "Invalid argument",
    _errno.ENOSPC: "No space left on device",
    _errno.ERANGE: "Numerical result out of range",
    _errno.EOPNOTSUPP: "Operation not supported",
    _errno.E2BIG: "Argument list too long",
    _errno.EAGAIN: "Resource temporarily unavailable",
}


class TcError(Exception):
    """Root of node.tc's errors."""


class CliExit(TcError):
    """iproute2 exit(code): the message is already written to stderr."""

    def __init__(self, code: int = 255) -> None:
        super().__init__(code)
        self.code = code & 0xFF
        self.stdout = ""  # what the command printed before exiting (set by the model)
        self.stderr = ""


class CmdFailed(TcError):
    """A command's non-zero return (-1 is exit code 255)."""

    def __init__(self, code: int = -1) -> None:
        super().__init__(code)
        self.code = code & 0xFF


class KernelError(TcError):
    """A netlink request the kernel refused: -errno and the extack message."""

    def __init__(self, err: int, extack: str | None = None) -> None:
        super().__init__(err, extack)
        self.errno = err
        self.extack = extack

    def render(self) -> str:
        """libnetlink's report of the error (nl_dump_ext_ack / rtnl_talk_error)."""
        if self.extack:
            msg = self.extack
            return f"Error: {msg}{'' if msg.endswith('.') else '.'}\n"
        return f"RTNETLINK answers: {STRERROR.get(self.errno, f'errno {self.errno}')}\n"


def kerr(err: int, extack: str | None = None) -> KernelError:
    return KernelError(err, extack)
