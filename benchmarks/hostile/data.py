"""Issue 12, items 3, 4 and 9: data files that are not what they claim. Devices and FIFOs as
data, inflation and header bombs (IDX, .npz, .npy, PNG, safetensors), CIFAR pickles with
shared or odd labels, CSV cells too long or not finite, complex or empty inputs."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from benchmarks.hostile.kit import MLP, Case, Trial

GIB = 1 << 30
CAP = 3 * GIB // 2  # RLIMIT_AS of a memory-bomb trial: dslc itself needs well under 1 GiB


def train(net) -> list:
    return ["train", net, "--device", "reference", "--epochs", "2", "--quiet", "--out", "run"]


def idx(type_code: int, dims, data: bytes = b"") -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


def mnist_dir(ws, images: bytes | None = None, gz: bool = False) -> str:
    """A folder of tiny MNIST files (10 train, 10 test images); `images` replaces the training images."""
    folder = ws.path / "mnist"
    folder.mkdir()
    ok_images, labels = idx(0x08, (10, 28, 28), bytes(7840)), idx(0x08, (10,), bytes(range(10)))
    for prefix in ("train", "t10k"):
        ws.file(f"mnist/{prefix}-labels-idx1-ubyte", labels)
    ws.file("mnist/t10k-images-idx3-ubyte", ok_images)
    name = "mnist/train-images-idx3-ubyte" + (".gz" if gz else "")
    ws.file(name, ok_images if images is None else images)
    return 'mnist("mnist")'


def zeros_gz(size: int) -> bytes:
    """A gzip stream of `size` zero bytes, made quickly: one 64 MiB member repeated."""
    chunk = 64 << 20
    member = gzip.compress(bytes(chunk), compresslevel=9)
    return member * (size // chunk)


def npy(array: np.ndarray | None = None, header: dict | None = None, data: bytes = b"") -> bytes:
    """A .npy file of `array`, or of a hand-written `header` followed by `data`."""
    buf = io.BytesIO()
    if array is not None:
        np.save(buf, array)
    else:
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(data)
    return buf.getvalue()


def npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (no image data to speak of)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def cifar_dir(ws, labels_2) -> str:
    """A CIFAR-10 python folder of 2 images per batch, data_batch_2's labels being `labels_2`."""
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = labels_2 if name == "data_batch_2" else [0, 1]
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
        ws.file(f"cifar/{name}", pickle.dumps(batch, protocol=2))
    return 'cifar10("cifar")'


def shared_list(levels: int) -> list:
    out: list = []
    for _ in range(levels):
        out = [out, out]
    return out


def data_trial(name: str, item: int, stage, status: int = 1, says=(), memory=None, seconds=60.0):
    """A trial training digits_mlp on the data `stage(ws)` returns (a recipe call), which must fail."""
    def make(ws):
        call = stage(ws)
        return Case(train(ws.net(call)), status, says=says, memory=memory, seconds=seconds)
    return Trial(item, name, make)


def _node_data(kind: str, loader: str):
    def make(ws):
        node = ws.node(f"zero.{kind}", 1, 5)
        return Case(train(ws.net(f'{loader}("{node.name}")')), 1, says=(node.name, "character device"),
                    keep=(node,), seconds=10)
    return make


def _fifo_data(kind: str, loader: str):
    def make(ws):
        fifo = ws.fifo(f"pipe.{kind}")
        return Case(train(ws.net(f'{loader}("{fifo.name}")')), 1, says=(fifo.name, "FIFO"), keep=(fifo,), seconds=10)
    return make


def _mnist_fifo(ws):
    mnist_dir(ws)
    images = ws.path / "mnist" / "train-images-idx3-ubyte"
    images.unlink()
    os.mkfifo(images)
    return Case(train(ws.net('mnist("mnist")')), 1, says=("train-images-idx3-ubyte", "FIFO"), keep=(images,),
                seconds=10)


