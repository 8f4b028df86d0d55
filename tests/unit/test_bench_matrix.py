"""The shape-matrix table (multiwrite.bench.matrix) from benchmark documents."""
import json

from multiwrite.bench import matrix


def _doc(nodes, per, launcher, cells):
    rows = []
    for (op, size), ratio in cells.items():
        for impl in ("gloo", "multiwrite"):
            r = {"impl": impl, "benchmark": op, "size": size * 8192 if op != "allgather" else size,
                 "vs_best_baseline": ratio if impl == "multiwrite" else 1.0, "time_per_bound": 1.5, "wrong": 0}
            if op != "allgather":
                r["tokens"] = size
            rows.append(r)
    return {"meta": {"num_nodes": nodes, "world_size": nodes * per, "launcher": launcher}, "rows": rows}


def test_table_columns_cells_and_slower_marks(tmp_path):
    paths = []
    for name, doc in {"a": _doc(8, 1, "mpirun", {("allgather", 1024): 1.46, ("dispatch", 256): 0.9}),
                      "b": _doc(2, 4, "torchrun", {("allgather", 1024): 0.5, ("combine", 1): 1.2})}.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(doc))
        paths.append(str(p))
    cols = matrix.load(paths)
    assert [label for label, _ in cols] == ["2x4 torchrun", "8x1 mpirun"]     # most ranks per node first
    text = matrix.table(cols)
    lines = text.splitlines()
    assert lines[0] == "| operation, size | 2x4 torchrun | 8x1 mpirun |"
    assert "| AllGather 1K | 0.50 (1.50) | 1.46 ✗ (1.50) |" in lines
    assert "| dispatch T=256 | – | 0.90 (1.50) |" in lines
    assert "| combine T=1 | 1.20 ✗ (1.50) | – |" in lines
    # operations in AllGather, dispatch, combine order
    assert [ln.split("|")[1].split()[0] for ln in lines[2:5]] == ["AllGather", "dispatch", "combine"]
    assert "4 cells; MultiWrite slower than the faster baseline (✗) in 2" in text


def test_main_writes_markdown(tmp_path, capsys):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(_doc(2, 4, "mpirun", {("allgather", 4096): 0.8})))
    md = tmp_path / "m.md"
    assert matrix.main([str(p), "--md", str(md)]) == 0
    assert "| AllGather 4K | 0.80 (1.50) |" in md.read_text()
    assert "2x4 mpirun" in capsys.readouterr().out
