"""Conntrack sysctls (net.netfilter.*) with the kernel's defaults.

Defaults are Linux 6.18's: nf_conntrack_proto_tcp.c tcp_timeouts[] and
tcp_init_net(); nf_conntrack_proto_udp.c udp_timeouts[]; nf_conntrack_proto_icmp.c
and _icmpv6.c; nf_conntrack_proto_generic.c; nf_conntrack_proto_gre.c;
nf_conntrack_core.c (max, checksum) and Documentation/networking/nf_conntrack-sysctl.rst.
Every value is settable by its sysctl name; unknown names and bad values are
rejected with SysctlError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace


class SysctlError(ValueError):
    """An unknown sysctl name or a value the kernel would refuse."""


@dataclass(frozen=True, slots=True)
class Sysctl:
    nf_conntrack_tcp_timeout_syn_sent: int = 120
    nf_conntrack_tcp_timeout_syn_recv: int = 60
    nf_conntrack_tcp_timeout_established: int = 432000
    nf_conntrack_tcp_timeout_fin_wait: int = 120
    nf_conntrack_tcp_timeout_close_wait: int = 60
    nf_conntrack_tcp_timeout_last_ack: int = 30
    nf_conntrack_tcp_timeout_time_wait: int = 120
    nf_conntrack_tcp_timeout_close: int = 10
    nf_conntrack_tcp_timeout_max_retrans: int = 300
    nf_conntrack_tcp_timeout_unacknowledged: int = 300
    nf_conntrack_tcp_loose: int = 1
    nf_conntrack_tcp_be_liberal: int = 0
    nf_conntrack_tcp_ignore_invalid_rst: int = 0
    nf_conntrack_tcp_max_retrans: int = 3
    nf_conntrack_udp_timeout: int = 30
    nf_conntrack_udp_timeout_stream: int = 120
    nf_conntrack_icmp_timeout: int = 30
    nf_conntrack_icmpv6_timeout: int = 30
    nf_conntrack_generic_timeout: int = 600
    nf_conntrack_gre_timeout: int = 30
    nf_conntrack_gre_timeout_stream: int = 180
    nf_conntrack_sctp_timeout_closed: int = 10
    nf_conntrack_sctp_timeout_cookie_wait: int = 3
    nf_conntrack_sctp_timeout_cookie_echoed: int = 3
    nf_conntrack_sctp_timeout_established: int = 210
    nf_conntrack_max: int = 262144
    nf_conntrack_expect_max: int = 1024
    nf_conntrack_checksum: int = 1
    nf_conntrack_acct: int = 0
    nf_conntrack_timestamp: int = 0
    nf_conntrack_events: int = 2
    nf_flowtable_tcp_timeout: int = 30
    nf_flowtable_udp_timeout: int = 30

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_values(self, values: Mapping[str, object]) -> Sysctl:
        """A copy with `values` applied. Names may be bare or `net.netfilter.`-prefixed."""
        known = set(self.names())
        changes: dict[str, int] = {}
        for raw_name, raw_value in values.items():
            name = str(raw_name).removeprefix("net.netfilter.")
            if name not in known:
                raise SysctlError(f"unknown sysctl net.netfilter.{name}")
            try:
                value = int(str(raw_value).strip())
            except ValueError:
                raise SysctlError(
                    f"net.netfilter.{name}: {raw_value!r} is not an integer") from None
            if value < 0 or value > 0xFFFFFFFF:
                raise SysctlError(f"net.netfilter.{name}: {value} is out of range")
            changes[name] = value
        return replace(self, **changes)


DEFAULT = Sysctl()
