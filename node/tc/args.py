"""iproute2's command-line toolkit, transcribed: lib/utils.c (matches, get_u32,
get_addr, invarg, duparg, makeargs, getcmdline) and the NEXT_ARG macros.

`Args` is argc/argv: a cursor over the words of one command. Parsers written
against it read like iproute2's, which keeps prefix matching ("c" is "continue"),
the order of the checks, and the exact messages.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from node.tc.errors import CliExit


def matches(prefix: str, word: str) -> bool:
    """utils.c matches() == 0: `prefix` is a non-empty prefix of `word`."""
    return bool(prefix) and word.startswith(prefix)


class Args:
    """argv with a cursor; `err` receives stderr text."""

    __slots__ = ("argv", "dev_exists", "err", "pos")

    def __init__(self, argv: list[str], err: Callable[[str], object],
                 dev_exists: Callable[[str], bool] | None = None) -> None:
        self.argv = argv
        self.pos = 0
        self.err = err
        self.dev_exists = dev_exists  # ll_name_to_index() != 0, for parsers that resolve devices

    @property
    def argc(self) -> int:
        return len(self.argv) - self.pos

    @property
    def cur(self) -> str:
        """*argv ("" past the end, where C would read NULL)."""
        return self.argv[self.pos] if self.pos < len(self.argv) else ""

    def __bool__(self) -> bool:
        return self.pos < len(self.argv)

    def is_(self, word: str) -> bool:
        return self.pos < len(self.argv) and self.argv[self.pos] == word

    def m(self, word: str) -> bool:
        """matches(*argv, word) == 0."""
        return self.pos < len(self.argv) and matches(self.argv[self.pos], word)

    def next_arg(self) -> str:
        """NEXT_ARG(): step to the next word; there must be one."""
        self.pos += 1
        if self.pos >= len(self.argv):
            self.err('Command line is not complete. Try option "help"\n')
            raise CliExit(255)
        return self.argv[self.pos]

    def fwd(self) -> None:
        """NEXT_ARG_FWD() / argc--, argv++."""
        self.pos += 1

    # ------------------------------------------------------------ exits
    def invarg(self, msg: str, arg: str) -> CliExit:
        self.err(f'Error: argument "{arg}" is wrong: {msg}\n')
        return CliExit(255)

    def duparg(self, key: str, arg: str) -> CliExit:
        self.err(f'Error: duplicate "{key}": "{arg}" is the second value.\n')
        return CliExit(255)

    def missarg(self, key: str) -> CliExit:
        self.err(f'Error: argument "{key}" is required\n')
        return CliExit(255)


# ------------------------------------------------------------------ numbers
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def strtoul(text: str, base: int) -> tuple[int, int] | None:
    """C strtoul: (value, characters used), the value wrapped to 64 bits for a
    leading '-'; None when no digits were read."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\r\f\v":
        i += 1
    neg = False
    if i < n and text[i] in "+-":
        neg = text[i] == "-"
        i += 1
    if base in (0, 16) and text[i:i + 2].lower() == "0x" and i + 2 < n \
            and text[i + 2].lower() in _DIGITS[:16]:
        i += 2
        base = 16
    elif base == 0:
        base = 8 if text[i:i + 1] == "0" else 10
    start, value = i, 0
    while i < n:
        d = _DIGITS.find(text[i].lower())
        if d < 0 or d >= base:
            break
        value = value * base + d
        i += 1
    if i == start:
        return None
    if value > 0xFFFFFFFFFFFFFFFF:
        value = 0xFFFFFFFFFFFFFFFF
    elif neg:
        value = -value & 0xFFFFFFFFFFFFFFFF
    return value, i


def get_unsigned(text: str, base: int, limit: int) -> int | None:
    """get_u32/get_u16/get_u8: the whole word is a number no larger than `limit`."""
    if not text:
        return None
    got = strtoul(text, base)
    if got is None or got[1] != len(text) or got[0] > limit:
        return None
    return got[0]


def get_u32(text: str, base: int = 0) -> int | None:
    return get_unsigned(text, base, 0xFFFFFFFF)


def get_u16(text: str, base: int = 0) -> int | None:
    return get_unsigned(text, base, 0xFFFF)


def get_u8(text: str, base: int = 0) -> int | None:
    return get_unsigned(text, base, 0xFF)


def hex2mem(text: str, nbytes: int) -> bytes | None:
    """utils.c hex2mem over the first 2*nbytes characters."""
    out = bytearray()
    for i in range(nbytes):
        pair = text[2 * i:2 * i + 2]
        if len(pair) < 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
            return None
        out.append(int(pair, 16))
    return bytes(out)


# ------------------------------------------------------------------ addresses
@dataclass(frozen=True, slots=True)
class Prefix:
    """inet_prefix: family 4 or 6, packed address, prefix length."""

    family: int
    addr: bytes
    bitlen: int


