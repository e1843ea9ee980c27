"""TensorBoard event files for a run (`dslc train --tensorboard`), written by tensorboardX.

tensorboardX is a maintained writer of TensorBoard's event format that needs no
PyTorch or TensorFlow; it is the optional `tensorboard` extra (`pip install -e
'.[tensorboard]'`, which also installs TensorBoard to view them). The events go to
RUN/tensorboard/, so `tensorboard --logdir runs` shows every run side by side:

    step/loss, step/lr                    every step, or every k-th step while writing them costs
                                          over 1% of the training time (metrics_steps.csv has them all)
    loss/train, loss/val, accuracy/...    every epoch, one chart per metric with both splits
    lr, epoch_seconds                     every epoch
    update_ratio/PARAM                    every epoch, |dW| / |W| of each parameter
    weights/PARAM                         histograms of every parameter, every epoch
    update_ratio (histogram)              log10 of the ratios of all parameters, every epoch
    the model graph                       the typed graph, layers as groups (Graphs tab)

A resumed run passes the checkpoint's step as `purge_step`, so TensorBoard drops the
events of steps that are trained again.

    board = TensorBoard(run_dir, model.graph, purge_step=0)
    board.steps(rows); board.epoch(record, params); board.close()
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from dslc.ir.graph import Graph
from dslc.runtime.errors import TrainError
from dslc.runtime.host import to_host

FOLDER = "tensorboard"
BUDGET = 0.01  # the share of the training time the per-step scalars may take


def writer_class():
    """tensorboardX's SummaryWriter; TrainError naming the extra when it is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise TrainError(f"--tensorboard needs tensorboardX ({e}); install the `tensorboard` extra: "
                         "pip install 'dslc[tensorboard]'") from None
    return SummaryWriter


class TensorBoard:
    """The event files of one run (see the module docstring)."""

    def __init__(self, run_dir, graph: Graph, purge_step: int = 0):
        self.writer = writer_class()(str(Path(run_dir) / FOLDER), purge_step=purge_step or None, flush_secs=10)
        self.every = 1  # step scalars are written every `every` steps (see steps)
        self.writing = self.training = 0.0  # seconds spent writing step scalars, and training those steps
        if not purge_step:
            self._graph(graph)

    def steps(self, rows: list[tuple[int, float, float]], seconds: float) -> None:
        """Scalars of the steps just flushed to metrics_steps.csv (step, loss, lr), which took
        `seconds` to train: every `every`-th step, `every` doubled while writing them has cost
        more than BUDGET of the training time so far and halved while it costs less than a
        quarter of it (a scalar costs tens of microseconds, a small model's step a few hundred;
        TensorBoard shows a thousand points per chart anyway)."""
        started = time.perf_counter()
        for step, loss, lr in rows:
            if step % self.every == 0:
                if math.isfinite(loss):
                    self.writer.add_scalar("step/loss", loss, step)
                self.writer.add_scalar("step/lr", lr, step)
        self.writing += time.perf_counter() - started
        self.training += seconds
        share = self.writing / self.training if self.training > 0 else 0.0
        if share > BUDGET:
            self.every *= 2
        elif share < BUDGET / 4 and self.every > 1:
            self.every //= 2

    def epoch(self, record: Mapping, params: Mapping[str, np.ndarray], trained: list[str]) -> None:
        """One epoch's record (at its last step) and histograms of the trained parameters."""
        step = record["step"]
        for key, value in record.items():
            split, _, metric = key.partition("_")
            if split in ("train", "val") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{metric}/{split}", value, step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.add_scalar("epoch_seconds", record["time"], step)
        ratios = {k: v for k, v in (record.get("update_ratio") or {}).items() if v}
        for name, ratio in ratios.items():
            self.writer.add_scalar(f"update_ratio/{name}", ratio, step)
        if ratios:
            self.writer.add_histogram("update_ratio", np.log10(np.array(list(ratios.values()))), step)
        for name in trained:
            self.writer.add_histogram(f"weights/{name}", to_host(params[name]).ravel(), step)

    def close(self) -> None:
        self.writer.close()

    def _graph(self, graph: Graph) -> None:
        """The typed graph as TensorBoard's GraphDef: a node per op, named by layer path
        (dots become slashes, which TensorBoard draws as nested groups), shape as an attribute.
        tensorboardX's public add_graph takes only PyTorch modules and add_onnx_graph an
        ONNX file; both end in the file writer's add_onnx_graph, which takes any GraphDef."""
        from tensorboardX.proto.attr_value_pb2 import AttrValue
        from tensorboardX.proto.graph_pb2 import GraphDef
        from tensorboardX.proto.node_def_pb2 import NodeDef

        names = {n.name: n.name.replace(".", "/") for n in graph.nodes}
        nodes = [NodeDef(name=names[n.name], op=n.op, input=[names[i] for i in n.inputs],
                         attr={"shape": AttrValue(s=n.type.show().encode())}) for n in graph.nodes]
        file_writer = getattr(self.writer, "_get_file_writer", None)
        if file_writer is not None:
            file_writer().add_onnx_graph(GraphDef(node=nodes))
