"""The collective ops on the GPU: NCCL through CuPy (`cupy.cuda.nccl`).

The same ops as on the CPU (runtime/cpu/collective.py), on arena views that live on the
GPU: allreduce_mean scales this rank's value by its batch share and sums it over the ranks
in place, global_count writes a count. The ranks are the MPI group (runtime/mpi.py); MPI
only carries NCCL's unique id from rank 0 to the others, once, when the first reduction
runs (every rank reaches it at the same node of the same graph). Each rank drives the GPU
`local_rank` of its machine (`use_device`, before anything is allocated), so a machine
runs as many ranks as it has GPUs. Reductions are not bucketed here: NCCL queues each on
the current stream behind the kernels that produced it, so they overlap nothing but cost
no host round trip either. Untestable without two GPUs; its tests are marked `gpu`.
"""
from __future__ import annotations

import time
import weakref

from dslc.collective import ALONE, Group, current
from dslc.ops.collective import count

_communicators: "weakref.WeakKeyDictionary[Group, object]" = weakref.WeakKeyDictionary()


def use_device(group: Group) -> None:
    """Make this rank's GPU (its local rank, modulo the GPUs present) the current device."""
    import cupy
    cupy.cuda.Device(group.local_rank % cupy.cuda.runtime.getDeviceCount()).use()


def _communicator(group: Group):
    comm = _communicators.get(group)
    if comm is None:
        from cupy.cuda import nccl
        uid = group.broadcast(nccl.get_unique_id() if group.rank == 0 else None)
        comm = _communicators[group] = nccl.NcclCommunicator(group.size, uid, group.rank)
    return comm


def device_sum(group: Group, buffer) -> None:
    """Sum a contiguous CuPy array over the ranks, in place, on the current stream."""
    import cupy
    from cupy.cuda import nccl
    kinds = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
    start = time.perf_counter()
    ptr = buffer.data.ptr
    _communicator(group).allReduce(ptr, ptr, buffer.size, kinds[str(buffer.dtype)], nccl.NCCL_SUM,
                                   cupy.cuda.get_current_stream().ptr)
    t = group.traffic  # the seconds are the launch's: the reduction itself runs on the stream
    t.seconds, t.calls, t.bytes = t.seconds + time.perf_counter() - start, t.calls + 1, t.bytes + buffer.nbytes


def allreduce_mean(cp, x, out) -> None:
    """out = the batch-share-weighted mean over ranks of x (CuPy views of the arena)."""
    group = current()
    if group is ALONE:
        cp.copyto(out, x)
        return
    cp.multiply(x, group.share(), out=out)
    device_sum(group, out)


def global_count(cp, x, out, axis) -> None:
    """out = how many elements of x the reduction over `axis` spans on all ranks."""
    out.fill(float(count(x, axis)))
