"""What a node sends for a packet it forwards: the bytes it received when the
datapath left the packet as it was (not rebuilt: checksums and IP options as
they came, as a forwarding device does), rebuilt otherwise."""

from __future__ import annotations

from node.daemon.bench import flow_packet
from tests.daemon.helpers import memory_node


def test_an_unchanged_packet_leaves_as_the_bytes_it_came_in() -> None:
    node = memory_node()
    raw = flow_packet(7)
    first = node.receive("inside", raw, 1.0)
    node.poll(1.0)  # the flow's hardware insert lands
    second = node.receive("inside", raw, 1.5)
    for res, path in ((first, "sw"), (second, "hw")):
        assert len(res.sends) == 1
        port, wire, took = res.sends[0]
        assert (port, took) == ("outside", path)
        assert wire is raw  # not parsed and rebuilt
    captured = node.take_capture()
    assert [(c["seq"], c["port"], c["path"], c["hex"]) for c in captured] == \
        [(1, "outside", "sw", raw.hex()), (2, "outside", "hw", raw.hex())]
    assert node.take_capture() == []  # since the last read


def test_bytes_beyond_the_ip_length_are_not_forwarded() -> None:
    """The kernel trims a packet to its IP total length on receive (ip_rcv):
    trailing bytes in the datagram do not leave with it."""
    node = memory_node()
    raw = flow_packet(8)
    res = node.receive("inside", raw + b"\x00" * 6, 1.0)
    assert [(p, w) for p, w, _ in res.sends] == [("outside", raw)]
