"""The kernel oracle's case files, read into typed cases with the exact bytes.

The format is documented in tools/kernel_oracle/README.md ("Case files"). This
module re-implements the oracle's loader (runner.load_cases, _resolve_packet,
prepare_case) and packet builder (packets.py) default for default, so that every
`Send.data` is byte for byte what the oracle put on the wire: addresses per side
and family, client/server ports, ip_id = packet index + 1, TTL 64, window 65535,
the DSCP zone selector in the TOS byte, quoted packets of ICMP errors, forced and
corrupted checksums. A results file written by `oracle.py run` is read as cases
too (its extra keys "ip_hex", "kernel", "file", "duration_s", "error" are
accepted there, and only there); unknown keys anywhere else are errors, as in
the oracle.

The settings' iptables rules are parsed into `IptRule`s: a small typed model of
the matches and targets the cases use (see IptRule.parse). `Case.raw_table` and
`Case.mangle_table` are R's chains as the oracle installs them.

Pure apart from load_cases(), which reads the files. Every problem is a
CaseError: "case NAME (FILE): packet N: what is wrong".
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import shlex
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from node.conntrack import Template
from node.packet import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Gre,
    Icmp,
    Packet,
    PacketError,
    Tcp,
    Udp,
    build,
    ip_checksum,
    l4_checksum,
    parse,
)

if TYPE_CHECKING:
    from node.conntrack import Conntrack, Entry


class CaseError(ValueError):
    """A malformed case file: says which case, file and packet, and what is wrong."""


# ------------------------------------------------------------------ the oracle's lab

# Host addresses per family and side, the networks R routes to each side, and the
# link networks whose other addresses are reserved (tools/kernel_oracle/topology.py).
HOSTS = {4: {"A": "198.18.1.2", "B": "198.19.1.2"},
         6: {"A": "2001:db8:1::2", "B": "2001:db8:2::2"}}
SIDE_NETS = {"A": (ipaddress.ip_network("198.18.0.0/16"), ipaddress.ip_network("2001:db8:1::/48")),
             "B": (ipaddress.ip_network("198.19.0.0/16"), ipaddress.ip_network("2001:db8:2::/48"))}
LINK_NETS = tuple(ipaddress.ip_network(n) for n in (
    "198.18.1.0/30", "198.19.1.0/30", "2001:db8:1::/126", "2001:db8:2::/126"))
SIDE_ALIASES = {"A": "A", "B": "B", "orig": "A", "reply": "B"}
MAX_SLEEP = 30.0

# Helpers named without a port get their well-known one (runner.HELPER_PORTS).
HELPER_PORTS = {"ftp": ("tcp", 21), "tftp": ("udp", 69), "irc": ("tcp", 6667),
                "sip": ("udp", 5060), "sane": ("tcp", 6566), "amanda": ("udp", 10080),
                "pptp": ("tcp", 1723), "snmp": ("udp", 161), "netbios-ns": ("udp", 137),
                "RAS": ("udp", 1719), "Q.931": ("tcp", 1720)}

# ------------------------------------------------------------------ case file keys

CASE_KEYS = frozenset({"name", "description", "settings", "defaults", "packets"})
RESULT_CASE_KEYS = frozenset({"file", "duration_s", "error"})
RESULT_PACKET_KEYS = frozenset({"ip_hex", "kernel"})
SETTINGS_KEYS = frozenset({"family", "sysctl", "zone", "helper", "helpers", "connmark",
                           "connlabel", "raw_rules", "mangle_rules"})
COMMON_KEYS = frozenset({"from", "dir", "family", "src", "dst", "proto", "zone", "note", "tos",
                         "ttl", "ip_id", "df", "flowlabel", "ip_bad_checksum", "payload",
                         "payload_hex", "payload_len", "checksum", "bad_checksum"})
_ICMP_KEYS = frozenset({"type", "code", "id", "seq", "inner", "inner_len", "mtu", "pointer",
                        "gateway", "rest_hex"})
PROTO_KEYS = {"tcp": frozenset({"sport", "dport", "flags", "seq", "ack", "win", "urg", "options"}),
              "udp": frozenset({"sport", "dport"}),
              "icmp": _ICMP_KEYS, "icmpv6": _ICMP_KEYS,
              "gre": frozenset({"gre_version", "gre_proto", "key", "call_id"})}
DEFAULTS_KEYS = COMMON_KEYS | frozenset({"client_port", "server_port"}).union(*PROTO_KEYS.values())
PAYLOAD_KEYS = ("payload", "payload_hex", "payload_len")

PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "icmpv6": 58, "ipv6-icmp": 58}
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmpv6"}
TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
                 "C": 0x80}
ICMP_TYPE_NAMES = {
    4: {"echo-reply": 0, "dest-unreach": 3, "source-quench": 4, "redirect": 5,
        "echo-request": 8, "time-exceeded": 11, "param-problem": 12, "timestamp-request": 13,
        "timestamp-reply": 14},
    6: {"dest-unreach": 1, "packet-too-big": 2, "time-exceeded": 3, "param-problem": 4,
        "echo-request": 128, "echo-reply": 129}}
ICMP_QUERY = {4: frozenset({0, 8, 13, 14, 15, 16, 17, 18}), 6: frozenset({128, 129, 139, 140})}
ICMP_ERRORS = {4: frozenset({3, 4, 5, 11, 12}), 6: frozenset({1, 2, 3, 4})}


# ------------------------------------------------------------------ iptables rules

@dataclass(frozen=True, slots=True)
class Prefix:
    """An address prefix of an `-s`/`-d` match."""

    family: int
    value: int
    length: int

    def contains(self, addr: bytes) -> bool:
        bits = 32 if self.family == 4 else 128
        if len(addr) * 8 != bits:
            return False
        shift = bits - self.length
        return int.from_bytes(addr, "big") >> shift == self.value >> shift


@dataclass(frozen=True, slots=True)
class Ct:
    """`-j CT [--zone N] [--helper NAME]`: a conntrack template."""

    zone: int | None = None
    helper: str | None = None


@dataclass(frozen=True, slots=True)
class Notrack:
    """`-j NOTRACK` or `-j CT --notrack`."""


@dataclass(frozen=True, slots=True)
class Mark:
    """`-j MARK`: packet mark = (mark & ~mask) ^ value (all option forms reduce to this)."""

    value: int
    mask: int


@dataclass(frozen=True, slots=True)
class Connmark:
    """`-j CONNMARK --set-(x)mark`: ct mark = (mark & ~mask) ^ value."""

    value: int
    mask: int


@dataclass(frozen=True, slots=True)
class Accept:
    """`-j ACCEPT`: ends the table for this packet."""


@dataclass(frozen=True, slots=True)
class Return:
    """`-j RETURN`: in a base chain, the policy (ACCEPT): ends the table."""


Target = Ct | Notrack | Mark | Connmark | Accept | Return

_RULE_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "gre": 47,
                "sctp": 132, "udplite": 136, "dccp": 33, "esp": 50, "ah": 51}
_MATCH_MODULES = frozenset({"tcp", "udp", "icmp", "icmp6", "icmpv6", "dscp", "conntrack",
                            "state", "connlabel", "comment"})
_CTSTATES = frozenset({"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"})
# iptables -p icmp --help / ip6tables -p icmpv6 --help: name -> (type, code or None)
_ICMP_RULE_TYPES: dict[int, dict[str, tuple[int, int | None]]] = {
    4: {"echo-reply": (0, None), "pong": (0, None), "destination-unreachable": (3, None),
        "network-unreachable": (3, 0), "host-unreachable": (3, 1),
        "protocol-unreachable": (3, 2), "port-unreachable": (3, 3),
        "fragmentation-needed": (3, 4), "source-route-failed": (3, 5),
        "network-unknown": (3, 6), "host-unknown": (3, 7), "network-prohibited": (3, 9),
        "host-prohibited": (3, 10), "communication-prohibited": (3, 13),
        "source-quench": (4, None), "redirect": (5, None), "echo-request": (8, None),
        "ping": (8, None), "router-advertisement": (9, None), "router-solicitation": (10, None),
        "time-exceeded": (11, None), "ttl-exceeded": (11, None),
        "ttl-zero-during-transit": (11, 0), "ttl-zero-during-reassembly": (11, 1),
        "parameter-problem": (12, None), "ip-header-bad": (12, 0),
        "required-option-missing": (12, 1), "timestamp-request": (13, None),
        "timestamp-reply": (14, None), "address-mask-request": (17, None),
        "address-mask-reply": (18, None)},
    6: {"destination-unreachable": (1, None), "no-route": (1, 0),
        "communication-prohibited": (1, 1), "beyond-scope": (1, 2),
        "address-unreachable": (1, 3), "port-unreachable": (1, 4),
        "failed-policy": (1, 5), "reject-route": (1, 6), "packet-too-big": (2, None),
        "time-exceeded": (3, None), "ttl-exceeded": (3, None),
        "ttl-zero-during-transit": (3, 0), "ttl-zero-during-reassembly": (3, 1),
        "parameter-problem": (4, None), "bad-header": (4, 0), "unknown-header-type": (4, 1),
        "unknown-option": (4, 2), "echo-request": (128, None), "ping": (128, None),
        "echo-reply": (129, None), "pong": (129, None), "router-solicitation": (133, None),
        "router-advertisement": (134, None), "neighbour-solicitation": (135, None),
        "neighbor-solicitation": (135, None), "neighbour-advertisement": (136, None),
        "neighbor-advertisement": (136, None), "redirect": (137, None)}}


@dataclass(frozen=True, slots=True)
class IptRule:
    """One iptables rule of R's raw or mangle PREROUTING chain.

    Matches: `-p`, `-s`, `-d`, `--sport`, `--dport` (N or N:M), `--icmp-type`,
    `--icmpv6-type` (name, N or N/C), `-m dscp --dscp`, `-m conntrack --ctstate
    --ctdir`, `-m connlabel --label N --set`; `-m tcp/udp/icmp/icmp6/comment` and `-i`/`-o`
    are accepted and ignored. Targets: see `Target`. `only_zone` is not iptables:
    it restricts a rule to packets of one zone, standing for the oracle's DSCP
    zone selector in rules built with ct_helper()/ct_zone().
    """

    text: str
    family: int | None = None
    target: Target | None = None
    proto: int | None = None
    src: Prefix | None = None
    dst: Prefix | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    dscp: int | None = None
    ctstate: frozenset[str] | None = None
    ctdir: str | None = None  # "ORIGINAL" or "REPLY"
    set_label: int | None = None
    only_zone: int | None = None

    @classmethod
    def parse(cls, text: str, family: int | None = None) -> IptRule:
        """Parse a rule in iptables syntax without `-A CHAIN`. Raises CaseError
        naming the unsupported token."""
        return _RuleParser(text, family).rule()

    @classmethod
    def ct_helper(cls, name: str, proto: str | int, port: int, zone: int = 0,
                  only_zone: int | None = None) -> IptRule:
        """The oracle's helper rule: `-p P --dport N -j CT --helper NAME [--zone Z]`."""
        rule = cls.parse(f"-p {proto} --dport {port} -j CT --helper {name}"
                         + (f" --zone {zone}" if zone else ""))
        return replace(rule, only_zone=only_zone)

    @classmethod
    def ct_zone(cls, zone: int, only_zone: int | None = None) -> IptRule:
        """The oracle's zone rule: `-j CT --zone Z`."""
        return replace(cls.parse(f"-j CT --zone {zone}"), only_zone=only_zone)

    def matches(self, pkt: Packet, zone: int = 0, ctstate: str | None = None,
                ctdir: str | None = None) -> bool:
        """Whether the rule's matches accept `pkt` of conntrack zone `zone`, with
        conntrack state `ctstate` ("NEW", ..., "UNTRACKED"; None = no entry, which
        -m conntrack sees as INVALID) and direction `ctdir` ("ORIGINAL"/"REPLY";
        None = no entry: --ctdir is then not checked, as in xt_conntrack)."""
        if self.family is not None and pkt.family != self.family:
            return False
        if self.only_zone is not None and zone != self.only_zone:
            return False
        if self.proto is not None and pkt.proto != self.proto:
            return False
        if self.src is not None and not self.src.contains(pkt.src):
            return False
        if self.dst is not None and not self.dst.contains(pkt.dst):
            return False
        if self.sport is not None or self.dport is not None:
            l4 = pkt.l4
            if not isinstance(l4, Tcp | Udp):  # also a later fragment: no ports
                return False
            if self.sport is not None and not self.sport[0] <= l4.sport <= self.sport[1]:
                return False
            if self.dport is not None and not self.dport[0] <= l4.dport <= self.dport[1]:
                return False
        if self.icmp_type is not None:
            l4 = pkt.l4
            if not isinstance(l4, Icmp) or l4.type != self.icmp_type:
                return False
            if self.icmp_code is not None and l4.code != self.icmp_code:
                return False
        if self.dscp is not None and pkt.tos >> 2 != self.dscp:
            return False
        if self.ctstate is not None and (ctstate or "INVALID") not in self.ctstate:
            return False
        return self.ctdir is None or ctdir is None or ctdir == self.ctdir

    def is_ct_target(self) -> bool:
        """A CT or NOTRACK target: the first one a packet matches gives its template."""
        return isinstance(self.target, Ct | Notrack)

    @property
    def terminal(self) -> bool:
        """ACCEPT/RETURN: no later rule of the table sees a matching packet."""
        return isinstance(self.target, Accept | Return)

    def template(self) -> Template:
        """The conntrack template a CT/NOTRACK rule attaches."""
        t = self.target
        if isinstance(t, Notrack):
            return Template(notrack=True)
        if isinstance(t, Ct):
            return Template(zone=t.zone or 0, helper=t.helper)
        raise CaseError(f"rule {self.text!r} has no CT target")

    def apply_to_entry(self, ct: Conntrack, entry: Entry) -> None:
        """What a matching mangle rule does to the packet's conntrack entry."""
        t = self.target
        if isinstance(t, Connmark):
            ct.set_mark(entry, ((entry.mark & ~t.mask) ^ t.value) & 0xFFFFFFFF, 0xFFFFFFFF)
        if self.set_label is not None:
            bit = 1 << self.set_label
            ct.set_labels(entry, bit, bit)


