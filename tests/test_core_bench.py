"""python -m multiwrite.bench core: runs, prints the table, writes JSON; bad input is a clear error."""
import json
import subprocess
import sys

import pytest

from multiwrite.bench import format_size, parse_size, parse_sizes


def test_size_parsing():
    assert parse_sizes("64K..64M") == [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    assert parse_sizes("1M,4096") == [1 << 20, 4096]
    assert parse_size("2G") == 2 << 30 and parse_size("64KiB") == 64 << 10
    assert format_size(64 << 20) == "64M" and format_size(1000) == "1000"
    with pytest.raises(ValueError, match="bad size 'abc'"):
        parse_size("abc")
    with pytest.raises(ValueError, match="empty size range"):
        parse_sizes("4M..1M")


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "multiwrite.bench", *args], capture_output=True, text=True,
                          timeout=120)


def test_core_bench_runs(tmp_path):
    out = tmp_path / "core.json"
    r = _bench("core", "--sizes", "64K,256K", "--repeats", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "memcpy GB/s" in lines[1] and "pack/memcpy" in lines[1] and "unpack/memcpy" in lines[1]
    assert lines[2].split()[0] == "64K" and lines[3].split()[0] == "256K"
    doc = json.loads(out.read_text())
    assert [row["size"] for row in doc["rows"]] == [64 << 10, 256 << 10]
    assert all(row["wrong"] == 0 and row["pack_gbs"] > 0 and row["unpack_gbs"] > 0 for row in doc["rows"])


def test_bench_cli_errors():
    r = _bench("nosuchbench")
    assert r.returncode == 2 and "invalid choice: 'nosuchbench'" in r.stderr
    r = _bench("core", "--sizes", "lots")
    assert r.returncode == 2 and "bad size 'lots'" in r.stderr