def _ipv4(text: str) -> bytes | None:
    """get_addr_ipv4: 1 to 4 dotted decimal parts, missing parts are zero."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    out = bytearray()
    for p in parts:
        if not p.isdigit() or int(p) > 255:
            return None
        out.append(int(p))
    return bytes(out) + bytes(4 - len(out))


def get_addr(text: str, family: int = 0) -> Prefix | None:
    """get_addr_1: an address of `family` (0 = any), or None."""
    if ":" in text:
        if family == 4:
            return None
        try:
            return Prefix(6, ipaddress.IPv6Address(text).packed, 128)
        except ValueError:
            return None
    if family == 6:
        return None
    packed = _ipv4(text)
    return None if packed is None else Prefix(4, packed, 32)


def get_prefix(text: str, family: int = 0) -> Prefix | None:
    """get_prefix_1: ADDR[/LEN]; LEN as a number or a dotted netmask (IPv4)."""
    addr, slash, plen = text.partition("/")
    got = get_addr(addr, family)
    if got is None:
        return None
    if not slash:
        return got
    width = 32 if got.family == 4 else 128
    bits = get_unsigned(plen, 10, width)
    if bits is None:
        if got.family != 4:
            return None
        mask = _ipv4(plen)
        if mask is None:
            return None
        value = int.from_bytes(mask, "big")
        bits = bin(value).count("1")
        if value != ((1 << 32) - 1) ^ ((1 << (32 - bits)) - 1):
            return None
    return Prefix(got.family, got.addr, bits)


def addr_str(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def mac_parse(text: str) -> bytes | None:
    """ll_addr_a2n for 6-byte Ethernet addresses."""
    parts = text.split(":")
    if len(parts) != 6 or any(not 1 <= len(p) <= 2 for p in parts):
        return None
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        return None


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# ------------------------------------------------------------------ batch lines
def makeargs(line: str) -> list[str] | None:
    """utils.c makeargs: whitespace-separated words, '...' and "..." quoted;
    None for an unterminated quote."""
    out: list[str] = []
    i, n = 0, len(line)
    ws = " \t\r\n"
    while i < n:
        while i < n and line[i] in ws:
            i += 1
        if i >= n:
            break
        if line[i] in "'\"":
            end = line.find(line[i], i + 1)
            if end < 0:
                return None
            out.append(line[i + 1:end])
            i = end + 1
        else:
            j = i
            while j < n and line[j] not in ws:
                j += 1
            out.append(line[i:j])
            i = j + 1
    return out


def getcmdlines(text: str) -> Iterator[tuple[int, str]]:
    """utils.c getcmdline: (last line number, logical line); '#' starts a
    comment, a trailing backslash continues the line."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i].split("#", 1)[0]
        i += 1
        while "\\\n" in line:
            if i >= len(lines):
                break
            cont = lines[i].split("#", 1)[0]
            i += 1
            line = line[:line.index("\\\n")] + cont
        yield i, line


# ------------------------------------------------------------------ ethertypes
# lib/ll_proto.c (the names tc accepts for "protocol" and prints), id -> name
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
LL_PROTO_NAMES: tuple[tuple[int, str], ...] = (
    (0x0060, "loop"), (0x0200, "pup"), (0x0201, "pupat"), (0x0800, "ip"), (0x0805, "x25"),
    (0x0806, "arp"), (0x08FF, "bpq"), (0x0a00, "ieeepup"), (0x0a01, "ieeepupat"),
    (0x6000, "dec"), (0x6001, "dna_dl"), (0x6002, "dna_rc"), (0x6003, "dna_rt"),
    (0x6004, "lat"), (0x6005, "diag"), (0x6006, "cust"), (0x6007, "sca"), (0x8035, "rarp"),
    (0x809B, "atalk"), (0x80F3, "aarp"), (0x8137, "ipx"), (0x86DD, "ipv6"),
    (0x8863, "ppp_disc"), (0x8864, "ppp_ses"), (0x884c, "atmmpoa"), (0x8884, "atmfate"),
    (0x8100, "802.1Q"), (0x88A8, "802.1ad"), (0x8847, "mpls_uc"), (0x8848, "mpls_mc"),
    (0x88CC, "lldp"), (0x6558, "teb"), (0x0001, "802.3"), (0x0002, "ax25"), (0x0003, "all"),
    (0x0004, "802.2"), (0x0005, "snap"), (0x0006, "ddcmp"), (0x0007, "wan_ppp"),
    (0x0008, "ppp_mp"), (0x0009, "localtalk"), (0x000C, "can"), (0x0010, "ppptalk"),
    (0x0011, "tr_802.2"), (0x0015, "mobitex"), (0x0016, "control"), (0x0017, "irda"),
    (0x0018, "econet"), (0x0019, "tipc"), (0x88A2, "aoe"), (0x892F, "hsr"),
    (0x88E5, "macsec"), (0x8906, "fcoe"),
)
_LL_BY_NAME = {name.lower(): pid for pid, name in LL_PROTO_NAMES}
_LL_BY_ID = {pid: name for pid, name in reversed(LL_PROTO_NAMES)}


def ll_proto_a2n(text: str) -> int | None:
    """ll_proto_a2n: a name (any case) or a number."""
    pid = _LL_BY_NAME.get(text.lower())
    return pid if pid is not None else get_u16(text, 0)


def ll_proto_n2a(pid: int) -> str:
    return _LL_BY_ID.get(pid, f"[{pid}]")
