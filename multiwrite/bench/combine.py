"""MoE combine implementations of the benchmark, the reverse of dispatch: MPI Alltoallv + sum, Gloo
all_to_all_single + unpermute-sum, multiwrite Buffer.combine (unicast and MultiWrite); each takes its
layout from one untimed dispatch and is checked against the workload's reference. DOC is the
subcommand's --help text."""
import torch

from .checks import wrong_shape
from .dispatch import GlooDispatch, MoEImpl, MPIDispatch, MWDispatch, displs
from .harness import MWImpl
from .moe_workload import WORKLOAD_HELP

DOC = """MoE combine: MPI Alltoallv + sum, Gloo all_to_all_single + unpermute-sum, multiwrite unicast / MultiWrite.

The reverse of dispatch: every rank holds expert outputs for the rows it received and returns them
to the token's source rank, which sums them per token (weighting is the caller's job, as in DeepEP).
Layouts come from one untimed dispatch per implementation and size; timed: the transfer and the
final per-token sum.
  mpi        MPI_Alltoallv of one row per (token, rank) (the rank's experts pre-summed), index_add at
             the source.
  gloo       all_to_all_single of one row per (token, expert), index_add ("unpermute") at the source.
  unicast    multiwrite Buffer.combine, mode="unicast": one row per (token, rank) back.
  multiwrite multiwrite Buffer.combine, MultiWrite: the rows of a node are summed in shared memory, one
             partial sum per (token, node) crosses the network.
Expert outputs are small integers (exact in bf16/fp16, any summation order), so every result is
checked bit for bit against the sum each source rank computes locally.
""" + WORKLOAD_HELP + """
Columns as for dispatch; the bound counts one row per (token, remote node) on the way back.
"""


class _CombineBase(MoEImpl):
    def __init__(self, ctx, wl, dispatcher):
        super().__init__(ctx, wl)
        self.dispatcher = dispatcher
        # The layout of the second of two dispatches, as in a loop of steps of this size (multiwrite:
        # decode-sized steps then run on the low-latency path, whose capacity the first one sets)
        for _ in range(2):
            dispatcher.prepare(0)
            dispatcher.run()
        self.layout = dispatcher.result
        if dispatcher.check(0):
            raise RuntimeError(f"combine benchmark: the {dispatcher.name} dispatch that sets up the layout is wrong")
        self.out = None

    def check(self, it):
        return wrong_shape(self.out, self.wl.exp_out)


class MPICombine(_CombineBase):
    name = "mpi"

    def run(self):
        wl, MPI, comm = self.wl, self.ctx.MPI, self.ctx.comm
        tok, counts, rcounts = self.layout[4:7]
        y = wl.y_dedup
        back = torch.empty(len(tok), wl.H, dtype=wl.dtype)
        rb = wl.rb
        sc = rcounts * rb
        rc = counts.numpy() * rb
        comm.Alltoallv([y.view(torch.uint8).numpy().reshape(-1), (sc, displs(sc)), MPI.BYTE],
                       [back.view(torch.uint8).numpy().reshape(-1), (rc, displs(rc)), MPI.BYTE])
        out = torch.zeros(wl.T, wl.H, dtype=wl.dtype)
        out.index_add_(0, tok, back)
        self.out = out


class GlooCombine(_CombineBase):
    name = "gloo"

    def run(self):
        import torch.distributed as dist
        wl = self.wl
        token_of, in_splits, out_splits = self.layout[2:5]
        back = torch.empty(len(token_of), wl.H, dtype=wl.dtype)
        dist.all_to_all_single(back, wl.y_pe, in_splits, out_splits, group=self.ctx.gloo)
        out = torch.zeros(wl.T, wl.H, dtype=wl.dtype)
        out.index_add_(0, token_of, back)      # unpermute: sum the k expert outputs of every token
        self.out = out


class MWCombine(_CombineBase, MWImpl):
    def __init__(self, ctx, wl, mode, zero_copy=True):
        self.name = mode
        super().__init__(ctx, wl, MWDispatch(ctx, wl, mode))
        self.buf = self.dispatcher.buf
        self.handle = self.layout[4]
        self.path = "low_latency" if self.handle.low_latency else "normal"      # reported in the rows
        self.zero_copy = zero_copy and mode == "multiwrite"
        self.y = None

    def prepare(self, it):
        super().prepare(it)
        self.y = self.wl.y_dedup
        if self.zero_copy:
            # The experts' outputs land in the buffer combine reads (DeepEP's zero-copy convention),
            # written untimed like every implementation's input.
            self.y = self.buf.get_combine_buffer(self.handle)
            self.y.copy_(self.wl.y_dedup)

    def run(self):
        self.out = self.buf.combine(self.y, self.handle)


def impls(ctx, names, wl, zero_copy=True):
    """The combine implementations ``names`` on workload ``wl``, each with its layout from one dispatch."""
    return [MPICombine(ctx, wl, MPIDispatch(ctx, wl)) if n == "mpi" else
            GlooCombine(ctx, wl, GlooDispatch(ctx, wl)) if n == "gloo" else
            MWCombine(ctx, wl, n, zero_copy)
            for n in names]
