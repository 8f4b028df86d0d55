"""Node shared memory on a host whose /dev/shm is too small (Docker's default is 64 MiB): a clear error
before the segment exists, never a SIGBUS when its pages are touched."""
import os
import subprocess
import tempfile

import pytest

from multiwrite.runtime import shm
from multiwrite.errors import MultiwriteError


@pytest.fixture
def small_tmpfs(monkeypatch):
    """A real 1 MiB tmpfs standing in for /dev/shm (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    d = tempfile.mkdtemp(prefix="mwshm")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True, text=True)
    if p.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    monkeypatch.setattr(shm, "SHM_DIR", d)
    try:
        yield d
    finally:
        subprocess.run(["umount", d], check=True)
        os.rmdir(d)


def test_segment_larger_than_free_space_is_refused(small_tmpfs):
    with pytest.raises(MultiwriteError) as e:
        shm.Segment(shm.Segment.new_name(), 8 << 20, create=True)
    msg = str(e.value)
    assert "MiB free" in msg and "--shm-size" in msg and small_tmpfs in msg
    assert os.listdir(small_tmpfs) == []            # nothing created
    seg = shm.Segment(shm.Segment.new_name(), 256 << 10, create=True)   # what fits still works
    seg.array[:] = 7
    assert int(seg.array.sum()) == 7 * (256 << 10)
    seg.close()


def test_missing_shm_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(shm, "SHM_DIR", str(tmp_path / "absent"))
    with pytest.raises(MultiwriteError, match="POSIX shared memory"):
        shm.Segment(shm.Segment.new_name(), 4096, create=True)
