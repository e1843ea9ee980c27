"""memory-plan: every buffer of a kernel graph gets an offset in one arena, allocated once.

    plan = memory_plan.plan(lower(graph), batch=128)
    print(plan.report())   # memory-plan N=128: arena 180 MiB (peak live 176 MiB) vs 410 MiB ...

Liveness: a buffer lives from the kernel that writes it to the last kernel that reads it,
both included, so a kernel's inputs and outputs never share memory. Parameters,
optimizer state, constants and prologue results live across steps; inputs and random
masks from before the first kernel; graph outputs to after the last. A view shares its
base's memory and stretches its base's life.

Reuse: buffers whose lifetimes do not overlap may share bytes. They are placed largest
first at the best-fitting gap among the buffers live at the same time (the greedy-by-size
offset planner of TFLite), offsets aligned to ALIGN bytes. Temporaries of fewer than
REUSE_FROM bytes in all (a batch of a few images) each keep their own.

In place: the new value of a parameter or state is written into the old value's buffer
when no later node reads the old value. Readers in the writing kernel are allowed
if they run no later than the writer and read the old value at the same element
(elementwise, same shape): the loop then reads w[i] before it writes w'[i]. Otherwise
the new value gets its own buffer and the runtime copies it back after the step
(`writebacks`). Symbolic dimensions are bound to `batch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from dslc.kernels.graph import Buffer, KernelGraph, bindings, index_maps
from dslc.kernels.grouping import elementwise
from dslc.ops import registry

ALIGN = 256  # bytes: a multiple of every cache line and of CUDA's allocation granularity
PERSISTENT = ("param", "state", "const")
# Bytes of temporaries from which they share memory; below, each has its own. Two threads
# working on one small batch write lines the other core has just read when a buffer
# takes a dead one's place, which costs (a saliency gradient of small_cnn at batch 1,
# 0.46 MiB of temporaries, took 161-169 us with one buffer each against 166-176 sharing,
# on the 2-core EPYC; at 4 images, 1.6 MiB, 429-464 against 433-488; at 16 sharing was 1%
# faster). Below it, sharing would save the arena less than that.
REUSE_FROM = 1 << 21


@dataclass(frozen=True)
class MemoryPlan:
    batch: dict[str, int]
    offsets: dict[str, int]  # buffer -> byte offset in the arena (views and in-place values share)
    arena_bytes: int  # what the step allocates, once
    peak_bytes: int  # the most bytes live at any kernel: a lower bound for the arena
    naive_bytes: int  # one buffer per value
    in_place: tuple[str, ...]  # update values written into their parameter's or state's buffer
    writebacks: tuple[tuple[str, str], ...]  # (value, target) copied after the step
    lifetimes: dict[str, tuple[int, int]]  # buffer owning memory -> [first, last] kernel index

    def report(self) -> str:
        at = ", ".join(f"{k}={v}" for k, v in self.batch.items())
        saved = 1 - self.arena_bytes / self.naive_bytes if self.naive_bytes else 0.0
        updates = len(self.in_place) + len(self.writebacks)
        return (f"memory-plan {at}: arena {_mib(self.arena_bytes)} (peak live {_mib(self.peak_bytes)}) vs "
                f"{_mib(self.naive_bytes)} with one buffer per value (-{saved:.0%}); "
                f"{len(self.in_place)}/{updates} updates in place")


def plan(kg: KernelGraph, batch: int | Mapping[str, int]) -> MemoryPlan:
    """Offsets for every buffer of `kg` with the symbolic dimensions bound to `batch`."""
    sizes = bindings(batch)
    root = {b.name: _root(kg, b) for b in kg.buffers}
    in_place = tuple(b.name for b in kg.buffers if b.updates and b.alias is None and _in_place_safe(kg, b))
    for u in in_place:
        root[u] = kg.buffer(u).updates
    life = _lifetimes(kg, root)
    own = sorted(life, key=lambda r: (-kg.buffer(r).nbytes(sizes), life[r][0], r))
    temporaries = sum(aligned(kg.buffer(r).nbytes(sizes)) for r in own if kg.buffer(r).role not in PERSISTENT)
    placed: list[tuple[int, int, int, int]] = []  # offset, aligned size, start, end
    offsets: dict[str, int] = {}
    for r in own:
        size = aligned(kg.buffer(r).nbytes(sizes))
        offsets[r] = (_best_fit(placed, size, *life[r]) if temporaries >= REUSE_FROM
                      else max((o + s for o, s, _, _ in placed), default=0))  # the top: its own bytes
        placed.append((offsets[r], size, *life[r]))
    return MemoryPlan(
        batch=sizes, offsets={b.name: offsets[root[b.name]] for b in kg.buffers},
        arena_bytes=max((o + s for o, s, _, _ in placed), default=0),
        peak_bytes=_peak(kg, life, sizes),
        naive_bytes=sum(b.nbytes(sizes) for b in kg.buffers if b.alias is None),
        in_place=in_place,
        writebacks=tuple((b.name, b.updates) for b in kg.buffers if b.updates and b.name not in in_place),
        lifetimes=life)


def _root(kg: KernelGraph, b: Buffer) -> str:
    while b.alias is not None:
        b = kg.buffer(b.alias)
    return b.name


def _lifetimes(kg: KernelGraph, root: dict[str, str]) -> dict[str, tuple[int, int]]:
    """[first, last] kernel index of every buffer that owns memory; -1 is before the
    step, len(kernels) after it."""
    end = len(kg.kernels)
    life = {b.name: [-1, end if b.role in PERSISTENT else -1] for b in kg.buffers if root[b.name] == b.name}
    for t, k in enumerate(kg.kernels):
        for name in k.outputs + k.scratch:
            if root[name] == name:
                life[name] = [-1, end] if k.prologue else [t, t]
        for name in k.inputs:
            life[root[name]][1] = max(life[root[name]][1], t)
    for name in [o.value for o in kg.outputs] + [b.name for b in kg.buffers if b.updates]:
        life[root[name]][1] = end
    return {r: (s, e) for r, (s, e) in life.items()}


def _in_place_safe(kg: KernelGraph, u: Buffer) -> bool:
    """No kernel after u's writer reads the old value, and readers in the writer's kernel
    read it elementwise at the same index no later than the writer."""
    target = kg.buffer(u.updates)
    if (target.dtype, target.shape) != (u.dtype, u.shape):
        return False
    olds = {b.name for b in kg.buffers if _root(kg, b) == target.name}
    writer = next(t for t, k in enumerate(kg.kernels) if u.name in k.outputs + k.scratch)
    if any(olds & set(k.inputs) for k in kg.kernels[writer + 1:]):
        return False
    nodes = kg.kernels[writer].nodes
    at = next(p for p, n in enumerate(nodes) if n.name == u.name)
    for pos, n in enumerate(nodes):
        reads = [j for j, i in enumerate(n.inputs) if i in olds]
        if reads and (pos > at or not _same_element(kg, n, reads)):
            return False
    return True


def _same_element(kg: KernelGraph, node, positions: list[int]) -> bool:
    """Whether `node` reads its inputs at `positions` at the very element it writes."""
    types = [kg.buffer(i).type for i in node.inputs]
    if node.op == "fused":
        maps = index_maps(node, types)
        return node.attr("kind") == "elementwise" and all(maps[j] == "identity" for j in positions)
    same = all(types[j].shape == node.type.shape for j in positions)
    return same and (elementwise(node) or registry.get(node.op).category == "optimizer")


def aligned(nbytes: int) -> int:
    """nbytes rounded up to whole ALIGN blocks, at least one: a buffer's place in the arena
    (and the runner's per-thread slots)."""
    return max(ALIGN, -(-nbytes // ALIGN) * ALIGN)


def _best_fit(placed, size: int, start: int, end: int) -> int:
    """The smallest gap that holds `size` among buffers live during [start, end], else the top."""
    busy = sorted((o, o + s) for o, s, st, en in placed if st <= end and start <= en)
    best, top = None, 0
    for lo, hi in busy:
        gap = lo - top
        if gap >= size and (best is None or gap < best[1]):
            best = (top, gap)
        top = max(top, hi)
    return best[0] if best else top


def _peak(kg: KernelGraph, life, sizes) -> int:
    delta: dict[int, int] = {}
    for r, (s, e) in life.items():
        n = kg.buffer(r).nbytes(sizes)
        delta[s] = delta.get(s, 0) + n
        delta[e + 1] = delta.get(e + 1, 0) - n
    live = peak = 0
    for t in sorted(delta):
        live += delta[t]
        peak = max(peak, live)
    return peak


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
