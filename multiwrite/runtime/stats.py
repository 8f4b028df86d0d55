"""Traffic accounting per link class: what benchmarks and tests use to show deduplication.

* ``inter_node``: payload bytes and messages this rank sent to ranks on other nodes (over the transport);
  ``per_peer_node`` splits them by destination node.
* ``intra_rack`` / ``inter_rack``: the same messages split by tier: to other nodes of this rank's rack
  (they stay below its top-of-rack switch) / to nodes of other racks (they cross rack uplinks). The two
  add up to ``inter_node``. With no rack configured everything is ``intra_rack``.
* ``intra_node``: payload bytes and copies this rank wrote into shared memory for ranks of its node.
* ``control``: small control messages (size checks, counts) sent through the transport.
"""
import collections
import copy


class Stats:
    """``rack_of_node[n]``: node n's rack, ``rack``: this rank's (Topology fields); None = one rack."""

    def __init__(self, rack_of_node=None, rack=0):
        self.rack_of_node, self.rack = rack_of_node, rack
        self.reset()

    def reset(self):
        self.inter_bytes = 0
        self.inter_messages = 0
        self.intra_bytes = 0
        self.intra_messages = 0
        self.control_bytes = 0
        self.control_messages = 0
        self.per_peer_node = collections.Counter()
        self.intra_rack_bytes = 0
        self.intra_rack_messages = 0
        self.inter_rack_bytes = 0
        self.inter_rack_messages = 0

    def add_inter(self, nbytes, node):
        self.inter_bytes += nbytes
        self.inter_messages += 1
        self.per_peer_node[node] += nbytes
        if self.rack_of_node is not None and self.rack_of_node[node] != self.rack:
            self.inter_rack_bytes += nbytes
            self.inter_rack_messages += 1
        else:
            self.intra_rack_bytes += nbytes
            self.intra_rack_messages += 1

    def add_intra(self, nbytes):
        self.intra_bytes += nbytes
        self.intra_messages += 1

    def add_control(self, nbytes):
        self.control_bytes += nbytes
        self.control_messages += 1

    def as_dict(self):
        return {
            "inter_node": {"bytes": self.inter_bytes, "messages": self.inter_messages,
                           "per_peer_node": dict(sorted(self.per_peer_node.items()))},
            "intra_rack": {"bytes": self.intra_rack_bytes, "messages": self.intra_rack_messages},
            "inter_rack": {"bytes": self.inter_rack_bytes, "messages": self.inter_rack_messages},
            "intra_node": {"bytes": self.intra_bytes, "messages": self.intra_messages},
            "control": {"bytes": self.control_bytes, "messages": self.control_messages},
        }

    def snapshot(self):
        return copy.deepcopy(self)
