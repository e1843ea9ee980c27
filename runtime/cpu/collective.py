"""The collective ops on the CPU: what a generated driver calls for allreduce_mean and global_count.

Plain Python around the group of ranks (dslc/collective.py: MPI in runtime/mpi.py, or
one process), called between the Numba kernels of a step like any library kernel:

    collective.allreduce_mean(g, out, 1, 7)     # a member of bucket 1, which has 7
    collective.global_count(x, out, (0, 2, 3))

A node of bucket 0 is reduced at once (a synchronised batchnorm's statistics, needed by
the next kernel). The members of a bucket k > 0 (a step's gradients, loss and metrics) are
scaled by this rank's batch share and packed into one flat buffer as they come; when the
last one arrives the buffer is reduced in one message and unpacked into every member's
output. So a member's output is written later than the kernel order says: `check_buckets`
proves, once per kernel graph, that no kernel reads one before its bucket's last member.
The flat buffer is kept between steps, so a steady-state step allocates nothing.
"""
from __future__ import annotations

import weakref

import numpy as np

from dslc.collective import ALONE, Group, current
from dslc.kernels.graph import KernelGraph
from dslc.ops.collective import count

COLLECTIVES = ("allreduce_mean", "global_count")


class Bucket:
    """The members of one bucket seen so far in this step, packed into `flat`."""

    def __init__(self) -> None:
        self.flat = np.zeros(0, np.float32)
        self.outs: list[tuple[np.ndarray, int, int]] = []
        self.used = 0
        self.step = -1

    def add(self, group: Group, x: np.ndarray, out: np.ndarray, members: int) -> None:
        if self.step != group.traffic.steps:  # a step abandoned midway left members behind
            self.outs, self.used, self.step = [], 0, group.traffic.steps
        n = x.size
        if not self.outs and self.flat.dtype != x.dtype:
            self.flat = np.zeros(self.flat.size, x.dtype)
        if self.used + n > self.flat.size:  # grows during the first step only
            grown = np.zeros(self.used + n, self.flat.dtype)
            grown[:self.used] = self.flat[:self.used]
            self.flat = grown
        np.multiply(x.reshape(-1), group.share(), out=self.flat[self.used:self.used + n], casting="same_kind")
        self.outs.append((out, self.used, n))
        self.used += n
        if len(self.outs) == members:
            group.timed_sum(self.flat[:self.used])
            for target, start, size in self.outs:
                target.reshape(-1)[...] = self.flat[start:start + size]
            self.outs, self.used = [], 0


_buckets: "weakref.WeakKeyDictionary[Group, dict[int, Bucket]]" = weakref.WeakKeyDictionary()


def allreduce_mean(x: np.ndarray, out: np.ndarray, bucket: int, members: int) -> None:
    """out = the mean over ranks of x, weighted by their batch shares (see the module docstring)."""
    group = current()
    if group is ALONE:
        np.copyto(out, x)
    elif bucket == 0:
        np.multiply(x, group.share(), out=out, casting="same_kind")
        group.timed_sum(out)
    else:
        _buckets.setdefault(group, {}).setdefault(bucket, Bucket()).add(group, x, out, members)


def global_count(x: np.ndarray, out: np.ndarray, axis) -> None:
    """out = how many elements of x the reduction over `axis` spans on all ranks."""
    out[...] = count(x, axis)


def check_buckets(kg: KernelGraph) -> None:
    """Fail (a bug in whoever ordered the kernels) unless every bucket's members are as many
    as they say and no kernel reads a member's output, or a view of it, before the bucket's
    last member has run: that is when the deferred reduction writes them."""
    members: dict[int, list[tuple[int, str, int]]] = {}
    for pos, k in enumerate(kg.kernels):
        node = k.nodes[0]
        if k.kind == "extern" and node.op == "allreduce_mean" and node.attr("bucket"):
            members.setdefault(node.attr("bucket"), []).append((pos, node.name, node.attr("members")))
    aliases: dict[str, list[str]] = {}
    for b in kg.buffers:
        if b.alias is not None:
            aliases.setdefault(b.alias, []).append(b.name)
    for bucket, found in members.items():
        last = max(pos for pos, _, _ in found)
        if any(m != len(found) for _, _, m in found):
            raise AssertionError(f"bucket {bucket} has {len(found)} members, its nodes say {found[0][2]}")
        read = set()
        for _, name, _ in found:
            stack = [name]
            while stack:
                buffer = stack.pop()
                read.add(buffer)
                stack += aliases.get(buffer, [])
        early = [k.name for pos, k in enumerate(kg.kernels[:last]) if k.kind != "view" and read & set(k.inputs)]
        if early:
            raise AssertionError(f"kernel {early[0]} reads a member of bucket {bucket} before its reduction")