def _csv(ws, text: str) -> str:
    ws.file("t.csv", text)
    return 'csv("t.csv")'


def _npz(ws, **members) -> str:
    ws.file("d.npz", npz(members))
    return 'npz("d.npz")'


def _written(name: str, data: bytes, call: str):
    """A stage writing `data` to workspace/NAME, then training on `call`."""
    def stage(ws) -> str:
        ws.file(name, data)
        return call
    return stage


LABELS = npy(np.arange(10) % 10)
TRIALS = [
    Trial(3, "npz of a zero device", _node_data("npz", "npz")),
    Trial(3, "csv of a zero device", _node_data("csv", "csv")),
    Trial(3, "npz of a FIFO", _fifo_data("npz", "npz")),
    Trial(3, "csv of a FIFO", _fifo_data("csv", "csv")),
    Trial(3, "mnist images that are a FIFO", _mnist_fifo),
    data_trial("mnist .gz inflating to 3 GiB", 3,
               lambda ws: mnist_dir(ws, gzip.compress(idx(0x08, (10, 28, 28))) + zeros_gz(3 * GIB), gz=True),
               says=("trailing bytes",), memory=CAP, seconds=5),
    data_trial("mnist header claiming 3 GiB", 3,
               lambda ws: mnist_dir(ws, idx(0x08, (4_000_000, 28, 28)), gz=False), says=("memory",),
               memory=CAP, seconds=5),
    data_trial("IDX dims (2^21, 2^21, 2^22) that wrap to 0", 9,
               lambda ws: mnist_dir(ws, idx(0x08, (2**21, 2**21, 2**22))), says=("memory", "train-images"),
               memory=CAP, seconds=5),
    data_trial("IDX dims (-1, -1, 784) read signed", 9,
               lambda ws: mnist_dir(ws, idx(0x08, (2**32 - 1, 2**32 - 1, 784))), says=("memory",), memory=CAP,
               seconds=5),
    data_trial("npz header claiming 8 TiB", 3,
               lambda ws: _npz(ws, x=npy(header={"descr": "<f8", "fortran_order": False, "shape": (2**40,)},
                                         data=bytes(64)), y=LABELS),
               says=("array x", "claims shape"), memory=CAP, seconds=5),
    data_trial(".npy given as npz(...)", 9,
               _written("d.npz", npy(np.zeros((10, 64), np.float32)), 'npz("d.npz")'),
               says=("d.npz", ".npy array, not an .npz")),
    data_trial("complex features", 9,
               lambda ws: _npz(ws, x=npy(np.ones((10, 64), np.complex64)), y=LABELS), says=("complex",)),
    data_trial("NaN in npz features", 9,
               lambda ws: _npz(ws, x=npy(np.where(np.arange(640).reshape(10, 64) == 200, np.nan, 0.5)), y=LABELS),
               says=("d.npz", "example 3")),
    data_trial("1e300 in npz features (inf as float32)", 9,
               lambda ws: _npz(ws, x=npy(np.where(np.arange(640).reshape(10, 64) == 70, 1e300, 0.5)), y=LABELS),
               says=("d.npz", "example 1")),
    data_trial("CSV cell over 131,072 characters", 9,
               lambda ws: _csv(ws, "label,f\n1," + "9" * 200_000 + "\n"), says=("t.csv", "line 2")),
    data_trial("NaN in a CSV", 9, lambda ws: _csv(ws, "label,f\n1,2\n0,nan\n"), says=("t.csv", "row 3, column 2")),
    data_trial("inf in a CSV", 9, lambda ws: _csv(ws, "label,f\n1,inf\n0,1\n"), says=("t.csv", "row 2, column 2")),
    data_trial("1e400 in a CSV", 9, lambda ws: _csv(ws, "label,f\n1,2\n0,1e400\n"), says=("t.csv", "row 3")),
    data_trial("PNG of 65 bytes claiming 100000x100000", 3,
               _written("imgs/a/bomb.png", png_claiming(100_000, 100_000), 'image_folder("imgs", size=8)'),
               says=("bomb.png", "pixels"), memory=CAP, seconds=5),
    data_trial("image_folder(size=100000)", 3,
               _written("imgs/a/one.png", png_claiming(4, 4), 'image_folder("imgs", size=100000)'),
               says=("imgs", "memory"), memory=CAP, seconds=5),
    data_trial("CIFAR labels: a shared list nested 60 levels", 4,
               lambda ws: cifar_dir(ws, shared_list(60)), says=("data_batch_2", "nested"), memory=CAP, seconds=5),
    data_trial("CIFAR labels: [[1, 2]] * 20", 4,
               lambda ws: cifar_dir(ws, [[1, 2]] * 20), says=("data_batch_2", "'labels' must be a list of integers")),
    data_trial("CIFAR labels: None", 4, lambda ws: cifar_dir(ws, None),
               says=("data_batch_2", "'labels'")),
    data_trial("CIFAR: a bad label in data_batch_2", 4, lambda ws: cifar_dir(ws, [0, 12]),
               says=("data_batch_2", "label 12")),
]