class _RuleParser:
    """Left-to-right like iptables: options take effect in order."""

    def __init__(self, text: str, family: int | None) -> None:
        self.text, self.family = text, family
        try:
            self.tokens = shlex.split(text)
        except ValueError as exc:
            raise self.error(f"cannot split it into words ({exc})") from None
        self.pos = 0
        self.fields: dict[str, Any] = {}
        self.modules: set[str] = set()

    def error(self, what: str) -> CaseError:
        return CaseError(f"rule {self.text!r}: {what}")

    def arg(self, opt: str) -> str:
        if self.pos >= len(self.tokens) or self.tokens[self.pos].startswith("-"):
            raise self.error(f"{opt} needs an argument")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def number(self, text: str, what: str, limit: int) -> int:
        try:
            if text.lower().startswith("0x"):
                value = int(text, 16)
            elif text.startswith("0") and len(text) > 1:
                value = int(text, 8)  # strtoul base 0, as iptables reads numbers
            else:
                value = int(text, 10)
        except ValueError:
            raise self.error(f"{what} {text!r} is not a number") from None
        if not 0 <= value <= limit:
            raise self.error(f"{what} {value} is out of range (0..{limit})")
        return value

    def set_family(self, family: int, why: str) -> None:
        if self.family is not None and self.family != family:
            raise self.error(f"{why} is IPv{family} but the rule is for IPv{self.family}")
        self.family = family

    def rule(self) -> IptRule:
        f = self.fields
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            self.pos += 1
            if tok == "!":
                raise self.error("negation ('!') is not supported")
            if tok in ("-p", "--protocol"):
                name = self.arg(tok).lower()
                if name == "all":
                    f["proto"] = None
                elif name in _RULE_PROTOS:
                    f["proto"] = _RULE_PROTOS[name]
                else:
                    f["proto"] = self.number(name, "protocol", 255)
            elif tok in ("-s", "--source", "--src", "-d", "--destination", "--dst"):
                key = "src" if tok in ("-s", "--source", "--src") else "dst"
                f[key] = self.prefix(self.arg(tok))
            elif tok in ("-i", "--in-interface", "-o", "--out-interface"):
                self.arg(tok)
            elif tok in ("-m", "--match"):
                module = self.arg(tok).lower()
                if module not in _MATCH_MODULES:
                    raise self.error(f"match module {module!r} is not supported")
                self.modules.add(module)
            elif tok in ("--sport", "--source-port", "--dport", "--destination-port"):
                if f.get("proto") not in (IPPROTO_TCP, IPPROTO_UDP):
                    raise self.error(f"{tok} needs -p tcp or -p udp before it")
                key = "sport" if tok in ("--sport", "--source-port") else "dport"
                f[key] = self.port_range(self.arg(tok))
            elif tok in ("--icmp-type", "--icmpv6-type"):
                fam = 4 if tok == "--icmp-type" else 6
                if f.get("proto") != (IPPROTO_ICMP if fam == 4 else IPPROTO_ICMPV6):
                    raise self.error(f"{tok} needs -p {'icmp' if fam == 4 else 'icmpv6'}")
                self.set_family(fam, tok)
                f["icmp_type"], f["icmp_code"] = self.icmp_type(self.arg(tok), fam)
            elif tok == "--dscp":
                self.need_module("dscp", tok)
                f["dscp"] = self.number(self.arg(tok), "DSCP", 63)
            elif tok in ("--ctstate", "--state"):
                self.need_module("conntrack" if tok == "--ctstate" else "state", tok)
                states = frozenset(s.upper() for s in self.arg(tok).split(","))
                if not states <= _CTSTATES:
                    raise self.error(f"conntrack state(s) {sorted(states - _CTSTATES)} "
                                     "are not supported")
                f["ctstate"] = states
            elif tok == "--ctdir":
                self.need_module("conntrack", tok)
                direction = self.arg(tok).upper()
                if direction not in ("ORIGINAL", "REPLY"):
                    raise self.error(f"--ctdir must be ORIGINAL or REPLY, not {direction!r}")
                f["ctdir"] = direction
            elif tok == "--label":
                self.need_module("connlabel", tok)
                label = self.number(self.arg(tok), "connlabel", 127)
                if self.pos < len(self.tokens) and self.tokens[self.pos] == "--set":
                    self.pos += 1
                    f["set_label"] = label
                else:
                    raise self.error("a connlabel match is supported only with --set")
            elif tok == "--comment":
                self.need_module("comment", tok)
                self.arg(tok)
            elif tok in ("-j", "--jump"):
                f["target"] = self.target(self.arg(tok))
            else:
                raise self.error(f"unsupported option {tok!r}")
        return IptRule(text=self.text, family=self.family, **f)

    def need_module(self, module: str, opt: str) -> None:
        if module not in self.modules:
            raise self.error(f"{opt} needs -m {module} before it")

    def prefix(self, text: str) -> Prefix:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.error(f"bad address {text!r}") from None
        self.set_family(net.version, f"address {text}")
        return Prefix(net.version, int(net.network_address), net.prefixlen)

    def port_range(self, text: str) -> tuple[int, int]:
        lo, sep, hi = text.partition(":")
        first = self.number(lo, "port", 0xFFFF) if lo else 0
        last = (self.number(hi, "port", 0xFFFF) if hi else 0xFFFF) if sep else first
        if first > last:
            raise self.error(f"port range {text!r} is empty")
        return first, last

    def icmp_type(self, text: str, family: int) -> tuple[int | None, int | None]:
        names = _ICMP_RULE_TYPES[family]
        if text == "any":
            return None, None
        if text in names:
            return names[text]
        typ, sep, code = text.partition("/")
        return (self.number(typ, "ICMP type", 255),
                self.number(code, "ICMP code", 255) if sep else None)

    def target(self, name: str) -> Target:
        opts = self.tokens[self.pos:]
        self.pos = len(self.tokens)  # target options run to the end of the rule
        simple: dict[str, Target] = {"ACCEPT": Accept(), "RETURN": Return(),
                                     "NOTRACK": Notrack()}
        if name in simple:
            if opts:
                raise self.error(f"unsupported option {opts[0]!r} for -j {name}")
            return simple[name]
        if name == "CT":
            return self.ct_target(opts)
        if name in ("MARK", "CONNMARK"):
            value, mask = self.mark_option(name, opts)
            return Mark(value, mask) if name == "MARK" else Connmark(value, mask)
        raise self.error(f"target {name!r} is not supported")

    def ct_target(self, opts: list[str]) -> Ct | Notrack:
        zone: int | None = None
        helper: str | None = None
        if opts == ["--notrack"]:
            return Notrack()
        i = 0
        while i < len(opts):
            if opts[i] == "--zone" and i + 1 < len(opts):
                zone = self.number(opts[i + 1], "zone", 0xFFFF)
            elif opts[i] == "--helper" and i + 1 < len(opts):
                helper = opts[i + 1]
            else:
                raise self.error(f"unsupported option {opts[i]!r} for -j CT")
            i += 2
        return Ct(zone, helper)

    def mark_option(self, target: str, opts: list[str]) -> tuple[int, int]:
        """(value, mask) with mark = (mark & ~mask) ^ value, as libxt_MARK/CONNMARK
        translate their options."""
        if len(opts) != 2:
            raise self.error(f"-j {target} takes one of --set-mark/--set-xmark/--and-mark/"
                             f"--or-mark/--xor-mark with a value, got {opts!r}")
        opt, text = opts
        if opt not in ("--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark"):
            raise self.error(f"unsupported option {opt!r} for -j {target}")
        full = 0xFFFFFFFF
        value_text, sep, mask_text = text.partition("/")
        value = self.number(value_text, "mark", full)
        mask = self.number(mask_text, "mask", full) if sep else full
        if opt == "--set-xmark":
            return value, mask
        if opt == "--set-mark":
            return value, value | mask
        if sep:
            raise self.error(f"{opt} takes no mask")
        if opt == "--and-mark":
            return 0, ~value & full
        if opt == "--or-mark":
            return value, value
        return value, 0  # --xor-mark


