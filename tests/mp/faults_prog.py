"""The fault matrix's program (tests/test_faults_mp.py): argv[1] is the case; the last rank is the
faulty one. Every rank prints one line that the test checks:

    FAULT rank R: OK after T s                     (no error)
    FAULT rank R: <ExceptionClass> after T s: msg  (the error this rank saw, T counted from its start)
    FAULT rank R: terminated by the launcher       (torchrun's agent stops the others when one dies)

Cases: kill (SIGKILL in the middle of the workload), stop (SIGSTOP: alive, silent), late_init (starts
2 timeouts late), bad_piece / bad_transport (a setting that must agree differs on one rank),
bad_timeout / bad_spin (an invalid setting on one rank).
"""
import os
import signal
import sys
import time

START = time.monotonic()
case = sys.argv[1]
rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
faulty = rank == size - 1
timeout_s = float(os.environ.get("MULTIWRITE_TIMEOUT", "10"))
torchrun = "TORCHELASTIC_RUN_ID" in os.environ


def say(text):
    print(f"FAULT rank {rank}: {text}", flush=True)


def on_term(signum, frame):
    say("terminated by the launcher")
    os._exit(143)


signal.signal(signal.SIGTERM, on_term)

if faulty:
    if case == "bad_piece":
        os.environ["MULTIWRITE_PIECE_KIB"] = "64"
    elif case == "bad_transport":
        os.environ["MULTIWRITE_TRANSPORT"] = "mpi" if torchrun else "gloo"
    elif case == "bad_timeout":
        os.environ["MULTIWRITE_TIMEOUT"] = "nan"
    elif case == "bad_spin":
        os.environ["MULTIWRITE_SPIN_US"] = "abc"
    elif case == "late_init":
        time.sleep(2 * timeout_s + 5)


def workload(mw, torch, step):
    """One round of every operator, on 2 x 2 emulated nodes."""
    P = mw.topology().world_size
    x = torch.full((1024,), float(rank + step))
    out = torch.empty(P * 1024)
    mw.all_gather(out, x)
    assert out.view(P, -1)[:, 0].tolist() == [float(r + step) for r in range(P)]
    big = torch.full((1 << 18,), float(rank))
    mw.all_gather(torch.empty(P << 18), big)
    buf = mw.Buffer()
    E, T = 4 * P, 16
    g = torch.Generator().manual_seed(step * 100 + rank)
    topk = torch.randint(0, E, (T, 2), generator=g)
    xs = torch.randn(T, 64, generator=g)
    recv_x, _, _, _, handle = buf.dispatch(xs, topk, torch.ones(T, 2), E)
    buf.combine(recv_x, handle)
    win = mw.Window(4096)
    win.multi_write(torch.full((16,), rank, dtype=torch.uint8), [(rank + 1) % P], offset=16 * rank).wait()
    win.fence()
    win.free()


try:
    import torch
    import multiwrite as mw
    mw.init()
    for step in range(12):
        if faulty and step == 3 and case == "kill":
            say("sending myself SIGKILL")
            os.kill(os.getpid(), signal.SIGKILL)
        if faulty and step == 3 and case == "stop":
            # a hang that ends after 3 timeouts (a helper sends SIGCONT), so that the launcher need
            # not wait for a stopped process when the survivors have failed
            say("sending myself SIGSTOP")
            if os.fork() == 0:
                time.sleep(3 * timeout_s)
                os.kill(os.getppid(), signal.SIGCONT)
                os._exit(0)
            os.kill(os.getpid(), signal.SIGSTOP)
        workload(mw, torch, step)
    say(f"OK after {time.monotonic() - START:.1f} s")
except BaseException as exc:  # noqa: BLE001 - every error is the result
    text = " ".join(str(exc).split())[:600]
    say(f"{type(exc).__name__} after {time.monotonic() - START:.1f} s: {text}")
    # Give the other survivors the time to find the fault themselves (a launcher ends the whole job as
    # soon as one process exits with an error; FAULT_LINGER_S, default the timeout + 3 s), then leave without MPI_Finalize (which would wait for
    # the peers' pending requests).
    time.sleep(float(os.environ.get("FAULT_LINGER_S", timeout_s + 3)))
    os._exit(3)
