"""One-sided MultiWrite into windows: rank 0 writes one buffer to every odd rank, with notify.

    MULTIWRITE_RANKS_PER_NODE=2 torchrun --nproc-per-node 4 scripts/example_window.py
Works the same under mpirun.
"""
import numpy as np

import multiwrite as mw


def main():
    mw.init()
    topo = mw.topology()
    win = mw.Window(1024)                                  # collective
    targets = [r for r in range(topo.world_size) if r % 2 == 1]
    if topo.rank == 0:
        msg = np.frombuffer(b"hello from rank 0 via MultiWrite", dtype=np.uint8)
        mw.reset_stats()
        win.multi_write(msg, targets, offset=100).wait()   # local completion
        st = mw.stats()["inter_node"]
        print(f"rank 0 sent {st['messages']} packet(s), {st['bytes']} bytes across nodes "
              f"for {len(targets)} destinations", flush=True)
    if topo.rank in targets:
        win.wait_from(0, 1)                                # notify counter: the write is visible
        print(f"rank {topo.rank} received: {bytes(win.buffer[100:132]).decode()}", flush=True)
    win.free()                                             # collective (includes a fence)
    mw.finalize()


if __name__ == "__main__":
    main()