# ------------------------------------------------------------------ cases

@dataclass(frozen=True, slots=True)
class Helper:
    name: str
    proto: str  # "tcp" or "udp"
    port: int


@dataclass(frozen=True, slots=True)
class CaseSettings:
    family: int = 4  # of packets without their own
    sysctl: Mapping[str, str] = field(default_factory=dict)  # net.netfilter.X as "X"
    zone: int = 0  # of packets without their own
    helpers: tuple[Helper, ...] = ()
    connmark: int | None = None  # set on NEW entries (mangle, after classification)
    connlabel: int | None = None  # label bit set on NEW entries
    raw_rules: tuple[IptRule, ...] = ()  # as written; first in raw PREROUTING
    mangle_rules: tuple[IptRule, ...] = ()  # as written; after classification


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float  # capped at 30, as the oracle does
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Send:
    """A packet injected on `side`'s interface. `raw` is its spec as written (in a
    results file with the oracle's "ip_hex" and "kernel"); `data` the exact bytes
    the oracle sends, `packet` their parse."""

    side: str  # "A" or "B"
    zone: int
    packet: Packet
    raw: Mapping[str, Any]
    data: bytes
    # ICMP errors: the quoted packet as specified, before `inner_len` cuts it. The
    # oracle reports the conntrack entry of this packet's tuple.
    quoted: Packet | None = None

    @property
    def kernel(self) -> Mapping[str, Any] | None:
        """The kernel's recorded answer (results files only)."""
        value = self.raw.get("kernel")
        return value if isinstance(value, Mapping) else None


