"""Connection tracking helpers (ALGs): explicit registry, name -> helper.

A helper is an object with:

    name, proto, port   its name, the L4 protocol it applies to and its
                        well-known port (informational: templates, not ports,
                        assign helpers here, as with `-j CT --helper` and
                        act_ct's `helper`)
    max_expected, timeout
                        the expectation policy (nf_conntrack_expect_policy)
    help(ct, entry, pkt, direction, ctinfo, now) -> NF verdict
                        called for the entry's packets before confirmation
                        (never for RELATED_REPLY); keeps its private state in
                        `entry.helper_data` and announces expectations with
                        `ct.expect.related()`.
    from_nlattr(entry)  prepare `entry.helper_data` for an entry injected from
                        user space (replication), as the kernel's
                        helper->from_nlattr does for ctnetlink.
"""

from __future__ import annotations

from typing import Any

from node.conntrack.helpers.ftp import FtpHelper
from node.conntrack.helpers.tftp import TftpHelper

HELPERS: dict[str, Any] = {
    "ftp": FtpHelper(),
    "tftp": TftpHelper(),
}