# ---- checkpoints and predict inputs -------------------------------------------------------

def use(ws, verb: str, *extra) -> list:
    return [verb, MLP, "--checkpoint", ws.run_dir(), "--device", "reference", *extra]


def _sparse_weights(ws):
    argv = use(ws, "eval")
    weights = ws.path / "run" / "best" / "weights.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(6 * GIB)
    return Case(argv, 1, says=("weights.safetensors", "corrupt or truncated"), memory=CAP, seconds=5)


def _checkpoint_file_is(name: str, make_node):
    def make(ws):
        argv = use(ws, "eval")
        path = ws.path / "run" / "best" / name
        path.unlink()
        made = make_node(ws, path)
        return Case(argv, 1, says=(name, "FIFO" if made == "fifo" else "character device"), seconds=10)
    return make


def _as_zero(ws, path):
    node = ws.node("zero", 1, 5)
    path.symlink_to(node)
    return "node"


def _as_fifo(ws, path):
    os.mkfifo(path)
    return "fifo"


def _predict(array_bytes: bytes, *says, memory=None):
    def make(ws):
        argv = use(ws, "predict", "--input", ws.file("x.npy", array_bytes))
        return Case(argv, 1, says=("x.npy", *says), memory=memory, seconds=10 if memory else 60)
    return make


def _predict_fifo(name: str):
    def make(ws):
        fifo = ws.fifo(name)
        return Case(use(ws, "predict", "--input", fifo), 1, says=(name, "FIFO"), keep=(fifo,), seconds=10)
    return make


TRIALS += [
    Trial(3, "weights.safetensors a 6 GiB sparse file", _sparse_weights),
    Trial(3, "weights.safetensors symlinked to a zero device", _checkpoint_file_is("weights.safetensors", _as_zero)),
    Trial(3, "state.json symlinked to a zero device", _checkpoint_file_is("state.json", _as_zero)),
    Trial(3, "state.json a FIFO", _checkpoint_file_is("state.json", _as_fifo)),
    Trial(3, "predict: a FIFO as .npy input", _predict_fifo("x.npy")),
    Trial(3, "predict: a FIFO as image input", _predict_fifo("x.png")),
    Trial(3, "predict: .npy header claiming 64 TiB",
          _predict(npy(header={"descr": "<f4", "fortran_order": False, "shape": (2**44, 1)}, data=bytes(64)),
                   "claims shape", memory=CAP)),
    Trial(7, "predict: NaN inputs", _predict(npy(np.where(np.arange(128).reshape(2, 64) == 100, np.nan, 0.0)),
                                             "example 1")),
    Trial(9, "predict: an empty batch", _predict(npy(np.zeros((0, 64), np.float32)), "no examples")),
]
