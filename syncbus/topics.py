"""Topic names, as functions, and the names they are built from.

Under `ctlab/<cluster>/`:

  ct/<node>                       the node's connection batches (its ct stream)
  touch/<node>                    its aging digests
  hb/<node>                       its heartbeat (retained; the MQTT will = offline)
  resync/<node>/req               requests addressed to the node
  resync/<node>/resp/<requester>  the node's answers to one requester
  ack/<node>                      its acks of the others' ct streams (defer only)

One topic per origin and kind, because MQTT orders messages per topic only.
Names are 1..64 characters of [A-Za-z0-9_-] and never a wildcard or a slash,
so a name cannot widen a subscription or an ACL pattern.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from syncbus.errors import TopicError

ROOT = "ctlab"
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

CT = "ct"
TOUCH = "touch"
HB = "hb"
RESYNC_REQ = "resync-req"
RESYNC_RESP = "resync-resp"
ACK = "ack"


def valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_name(name: str, what: str = "node") -> str:
    if not valid_name(name):
        raise TopicError(f"bad {what} name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def ct(cluster: str, node: str) -> str:
    return f"{ROOT}/{check_name(cluster, 'cluster')}/ct/{check_name(node)}"


def touch(cluster: str, node: str) -> str:
    return f"{ROOT}/{check_name(cluster, 'cluster')}/touch/{check_name(node)}"


def hb(cluster: str, node: str) -> str:
    return f"{ROOT}/{check_name(cluster, 'cluster')}/hb/{check_name(node)}"


def ack(cluster: str, node: str) -> str:
    return f"{ROOT}/{check_name(cluster, 'cluster')}/ack/{check_name(node)}"


def resync_req(cluster: str, node: str) -> str:
    return f"{ROOT}/{check_name(cluster, 'cluster')}/resync/{check_name(node)}/req"


def resync_resp(cluster: str, node: str, requester: str) -> str:
    return (f"{ROOT}/{check_name(cluster, 'cluster')}/resync/{check_name(node)}/resp/"
            f"{check_name(requester, 'requester')}")


def subscriptions(cluster: str, node: str) -> list[str]:
    """What a member subscribes to: everyone's ct, touch, hb and ack streams, its
    own resync requests and the answers addressed to it."""
    base = f"{ROOT}/{check_name(cluster, 'cluster')}"
    check_name(node)
    return [f"{base}/ct/+", f"{base}/touch/+", f"{base}/hb/+", f"{base}/ack/+",
            f"{base}/resync/{node}/req",
            f"{base}/resync/+/resp/{node}"]


class Parsed(NamedTuple):
    kind: str  # CT, TOUCH, HB, ACK, RESYNC_REQ or RESYNC_RESP
    cluster: str
    node: str  # the topic's owner: the only node allowed to publish there
    requester: str | None = None  # RESYNC_RESP: the node it is addressed to


def parse(topic: str) -> Parsed:
    """Split one of our topics; TopicError for anything else."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT or not all(valid_name(p) for p in parts[1:]):
        raise TopicError(f"not a ctlab topic: {topic!r}")
    cluster, kind, node = parts[1], parts[2], parts[3]
    if len(parts) == 4 and kind in (CT, TOUCH, HB, ACK):
        return Parsed(kind, cluster, node)
    if kind == "resync":
        if len(parts) == 5 and parts[4] == "req":
            return Parsed(RESYNC_REQ, cluster, node)
        if len(parts) == 6 and parts[4] == "resp":
            return Parsed(RESYNC_RESP, cluster, node, parts[5])
    raise TopicError(f"not a ctlab topic: {topic!r}")


__all__ = ["ACK", "CT", "HB", "NAME_RE", "RESYNC_REQ", "RESYNC_RESP", "ROOT", "TOUCH", "Parsed",
           "ack", "check_name", "ct", "hb", "parse", "resync_req", "resync_resp", "subscriptions",
           "touch", "valid_name"]