Step = Sleep | Send


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    description: str
    settings: CaseSettings
    steps: tuple[Step, ...]
    file: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    zone_dscp: Mapping[int, int] = field(default_factory=dict)  # per-packet zone -> DSCP
    error: str | None = None  # results files: the oracle could not run the case

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(sorted({s.packet.family for s in self.steps if isinstance(s, Send)}))

    @property
    def raw_table(self) -> tuple[IptRule, ...]:
        """R's raw PREROUTING as the oracle installs it: the case's rules; then for
        each per-packet zone (matched by its DSCP selector) and last for the case's
        zone, the helper rules and the zone rule. The first CT/NOTRACK rule a packet
        matches gives its template; ACCEPT/RETURN end the chain. (Built on each
        access; keep the tuple.)"""
        s = self.settings
        rules = list(s.raw_rules)
        variants = [(f"-m dscp --dscp {dscp} ", f" --zone {zone}")
                    for zone, dscp in self.zone_dscp.items()]
        variants.append(("", f" --zone {s.zone}" if s.zone else ""))
        for match, zone_opt in variants:
            for h in s.helpers:
                rules.append(IptRule.parse(
                    f"-p {h.proto} --dport {h.port} {match}-j CT --helper {h.name}{zone_opt}"))
            if zone_opt:
                rules.append(IptRule.parse(f"{match}-j CT{zone_opt}"))
        return tuple(rules)

    @property
    def mangle_table(self) -> tuple[IptRule, ...]:
        """R's mangle PREROUTING after the classification jump: connmark, connlabel,
        then the case's rules (the verdict is read before any of them)."""
        s = self.settings
        rules = []
        if s.connmark is not None:
            rules.append(IptRule.parse(f"-m conntrack --ctstate NEW -j CONNMARK --set-xmark "
                                       f"{s.connmark:#x}/0xffffffff"))
        if s.connlabel is not None:
            rules.append(IptRule.parse(f"-m conntrack --ctstate NEW -m connlabel --label "
                                       f"{s.connlabel} --set"))
        return (*rules, *s.mangle_rules)


