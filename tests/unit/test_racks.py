"""The rack level of the topology: where a rank's rack comes from (MULTIWRITE_RACK, the
MULTIWRITE_TOPOLOGY file, _config.rack_state), how racks are numbered and checked (Topology.from_keys,
topology.detect on a stand-in transport), and the per-tier byte counts of runtime/stats.py. The
multi-process side is tests/test_racks_mp.py."""
import pytest

from multiwrite import _config
from multiwrite.errors import MismatchError
from multiwrite.runtime.stats import Stats
from multiwrite.topology import Topology, detect, node_key


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("MULTIWRITE_RACK", "MULTIWRITE_TOPOLOGY", "MULTIWRITE_RANKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)


def _file(tmp_path, text, name="topo.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- where the rack comes from ----------------------------------------------------------------

def test_unset_is_no_rack():
    assert _config.rack() is None
    assert _config.rack_state() == (None, None, None)


@pytest.mark.parametrize("value,expected", [("a", "a"), (" rack-7 ", "rack-7"), ("", None), ("   ", None),
                                            ("spine 1/tor 2", "spine 1/tor 2")])
def test_rack_env(monkeypatch, value, expected):
    monkeypatch.setenv("MULTIWRITE_RACK", value)
    assert _config.rack() == expected


def test_topology_file_format(tmp_path, monkeypatch):
    path = _file(tmp_path, "# hostname rack\n\nnode1 r1\n  node2\tr1   # trailing comment\nnode3 r2\n"
                           "node1 r1\n   \n#node4 r9\n")
    assert _config.read_topology_file(path) == {"node1": "r1", "node2": "r1", "node3": "r2"}
    monkeypatch.setenv("MULTIWRITE_TOPOLOGY", path)
    assert _config.rack("node2") == "r1"
    assert _config.rack("node3") == "r2"
    # a fully qualified hostname finds its short name
    assert _config.rack("node3.cluster.example") == "r2"
    name, used, digest = _config.rack_state("node1")
    assert (name, used) == ("r1", path) and digest


@pytest.mark.parametrize("text,line", [("a r1\nb\n", 2), ("a r1\n\n# c\nb r1 extra\n", 4),
                                       ("a r1 r2 # one too many\n", 1)])
def test_malformed_line_names_file_and_line(tmp_path, monkeypatch, text, line):
    path = _file(tmp_path, text)
    with pytest.raises(ValueError, match=rf"MULTIWRITE_TOPOLOGY=.*topo\.txt.*line {line}: expected 'hostname rack'"):
        _config.read_topology_file(path)
    monkeypatch.setenv("MULTIWRITE_TOPOLOGY", path)
    with pytest.raises(ValueError, match=f"line {line}"):
        _config.validate_all()


def test_host_in_two_racks_is_an_error(tmp_path):
    path = _file(tmp_path, "a r1\nb r1\na r2\n")
    with pytest.raises(ValueError, match=r"line 3: host 'a' is in rack 'r1' on line 1 and in rack 'r2' here"):
        _config.read_topology_file(path)


def test_missing_host_names_the_host(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIWRITE_TOPOLOGY", _file(tmp_path, "a r1\n"))
    with pytest.raises(ValueError, match=r"host 'nowhere' is not in the file"):
        _config.rack("nowhere")


def test_missing_host_fails_validation(tmp_path, monkeypatch):
    """This host (socket.gethostname()) is not in the file: validate_all raises, so mw.init() fails on
    this rank and the others learn it at start-up (transport.rendezvous.agree)."""
    monkeypatch.setenv("MULTIWRITE_TOPOLOGY", _file(tmp_path, "certainly-not-this-host r1\n"))
    with pytest.raises(ValueError, match="is not in the file"):
        _config.validate_all()
    _, _, state, error = _config.local_state("mpi")
    assert isinstance(error, ValueError) and "is not in the file" in state[2]


def test_unreadable_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIWRITE_TOPOLOGY", str(tmp_path / "absent.txt"))
    with pytest.raises(ValueError, match=r"MULTIWRITE_TOPOLOGY=.*absent\.txt.*cannot read it"):
        _config.rack("a")


def test_rack_env_wins_over_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIWRITE_TOPOLOGY", _file(tmp_path, "a r1\n"))
    monkeypatch.setenv("MULTIWRITE_RACK", "mine")
    assert _config.rack("a") == "mine"
    assert _config.rack_state("not-in-file") == ("mine", None, None)    # the file is not read at all
    monkeypatch.setenv("MULTIWRITE_TOPOLOGY", _file(tmp_path, "malformed\n", "bad.txt"))
    assert _config.rack("a") == "mine"


def test_rack_is_not_an_agreed_setting():
    names = [name for name, _ in _config.AGREED]
    assert "MULTIWRITE_RACK" not in names and "MULTIWRITE_TOPOLOGY" not in names


def test_file_contents_compared_not_paths(tmp_path, monkeypatch):
    """Ranks that read a topology file must read the same map (under any path)."""
    same1, same2 = _file(tmp_path, "a r1\nb r2\n", "one.txt"), _file(tmp_path, "b r2  # copy\na r1\n", "two.txt")
    other = _file(tmp_path, "a r1\nb r1\n", "three.txt")
    states = []
    for path, host in ((same1, "a"), (same2, "b"), (other, "a")):
        monkeypatch.setenv("MULTIWRITE_TOPOLOGY", path)
        states.append(_config.rack_state(host))
    assert _config.topology_file_disagreement(states[:2]) is None
    assert _config.topology_file_disagreement(states[:2] + [("x", None, None), (None, None, None)]) is None
    msg = _config.topology_file_disagreement(states)
    assert "different contents" in msg and "three.txt" in msg and "rank(s) 2" in msg and "rank(s) 0, 1" in msg


# -- Topology ---------------------------------------------------------------------------------

def test_default_is_one_rack():
    t = Topology.from_keys(3, ["h0", "h0", "h1", "h1", "h2"])
    assert t.num_racks == 1 and t.rack == 0 and t.rack_names == ("",)
    assert t.rack_of_node == (0, 0, 0) and t.rack_of == (0,) * 5 and t.nodes_of_rack == ((0, 1, 2),)
    assert t.as_dict()["num_racks"] == 1 and "num_racks=1" in repr(t)
    assert Topology.from_keys(0, ["h0", "h1"], [None, None]) == Topology.from_keys(0, ["h0", "h1"])
    # the constructor with the node fields alone still works
    direct = Topology(0, 2, (0, 1), (0, 0), ((0,), (1,)))
    assert direct.rack_of_node == (0, 0) and direct.num_racks == 1


def test_racks_numbered_by_first_appearance_in_node_order():
    keys = ["h0", "h0", "h1", "h2", "h2", "h3", "h4"]
    racks = ["b", "b", "a", "b", "b", "c", "a"]
    t = Topology.from_keys(5, keys, racks)
    assert t.rack_names == ("b", "a", "c") and t.num_racks == 3
    assert t.rack_of_node == (0, 1, 0, 2, 1)
    assert t.rack_of == (0, 0, 1, 0, 0, 2, 1)
    assert t.nodes_of_rack == ((0, 2), (1, 4), (3,))
    assert t.node == 3 and t.rack == 2 and t.same_rack(5) and not t.same_rack(0)
    d = t.as_dict()
    assert d["rack"] == 2 and d["num_racks"] == 3 and d["rack_names"] == ["b", "a", "c"]
    assert d["rack_of_node"] == [0, 1, 0, 2, 1]
    assert "rack=2, num_racks=3 ('b': nodes 0, 2; 'a': nodes 1, 4; 'c': node 3)" in repr(t)


def test_ranks_of_a_node_must_agree():
    with pytest.raises(MismatchError) as e:
        Topology.from_keys(0, ["h0", "h0", "h1", "h1"], ["y", "x", "x", "x"])
    msg = str(e.value)
    assert "node 0 (h0, rank(s) 0, 1)" in msg and "'y' on rank(s) 0" in msg and "'x' on rank(s) 1" in msg
    with pytest.raises(MismatchError, match=r"node 1 .*'x' on rank\(s\) 2; unset on rank\(s\) 3"):
        Topology.from_keys(0, ["h0", "h0", "h1", "h1"], ["x", "x", "x", None])


def test_some_nodes_without_a_rack():
    with pytest.raises(MismatchError, match=r"node\(s\) 0, 2 have a rack but node\(s\) 1 have none"):
        Topology.from_keys(0, ["h0", "h1", "h2"], ["a", None, "b"])


def test_bad_rack_fields():
    with pytest.raises(ValueError):
        Topology(0, 2, (0, 1), (0, 0), ((0,), (1,)), (0,), ("a",))
    with pytest.raises(ValueError):
        Topology(0, 2, (0, 1), (0, 0), ((0,), (1,)), (0, 2), ("a", "b"))


# -- detect on a stand-in transport -----------------------------------------------------------

class _Gathered:
    """A transport whose allgather returns this rank's object among the others' ``states``."""

    def __init__(self, rank, others):
        self.rank, self.size, self.others = rank, len(others), others

    def allgather_obj(self, obj):
        return [obj if r == self.rank else o for r, o in enumerate(self.others)]


def test_detect_with_emulated_nodes(monkeypatch):
    monkeypatch.setenv("MULTIWRITE_RANKS_PER_NODE", "1")
    monkeypatch.setenv("MULTIWRITE_RACK", "b")
    me = node_key()
    agreed = _config.agreed()
    others = [(me, agreed, (rack, None, None)) for rack in ("a", "a", None, "b")]
    t = detect(_Gathered(2, others))
    assert t.num_nodes == 4 and t.rack_names == ("a", "b") and t.rack_of_node == (0, 0, 1, 1) and t.rack == 1


def test_detect_names_the_node_on_disagreement(monkeypatch):
    monkeypatch.setenv("MULTIWRITE_RANKS_PER_NODE", "2")
    monkeypatch.setenv("MULTIWRITE_RACK", "y")
    me, agreed = node_key(), _config.agreed()
    others = [(me, agreed, (rack, None, None)) for rack in (None, "x", "x", "x")]
    with pytest.raises(MismatchError, match=r"creating a multiwrite group: the ranks of node 0 \(rank\(s\) 0, 1\) "
                                            r"report different racks \('y' on rank\(s\) 0; 'x' on rank\(s\) 1\)"):
        detect(_Gathered(0, others))


def test_detect_compares_topology_files(monkeypatch):
    monkeypatch.setenv("MULTIWRITE_RACK", "a")
    me, agreed = node_key(), _config.agreed()
    others = [None, (me, agreed, ("a", "/x/topo", "1234")), (me, agreed, ("a", "/y/topo", "5678"))]
    with pytest.raises(MismatchError, match="MULTIWRITE_TOPOLOGY names files with different contents"):
        detect(_Gathered(0, others))


# -- bytes per tier ---------------------------------------------------------------------------

def test_stats_per_tier():
    s = Stats((0, 0, 1, 1), 0)
    s.add_inter(100, 1)
    s.add_inter(30, 2)
    s.add_inter(7, 3)
    s.add_intra(5)
    d = s.as_dict()
    assert d["inter_node"] == {"bytes": 137, "messages": 3, "per_peer_node": {1: 100, 2: 30, 3: 7}}
    assert d["intra_rack"] == {"bytes": 100, "messages": 1}
    assert d["inter_rack"] == {"bytes": 37, "messages": 2}
    assert d["intra_node"] == {"bytes": 5, "messages": 1}
    s.reset()
    assert s.as_dict()["inter_rack"] == {"bytes": 0, "messages": 0}
    assert s.as_dict()["intra_rack"] == {"bytes": 0, "messages": 0}


def test_stats_without_racks_is_all_intra_rack():
    s = Stats()
    s.add_inter(10, 4)
    d = s.as_dict()
    assert d["intra_rack"] == {"bytes": 10, "messages": 1} and d["inter_rack"] == {"bytes": 0, "messages": 0}