# ------------------------------------------------------------------ loading

def load_cases(paths: list[str]) -> list[Case]:
    """Read case files, directories of them (every *.json not starting with "_" or
    "results") and oracle results files. Names must be unique."""
    cases: list[Case] = []
    for path in paths:
        for fname in _case_files(path):
            cases.extend(load_file(fname))
    seen: dict[str, str] = {}
    for case in cases:
        if case.name in seen:
            raise CaseError(f"duplicate case name {case.name!r} (in {seen[case.name]} and "
                            f"{case.file})")
        seen[case.name] = case.file
    return cases


def _case_files(path: str) -> list[str]:
    if os.path.isdir(path):
        return [os.path.join(path, n) for n in sorted(os.listdir(path))
                if n.endswith(".json") and not n.startswith(("_", "results"))]
    return [path]


def load_file(fname: str) -> list[Case]:
    try:
        with open(fname, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise CaseError(f"{fname}: cannot read: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaseError(f"{fname}: not JSON: {exc}") from exc
    return cases_from_json(doc, fname)


def cases_from_json(doc: Any, fname: str = "<json>") -> list[Case]:
    """The cases of one parsed file: a case, a list of cases, {"cases": [...]}, or
    an oracle results file (a dict with "oracle")."""
    results = isinstance(doc, dict) and "oracle" in doc
    if results:
        items = doc.get("cases")
    elif isinstance(doc, dict) and "cases" in doc:
        if set(doc) != {"cases"}:
            raise CaseError(f"{fname}: unknown top-level key(s) {sorted(set(doc) - {'cases'})}")
        items = doc["cases"]
    elif isinstance(doc, dict):
        items = [doc]
    else:
        items = doc
    if not isinstance(items, list):
        raise CaseError(f"{fname}: expected a case, a list of cases or {{\"cases\": [...]}}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CaseError(f"{fname}: case #{i} is a {type(item).__name__}, not an object")
        out.append(prepare_case(item, fname, results=results))
    return out


def prepare_case(case: dict[str, Any], fname: str = "", results: bool = False) -> Case:
    """Validate one case and build all its packets (runner.prepare_case)."""
    name = case.get("name")
    if not name or not isinstance(name, str):
        raise CaseError(f"{fname}: case without a name")
    try:
        unknown = set(case) - CASE_KEYS - (RESULT_CASE_KEYS if results else set())
        if unknown:
            raise CaseError(f"unknown case field(s) {sorted(unknown)}")
        description = case.get("description", "")
        if not isinstance(description, str):
            raise CaseError("description must be text")
        if results and "error" in case:
            return Case(name, description, CaseSettings(), (), fname, error=str(case["error"]))
        raw_settings = _object(case.get("settings", {}), "settings")
        defaults = _object(case.get("defaults", {}), "defaults")
        unknown = set(defaults) - DEFAULTS_KEYS
        if unknown:
            raise CaseError(f"unknown defaults field(s) {sorted(unknown)}")
        settings = _settings(raw_settings)
        steps, selectors = _steps(case, settings, defaults, results)
        return Case(name, description, settings, steps, fname, defaults, selectors)
    except CaseError as exc:
        raise CaseError(f"case {name} ({fname}): {exc}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CaseError(f"{what} must be an object, not {type(value).__name__}")
    return value


def _int(value: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    """int() as the oracle applies it, with a CaseError naming the field."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise CaseError(f"{what} must be a number, not {value!r}") from None
    if number < lo or (hi is not None and number > hi):
        raise CaseError(f"{what} {number} is out of range ({lo}..{hi})")
    return number


# ------------------------------------------------------------------ settings

def _settings(s: dict[str, Any]) -> CaseSettings:
    try:
        unknown = set(s) - SETTINGS_KEYS
        if unknown:
            raise CaseError(f"unknown field(s) {sorted(unknown)}")
        family = _int(s.get("family", 4), "family")
        if family not in (4, 6):
            raise CaseError(f"family must be 4 or 6, got {family}")
        rules = {}
        for key in ("raw_rules", "mangle_rules"):
            rules[key] = tuple(_rule(item) for item in _list(s.get(key, []), key))
        for rule in rules["mangle_rules"]:
            if rule.is_ct_target():
                raise CaseError(f"rule {rule.text!r}: CT/NOTRACK work only in the raw table")
        return CaseSettings(
            family=family, sysctl=_sysctl(_object(s.get("sysctl", {}), "sysctl")),
            zone=_int(s.get("zone", 0), "zone", 0, 0xFFFF), helpers=_helpers(s),
            connmark=_int(s["connmark"], "connmark", 0, 0xFFFFFFFF) if "connmark" in s else None,
            connlabel=_int(s["connlabel"], "connlabel", 0, 127) if "connlabel" in s else None,
            raw_rules=rules["raw_rules"], mangle_rules=rules["mangle_rules"])
    except CaseError as exc:
        raise CaseError(f"settings: {exc}") from None


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise CaseError(f"{what} must be a list, not {type(value).__name__}")
    return value


def _sysctl(values: dict[str, Any]) -> dict[str, str]:
    """Names as the oracle resolves them: "X" and "net.netfilter.X" are both "X";
    other names must be net.* (only those are per network namespace)."""
    out: dict[str, str] = {}
    for raw_name, value in values.items():
        name = raw_name.replace("/", ".")
        if "." in name:
            if not name.startswith("net."):
                raise CaseError(f"sysctl {raw_name}: only net.* sysctls can be set")
            name = name.removeprefix("net.netfilter.")
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise CaseError(f"sysctl {raw_name}: value {value!r} is not a number or text")
        if name in out:
            raise CaseError(f"sysctl {name} is given twice")
        out[name] = str(value)
    return out


def _helpers(s: dict[str, Any]) -> tuple[Helper, ...]:
    items = ([s["helper"]] if "helper" in s else []) + _list(s.get("helpers", []), "helpers")
    out = []
    for item in items:
        if isinstance(item, str):
            if item not in HELPER_PORTS:
                raise CaseError(f'no default port for helper {item!r}; give '
                                '{"name": ..., "proto": ..., "port": ...}')
            proto, port = HELPER_PORTS[item]
            out.append(Helper(item, proto, port))
            continue
        item = _object(item, "a helper")
        if set(item) != {"name", "proto", "port"}:
            raise CaseError(f"a helper needs exactly name, proto and port, got {sorted(item)}")
        if item["proto"] not in ("tcp", "udp") or not isinstance(item["name"], str):
            raise CaseError(f"helper {item['name']!r}: proto must be tcp or udp")
        out.append(Helper(item["name"], item["proto"], _int(item["port"], "port", 1, 0xFFFF)))
    return tuple(out)


def _rule(item: Any) -> IptRule:
    if isinstance(item, str):
        return IptRule.parse(item)
    item = _object(item, "a rule")
    if set(item) != {"rule", "family"} or not isinstance(item["rule"], str):
        raise CaseError(f'a rule is a string or {{"rule": "...", "family": 4|6}}, got {item!r}')
    if item["family"] not in (4, 6):
        raise CaseError(f"rule family must be 4 or 6, got {item['family']!r}")
    return IptRule.parse(item["rule"], item["family"])


# ------------------------------------------------------------------ packets

def _steps(case: dict[str, Any], settings: CaseSettings, defaults: dict[str, Any],
           results: bool) -> tuple[tuple[Step, ...], dict[int, int]]:
    steps: list[Step] = []
    selectors: dict[int, int] = {}  # zone -> the DSCP that selects it
    for i, raw in enumerate(_list(case.get("packets", []), "packets")):
        try:
            if not isinstance(raw, dict):
                raise CaseError(f"a packet is an object, not {type(raw).__name__}")
            if "sleep" in raw:
                if set(raw) - {"sleep", "note"}:
                    raise CaseError("a sleep step takes only 'sleep' and 'note'")
                try:
                    seconds = float(raw["sleep"])
                except (TypeError, ValueError):
                    seconds = -1.0
                if not seconds >= 0:  # also NaN
                    raise CaseError(f"sleep must be seconds >= 0, not {raw['sleep']!r}")
                steps.append(Sleep(min(seconds, MAX_SLEEP), raw))
                continue
            spec = {k: v for k, v in raw.items() if not (results and k in RESULT_PACKET_KEYS)}
            spec = _resolve(spec, settings, defaults, i)
            zone = _int(spec.get("zone", settings.zone), "zone", 0, 0xFFFF)
            if zone != settings.zone:
                if "tos" in spec:
                    raise CaseError("a packet with its own zone cannot also set tos "
                                    "(the DSCP field selects the zone)")
                if zone not in selectors:
                    if len(selectors) >= 63:
                        raise CaseError("too many distinct zones in one case")
                    selectors[zone] = len(selectors) + 1
                spec["tos"] = selectors[zone] << 2
            for addr in (spec["src"], spec["dst"]):
                _check_host_address(addr)
            if _side_of(spec["dst"]) == spec["from"]:
                raise CaseError(f"dst {spec['dst']} is on the sending side {spec['from']}; "
                                "R would send it back where it came from")
            data = _wire(spec)
            quoted = parse(_wire(spec["inner"])) if "inner" in spec else None
            steps.append(Send(spec["from"], zone, parse(data), raw, data, quoted))
        except (CaseError, PacketError) as exc:
            raise CaseError(f"packet {i}: {exc}") from None
    if not steps:
        raise CaseError("no packets")
    return tuple(steps), selectors


def _proto_number(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 255:
            raise CaseError(f"protocol number out of range: {value}")
        return value
    if isinstance(value, str) and value.lower() in PROTO_NUMBERS:
        return PROTO_NUMBERS[value.lower()]
    raise CaseError(f"unknown protocol {value!r}")


def _resolve(raw: dict[str, Any], settings: CaseSettings, defaults: dict[str, Any], index: int,
             outer_side: str | None = None, outer_family: int | None = None) -> dict[str, Any]:
    """Fill in the defaults that depend on the lab (runner._resolve_packet). An ICMP
    error's inner packet travelled the other way, in the outer packet's family."""
    spec = dict(raw)
    if outer_family is not None:
        spec.setdefault("family", outer_family)
    who = spec.pop("from", None)
    direction = spec.pop("dir", None)
    if who is None:
        who = direction
    if who is None:
        if outer_side is None:
            raise CaseError('every packet needs "from": "A" or "B"')
        who = "A" if outer_side == "B" else "B"
    if not isinstance(who, str) or who not in SIDE_ALIASES:
        raise CaseError(f'"from" must be A or B (or dir orig/reply), got {who!r}')
    side = SIDE_ALIASES[who]

    spec.setdefault("proto", defaults.get("proto", "tcp"))
    proto = _proto_number(spec["proto"])
    allowed = COMMON_KEYS | PROTO_KEYS.get(PROTO_NAMES.get(proto, ""), frozenset())
    for key, value in defaults.items():
        if key not in ("client_port", "server_port") and key not in spec and key in allowed:
            spec[key] = copy.deepcopy(value)
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        client, server = defaults.get("client_port"), defaults.get("server_port")
        spec.setdefault("sport", client if side == "A" else server)
        spec.setdefault("dport", server if side == "A" else client)
        if spec["sport"] is None or spec["dport"] is None:
            raise CaseError("TCP/UDP packet without sport/dport (and no client_port/"
                            "server_port in defaults)")
    family = _int(spec.get("family", settings.family), "family")
    if family not in (4, 6):
        raise CaseError(f"family must be 4 or 6, got {family}")
    spec["family"] = family
    other = "B" if side == "A" else "A"
    spec["src"] = _address(spec.get("src", HOSTS[family][side]))
    spec["dst"] = _address(spec.get("dst", HOSTS[family][other]))
    if outer_side is None:
        spec.setdefault("ip_id", index + 1)
    if "inner" in spec:
        inner = _object(spec["inner"], "inner")
        spec["inner"] = _resolve(inner, settings, defaults, index, side, family)
    spec["from"] = side
    return spec


def _address(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise CaseError(f"bad address {value!r}") from None


def _side_of(addr: str) -> str | None:
    ip = ipaddress.ip_address(addr)
    for side, nets in SIDE_NETS.items():
        if any(ip.version == n.version and ip in n for n in nets):
            return side
    return None


def _check_host_address(addr: str) -> None:
    if _side_of(addr) is None:
        raise CaseError(f"address {addr} is outside 198.18.0.0/16, 198.19.0.0/16, "
                        "2001:db8:1::/48, 2001:db8:2::/48")
    ip = ipaddress.ip_address(addr)
    hosts = {HOSTS[4]["A"], HOSTS[4]["B"], HOSTS[6]["A"], HOSTS[6]["B"]}
    if any(ip.version == n.version and ip in n for n in LINK_NETS) and addr not in hosts:
        raise CaseError(f"address {addr} is on a link network (reserved)")


def _wire(spec: dict[str, Any]) -> bytes:
    """The bytes packets.build_packet() makes of a resolved spec."""
    family = spec["family"]
    src, dst = ipaddress.ip_address(spec["src"]), ipaddress.ip_address(spec["dst"])
    for addr in (src, dst):
        if addr.version != family:
            raise CaseError(f"address {addr} is not IPv{family}")
    proto = _proto_number(spec.get("proto", "tcp"))
    if family == 6 and proto == IPPROTO_ICMP:
        raise CaseError("use proto 'icmpv6' in IPv6 packets")
    unknown = set(spec) - COMMON_KEYS - PROTO_KEYS.get(PROTO_NAMES.get(proto, ""), frozenset())
    if unknown:
        raise CaseError(f"unknown packet field(s) {sorted(unknown)} for protocol "
                        f"{PROTO_NAMES.get(proto, str(proto))}")
    pkt = Packet(
        family=family, src=src.packed, dst=dst.packed, proto=proto,
        ttl=_int(spec.get("ttl", 64), "ttl", 0, 255), tos=_int(spec.get("tos", 0), "tos", 0, 255),
        ip_id=_int(spec.get("ip_id", 0), "ip_id", 0, 0xFFFF), df=bool(spec.get("df")),
        flowlabel=_int(spec.get("flowlabel", 0), "flowlabel") & 0xFFFFF)
    if proto == IPPROTO_TCP:
        pkt = replace(pkt, l4=_tcp(spec), payload=_payload(spec))
    elif proto == IPPROTO_UDP:
        pkt = replace(pkt, l4=Udp(_int(spec["sport"], "sport", 0, 0xFFFF),
                                  _int(spec["dport"], "dport", 0, 0xFFFF)),
                      payload=_payload(spec))
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        pkt = _icmp(spec, pkt)
    elif proto == IPPROTO_GRE:
        pkt = replace(pkt, l4=_gre(spec), payload=_payload(spec))
    else:
        pkt = replace(pkt, payload=_payload(spec))
    if isinstance(pkt.l4, Tcp | Udp | Icmp):  # GRE and other protocols ignore both keys
        pkt = _l4_checksum_spec(spec, pkt)
    if family == 4 and spec.get("ip_bad_checksum"):
        pkt = replace(pkt, ip_csum=ip_checksum(pkt) ^ 0x5A5A)
    return build(pkt)


def _payload(spec: dict[str, Any]) -> bytes:
    given = [k for k in PAYLOAD_KEYS if k in spec]
    if len(given) > 1:
        raise CaseError(f"use only one of payload/payload_hex/payload_len, got {given}")
    if "payload" in spec:
        return str(spec["payload"]).encode("utf-8")
    if "payload_hex" in spec:
        return _hex(spec["payload_hex"], "payload_hex")
    if "payload_len" in spec:
        return b"x" * _int(spec["payload_len"], "payload_len", -(1 << 16), 0xFFFF)
    return b""


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value).replace(" ", ""))
    except ValueError:
        raise CaseError(f"{what} {value!r} is not hex") from None


def _tcp(spec: dict[str, Any]) -> Tcp:
    flags_spec = spec.get("flags", "")
    if isinstance(flags_spec, int):
        flags = flags_spec & 0xFF
    else:
        flags = 0
        for ch in str(flags_spec).upper():
            if ch not in TCP_FLAG_BITS:
                raise CaseError(f"unknown TCP flag {ch!r} in {flags_spec!r} (use FSRPAUEC)")
            flags |= TCP_FLAG_BITS[ch]
    return Tcp(sport=_int(spec["sport"], "sport", 0, 0xFFFF),
               dport=_int(spec["dport"], "dport", 0, 0xFFFF),
               seq=_int(spec.get("seq", 0), "seq", -(1 << 63)) & 0xFFFFFFFF,
               ack=_int(spec.get("ack", 0), "ack", -(1 << 63)) & 0xFFFFFFFF,
               flags=flags, window=_int(spec.get("win", 65535), "win", 0, 0xFFFF),
               urg=_int(spec.get("urg", 0), "urg", 0, 0xFFFF),
               raw_options=_tcp_options(spec.get("options", [])))


def _tcp_options(options: Any) -> bytes:
    """packets.tcp_options(): the list encoded in order, padded with EOL to 4 bytes."""
    out = b""
    for item in _list(options, "options"):
        args = [item] if isinstance(item, str) else item
        if not isinstance(args, list) or not args:
            raise CaseError(f"bad TCP option {item!r}")
        kind = str(args[0]).lower()
        try:
            if kind == "nop":
                out += b"\x01"
            elif kind == "eol":
                out += b"\x00"
            elif kind == "mss":
                out += struct.pack("!BBH", 2, 4, int(args[1]))
            elif kind == "wscale":
                out += struct.pack("!BBB", 3, 3, int(args[1]))
            elif kind == "sackok":
                out += b"\x04\x02"
            elif kind == "sack":
                blocks = args[1]
                out += struct.pack("!BB", 5, 2 + 8 * len(blocks))
                for left, right in blocks:
                    out += struct.pack("!II", int(left) & 0xFFFFFFFF, int(right) & 0xFFFFFFFF)
            elif kind == "ts":
                out += struct.pack("!BBII", 8, 10, int(args[1]), int(args[2]))
            elif kind == "raw":
                out += _hex(args[1], "raw TCP option")
            else:
                raise CaseError(f"unknown TCP option {item!r}")
        except (IndexError, TypeError, ValueError, struct.error) as exc:
            if isinstance(exc, CaseError):
                raise
            raise CaseError(f"bad TCP option {item!r} ({exc})") from None
    out += b"\0" * (-len(out) % 4)
    if len(out) > 40:
        raise CaseError(f"TCP options too long ({len(out)} bytes, max 40)")
    return out


def _icmp(spec: dict[str, Any], pkt: Packet) -> Packet:
    """packets.build_icmp(): ICMP for IPv4, ICMPv6 for IPv6 (by the family, even
    with the other protocol number)."""
    family = pkt.family
    value = spec.get("type", "echo-request")
    if isinstance(value, int) and not isinstance(value, bool):
        typ = value
    elif isinstance(value, str) and value in ICMP_TYPE_NAMES[family]:
        typ = ICMP_TYPE_NAMES[family][value]
    else:
        raise CaseError(f"unknown ICMP{'v6' if family == 6 else ''} type {value!r}")
    if not 0 <= typ <= 255:
        raise CaseError(f"ICMP type {typ} is out of range")
    code = _int(spec.get("code", 0), "code", 0, 255)
    if "rest_hex" in spec:
        rest = _hex(spec["rest_hex"], "rest_hex")
        if len(rest) != 4:
            raise CaseError("rest_hex must be exactly 4 bytes")
    elif typ in ICMP_QUERY[family]:
        rest = struct.pack("!HH", _int(spec.get("id", 0), "id", 0, 0xFFFF),
                           _int(spec.get("seq", 0), "seq", 0, 0xFFFF))
    elif "mtu" in spec:
        mtu = _int(spec["mtu"], "mtu", 0, 0xFFFF if family == 4 else 0xFFFFFFFF)
        rest = struct.pack("!HH", 0, mtu) if family == 4 else struct.pack("!I", mtu)
    elif "pointer" in spec:
        ptr = _int(spec["pointer"], "pointer", 0, 0xFF if family == 4 else 0xFFFFFFFF)
        rest = struct.pack("!BBH", ptr, 0, 0) if family == 4 else struct.pack("!I", ptr)
    elif "gateway" in spec:
        try:
            rest = ipaddress.IPv4Address(spec["gateway"]).packed
        except ValueError:
            raise CaseError(f"gateway {spec['gateway']!r} is not an IPv4 address") from None
    else:
        rest = b"\0\0\0\0"
    if "inner" in spec:
        if typ not in ICMP_ERRORS[family]:
            raise CaseError(f"ICMP type {typ} is not an error type; 'inner' not allowed")
        if spec["inner"]["family"] != family:
            raise CaseError("inner packet family differs from the outer one")
        try:
            quoted = _wire(spec["inner"])
        except CaseError as exc:
            raise CaseError(f"inner: {exc}") from None
        if "inner_len" in spec:
            quoted = quoted[:_int(spec["inner_len"], "inner_len", -(1 << 16))]
        if any(k in spec for k in PAYLOAD_KEYS):
            raise CaseError("an ICMP error takes 'inner', not a payload")
    else:
        quoted = _payload(spec)
    icmp_proto = IPPROTO_ICMP if family == 4 else IPPROTO_ICMPV6
    if typ in ICMP_QUERY[family]:
        ident, seq = struct.unpack("!HH", rest)
        l4 = Icmp(typ, code, ident, seq)
    else:
        l4 = Icmp(typ, code, rest=rest)
    msg = replace(pkt, proto=icmp_proto, l4=l4, payload=quoted)
    if pkt.proto == icmp_proto:
        return msg
    # icmpv6 in an IPv4 packet: an ICMP message under protocol number 58
    hl = 20 if family == 4 else 40
    return replace(pkt, payload=build(_l4_checksum_spec(spec, msg))[hl:])


def _l4_checksum_spec(spec: dict[str, Any], pkt: Packet) -> Packet:
    """"checksum" forces the L4 checksum, "bad_checksum" corrupts the correct one."""
    if "checksum" in spec:
        return replace(pkt, l4_csum=_int(spec["checksum"], "checksum", 0, 0xFFFF))
    if spec.get("bad_checksum"):
        return replace(pkt, l4_csum=l4_checksum(pkt) ^ 0x5A5A)
    return pkt


def _gre(spec: dict[str, Any]) -> Gre:
    version = _int(spec.get("gre_version", 0), "gre_version")
    if version == 0:
        key = _int(spec["key"], "key", 0, 0xFFFFFFFF) if "key" in spec else None
        return Gre(0, _int(spec.get("gre_proto", 0x0800), "gre_proto", 0, 0xFFFF), key=key)
    if version == 1:
        return Gre(1, _int(spec.get("gre_proto", 0x880B), "gre_proto", 0, 0xFFFF),
                   call_id=_int(spec.get("call_id", 0), "call_id", 0, 0xFFFF))
    raise CaseError(f"unsupported GRE version {version}")
