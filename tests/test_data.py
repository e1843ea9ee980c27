"""The data layer: every loader on small files in their real formats, written here, and every
way a file can be unusable (each a DataError naming the file); splits, batches, normalisation."""
from __future__ import annotations

import gzip
import json
import pickle
import struct
import threading
import warnings

import numpy as np
import pytest

from dslc.runtime.data import (Batch, Batches, DataError, Dataset, cifar10, cifar100, csv, digits,
                               fashion_mnist, holdout, image_folder, load, mnist, normalize, npz,
                               partition, split)

RNG = np.random.default_rng(1234)


# ---- writers of the real formats ----------------------------------------------------

def idx_bytes(a: np.ndarray) -> bytes:
    """IDX: 0, 0, type 0x08 (ubyte), ndim, then big-endian int32 dims, then the bytes."""
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def write(path, raw: bytes, gz: bool = False):
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def mnist_dir(folder, gz=False, n=(5, 3), size=(28, 28)):
    """Four IDX files with random images and labels; returns {prefix: (images, labels)}."""
    folder.mkdir(exist_ok=True)
    arrays = {}
    for prefix, count in zip(("train", "t10k"), n):
        x = RNG.integers(0, 256, (count, *size), dtype=np.uint8)
        y = RNG.integers(0, 10, count, dtype=np.uint8)
        write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(x), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(y), gz)
        arrays[prefix] = (x, y)
    return arrays


def cifar_records(n: int, label_bytes: int, classes: int):
    x = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = RNG.integers(0, classes, (n, label_bytes), dtype=np.uint8)
    return x, labels, np.concatenate([labels, x.reshape(n, -1)], axis=1).tobytes()


def cifar10_bin(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x, labels, raw = cifar_records(n, 1, 10)
        (folder / name).write_bytes(raw)
        parts.append((x, labels[:, 0]))
    return parts


# ---- digits -------------------------------------------------------------------------

def test_digits_shipped_with_dslc():
    ds = digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.classes == 10 and ds.class_names == tuple("0123456789")
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert np.allclose(ds.x * 16, np.round(ds.x * 16))  # pixels were counts 0..16
    counts = np.bincount(ds.y, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 170 and counts.max() <= 190
    # a zero and a one really differ: the mean 0 has an empty centre, the mean 1 an inked one
    mean = [ds.x[ds.y == d, 0].mean(axis=0) for d in (0, 1)]
    assert mean[0][3:5, 3:5].mean() < 0.2 < mean[1][3:5, 3:5].mean()
    train, test = load("digits", {})
    assert np.array_equal(train.x, ds.x) and test is None


def test_digits_holdout_split_is_fixed():
    train, test = holdout(digits(), 0.2, seed=0)
    assert (len(train), len(test)) == (1438, 359)
    again = holdout(digits(), 0.2, seed=0)[1]
    assert np.array_equal(test.y, again.y) and np.array_equal(test.x, again.x)
    assert np.bincount(test.y, minlength=10).min() >= 20  # every class is tested


# ---- MNIST (IDX) --------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    arrays = mnist_dir(tmp_path / "mnist", gz)
    train, test = mnist(tmp_path / "mnist")
    for ds, (x, y) in ((train, arrays["train"]), (test, arrays["t10k"])):
        assert ds.x.shape == (len(x), 1, 28, 28) and ds.x.dtype == np.float32
        np.testing.assert_allclose(ds.x[:, 0] * 255, x, atol=1e-4)
        assert np.array_equal(ds.y, y) and ds.classes == 10
    assert (train.name, test.name) == ("mnist", "mnist-test")
    via_load = load("mnist", {"dir": "mnist"}, root=tmp_path)
    assert np.array_equal(via_load[1].x, test.x)


def test_fashion_mnist_names_its_classes(tmp_path):
    mnist_dir(tmp_path)
    train, _ = fashion_mnist(tmp_path)
    assert train.name == "fashion_mnist" and train.class_names[9] == "Ankle boot"


def _fails(call, *words):
    with pytest.raises(DataError) as e:
        call()
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    return e.value


def test_idx_failures_name_the_file(tmp_path):
    mnist_dir(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-100])
    assert _fails(lambda: mnist(tmp_path), "truncated", str(images)).path == str(images)
    images.write_bytes(b"\x00\x00\x99\x03" + good[4:])
    _fails(lambda: mnist(tmp_path), "bad magic number", str(images))
    images.write_bytes(bytes([0, 0, 8, 1]) + good[4:])  # a labels file's magic on images
    _fails(lambda: mnist(tmp_path), "idx3", str(images))
    images.write_bytes(good + b"\x00")
    _fails(lambda: mnist(tmp_path), "trailing bytes", str(images))
    images.write_bytes(good)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(4, np.uint8)))  # 5 images, 4 labels
    _fails(lambda: mnist(tmp_path), "5 images", "4 labels")
    labels.write_bytes(idx_bytes(np.full(5, 10, np.uint8)))
    _fails(lambda: mnist(tmp_path), "label 10 out of range for 10 classes", str(labels))
    labels.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    # float images (IDX type 0x0D) holding an infinity: the images file is named, not the labels'
    pixels = np.zeros((5, 28, 28), ">f4")
    pixels[2, 3, 4] = np.inf
    images.write_bytes(bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 5, 28, 28) + pixels.tobytes())
    assert _fails(lambda: mnist(tmp_path), "example 2", "not a finite float32 number").path == str(images)


def test_idx_gzip_and_missing_failures(tmp_path):
    mnist_dir(tmp_path, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    good = labels.read_bytes()
    labels.write_bytes(b"this is not gzip at all")
    _fails(lambda: mnist(tmp_path), "corrupt or truncated gzip", str(labels))
    labels.write_bytes(good[: len(good) // 2])
    _fails(lambda: mnist(tmp_path), "gzip", str(labels))
    labels.unlink()
    _fails(lambda: mnist(tmp_path), "missing file", "t10k-labels-idx1-ubyte")
    _fails(lambda: mnist(tmp_path / "nowhere"), "no such directory", "nowhere")
    (tmp_path / "afile").write_text("x")
    _fails(lambda: mnist(tmp_path / "afile"), "not a directory")


def test_idx_empty_file_is_an_error(tmp_path):
    mnist_dir(tmp_path, n=(0, 3))
    _fails(lambda: mnist(tmp_path), "no examples")


# ---- CIFAR --------------------------------------------------------------------------

def test_cifar10_binary(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"  # the folder the official archive extracts to
    parts = cifar10_bin(folder)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    train, test = cifar10(tmp_path)
    assert train.x.shape == (10, 3, 32, 32) and test.x.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(train.x * 255, np.concatenate([p[0] for p in parts[:5]]), atol=1e-4)
    assert np.array_equal(test.y, parts[5][1]) and train.class_names[3] == "class3"
    assert cifar10(folder)[0].x.shape == train.x.shape  # the extracted folder itself works too


def test_cifar100_binary_fine_and_coarse(tmp_path):
    parts = {}
    for name in ("train", "test"):
        x, labels, raw = cifar_records(3, 2, 20)
        (tmp_path / f"{name}.bin").write_bytes(raw)
        parts[name] = (x, labels)
    train, test = cifar100(tmp_path)
    assert train.classes == 100 and np.array_equal(train.y, parts["train"][1][:, 1])  # fine = 2nd byte
    np.testing.assert_allclose(test.x * 255, parts["test"][0], atol=1e-4)
    coarse, _ = load("cifar100", {"dir": str(tmp_path), "labels": "coarse"})
    assert coarse.classes == 20 and np.array_equal(coarse.y, parts["train"][1][:, 0])


def test_cifar_binary_failures(tmp_path):
    cifar10_bin(tmp_path)
    batch = tmp_path / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-7])
    _fails(lambda: cifar10(tmp_path), "truncated", str(batch))
    batch.unlink()
    _fails(lambda: cifar10(tmp_path), "missing file", "data_batch_3.bin")
    (tmp_path / "empty").mkdir()
    _fails(lambda: cifar10(tmp_path / "empty"), "no CIFAR files", "data_batch_1.bin")
    _fails(lambda: cifar100(tmp_path), "no CIFAR files", "train.bin")


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_python_version(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = RNG.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, 2)]
        (folder / name).write_bytes(pickle.dumps({b"data": x, b"labels": labels, b"batch_label": b"x"},
                                                 protocol=protocol))
        expected.append((x, labels))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"n{i}" for i in range(10)]}, 2))
    train, test = cifar10(tmp_path)
    np.testing.assert_allclose(train.x.reshape(10, -1) * 255, np.concatenate([e[0] for e in expected[:5]]),
                               atol=1e-4)
    assert test.y.tolist() == expected[5][1] and train.class_names[0] == "n0"


def test_cifar100_python_version(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 3), ("test", 2)):
        batch = {"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": list(range(97, 97 + n)), "coarse_labels": [19] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    train, test = cifar100(tmp_path)
    assert train.y.tolist() == [97, 98, 99] and test.x.shape == (2, 3, 32, 32) and train.class_names is None
    assert cifar100(tmp_path, "coarse")[1].y.tolist() == [19, 19]


def _cifar10_py(folder, test_batch=None, meta=None):
    """The python version of CIFAR-10 in `folder`, two images a batch; `test_batch` and
    `meta` replace test_batch's and batches.meta's dicts."""
    folder.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(test_batch if name == "test_batch" and test_batch else batch, 2))
    if meta is not None:
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, 2))


def test_cifar_python_labels_beyond_int64_are_refused(tmp_path):
    # the cast to int64 was an OverflowError traceback, or wrapped 2**63 + 5 to a negative label
    for labels in ([0, 2 ** 70], np.array([0, 2 ** 63 + 5], np.uint64)):
        _cifar10_py(tmp_path, {"data": np.zeros((2, 3072), np.uint8), "labels": labels})
        _fails(lambda: cifar10(tmp_path), f"label {int(labels[1])} in 'labels' is beyond int64's range",
               "test_batch")


def test_a_cifar_file_of_no_images_is_said_to_hold_none(tmp_path):
    """A batch of no images was refused as an unsafe pickle (protocol 2 writes its empty data
    as __builtin__.bytes(), which the unpickler did not know), and an empty binary file as
    "0 bytes is not a whole number of 3073-byte records", which it is."""
    _cifar10_py(tmp_path / "py", {"data": np.zeros((0, 3072), np.uint8), "labels": []})
    _fails(lambda: cifar10(tmp_path / "py"), "a batch of no images (data is [0, 3072])", "test_batch")
    cifar10_bin(tmp_path / "bin")
    (tmp_path / "bin" / "test_batch.bin").write_bytes(b"")
    _fails(lambda: cifar10(tmp_path / "bin"), "an empty file, no images (a CIFAR binary file holds a 3073-byte",
           "test_batch.bin")
    for pickled in (b"\x80\x02c__builtin__\nbytes\nK\x05\x85R.", b"\x80\x03cbuiltins\nbytes\nJ\x00\xca\x9a;\x85R."):
        (tmp_path / "py" / "test_batch").write_bytes(pickled)  # bytes(5), bytes(10**9): refused, not allocated
        _fails(lambda: cifar10(tmp_path / "py"), "only bytes() of nothing is allowed", "test_batch")


def test_cifar_python_meta_without_a_list_of_names_is_ignored(tmp_path):
    # label_names of 5, of an array or of undecodable bytes was a TypeError/ValueError/UnicodeDecodeError
    for names in (5, 1.5, np.arange(10), [None] * 10):
        _cifar10_py(tmp_path, meta={"label_names": names})
        assert cifar10(tmp_path)[0].class_names is None
    _cifar10_py(tmp_path, meta={"label_names": [b"\xffcat"] + [b"x"] * 9})
    assert cifar10(tmp_path)[0].class_names[0] == "\ufffdcat"


class _Evil:
    """Unpickling this with the plain pickle module would create the file `target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


def test_cifar_python_loading_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0]}))
    _fails(lambda: cifar10(tmp_path), "refused global", "data_batch_1")
    assert not marker.exists()
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8)})[:-20])
    _fails(lambda: cifar10(tmp_path), "truncated pickle")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": np.array([[1, "a"]], dtype=object)}))
    _fails(lambda: cifar10(tmp_path), "numeric dtypes")


# ---- npz, csv, image folders --------------------------------------------------------

def test_npz(tmp_path):
    x = RNG.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(6) % 3)
    ds = npz(tmp_path / "a.npz")
    assert ds.classes == 3 and ds.name == "a"
    np.testing.assert_allclose(ds.x * 255, x, atol=1e-4)  # uint8 pixels scaled to 0..1
    feats = RNG.normal(size=(4, 3)) * 100
    np.savez_compressed(tmp_path / "b.npz", inputs=feats, target=np.array([0.0, 1.0, 1.0, 0.0]))
    ds = load("npz", {"path": "b.npz", "x": "inputs", "y": "target"}, root=tmp_path)[0]
    np.testing.assert_allclose(ds.x, feats.astype(np.float32))
    assert ds.y.dtype == np.int64 and ds.y.tolist() == [0, 1, 1, 0]


def test_npz_failures(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(2))
    _fails(lambda: npz(path), "3 examples but 2 labels", str(path))
    np.savez(path, x=np.zeros((3, 2)))
    _fails(lambda: npz(path), "no array named y", str(path))
    np.savez(path, x=np.zeros((3, 2)), y=np.array([0, 0.5, 1]))
    _fails(lambda: npz(path), "whole numbers")
    np.savez(path, x=np.zeros((3, 2)), y=np.array([0, -1, 1]))
    _fails(lambda: npz(path), ">= 0")
    np.savez(path, x=np.zeros((0, 2)), y=np.zeros(0))
    _fails(lambda: npz(path), "no examples")
    np.savez(path, x=np.array([[1, "a"]], dtype=object), y=np.zeros(1))
    _fails(lambda: npz(path), str(path))
    path.write_bytes(b"PK\x03\x04 garbage")
    _fails(lambda: npz(path), "not a readable .npz", str(path))
    _fails(lambda: npz(tmp_path / "none.npz"), "no such file", "none.npz")


def test_csv(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text("a, b ,species,c\n1,2,setosa,3\n4.5,-5,virginica,6e1\n\n7,8,setosa,9\n")
    ds = csv(path, label="species")
    assert ds.x.shape == (3, 3) and ds.class_names == ("setosa", "virginica")
    np.testing.assert_array_equal(ds.x, [[1, 2, 3], [4.5, -5, 60], [7, 8, 9]])
    assert ds.y.tolist() == [0, 1, 0]
    by_index = csv(path, label=2)
    assert np.array_equal(by_index.y, ds.y)
    path.write_text("label,f\n2,0.5\n0,1\n")
    ds = load("csv", {"path": str(path)})[0]
    assert ds.y.tolist() == [2, 0] and ds.classes == 3 and ds.class_names is None


def test_csv_failures(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,f\n1,2\n0,x\n")
    _fails(lambda: csv(path), "row 3, column 2 ('f'): not a number", str(path))
    path.write_text("label,f\n1,2\n0\n")
    _fails(lambda: csv(path), "row 3 has 1 fields")
    path.write_text("label,f\n")
    _fails(lambda: csv(path), "only a header")
    path.write_text("")
    _fails(lambda: csv(path), "empty file")
    path.write_text("y,f\n1,2\n")
    _fails(lambda: csv(path), "no label column 'label'", "y, f")
    path.write_bytes(b"label,f\n\xff\xfe,1\n")
    _fails(lambda: csv(path), "not UTF-8")
    path.write_text("label,f,label\n1,2,1\n")  # the second label column was read as a feature
    _fails(lambda: csv(path), "names the label column 'label' more than once (columns 0, 2, from 0)")
    path.write_text("a,y,y\n1,2.5,2.5\n")
    _fails(lambda: csv(path, target=["y"]), "names the target column 'y' more than once")
    for big in ("99999999999999999999", "-1e300"):  # cast to int64 they were -2**63: 'must be >= 0, found -922...'
        path.write_text(f"label,f\n1,2\n{big},3\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NumPy's 'invalid value encountered in cast' came first
            _fails(lambda: csv(path), "row 3, column 1 ('label'): a label beyond int64's range")


def test_csv_rows_are_named_by_the_file_line_they_start_on(tmp_path):
    path = tmp_path / "blank.csv"
    rows = ["a,b", "0,0", "1,1", "2,2", "", ""] + [f"{i},{i}" for i in range(15)]  # blank lines 5 and 6
    for last, message in (("1,abc", "row 22, column 2 ('b'): not a number"), ("1", "row 22 has 1 fields"),
                          ("1,1e39", "row 22, column 2 ('b'): not a finite float32")):
        path.write_text("\n".join([*rows, last]) + "\n")
        _fails(lambda: csv(path, label="a"), message)
    path.write_text('label,f\n"two\nlines",1\n0,x\n')  # a quoted field carries row 2 over line 3
    _fails(lambda: csv(path), "row 4, column 2 ('f'): not a number")
    path.write_text('label,f\n0,1\n"two\nlines"\n')
    _fails(lambda: csv(path), "row 3 has 1 fields")


def test_image_folder_png_and_jpeg(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pixels = {}
    for cls, fmt in (("cat", "PNG"), ("dog", "JPEG")):
        (tmp_path / cls).mkdir()
        for i in range(2):
            a = RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.{fmt.lower()}", fmt, quality=95)
            pixels[cls, i] = a
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = image_folder(tmp_path, size=6)
    assert ds.x.shape == (4, 3, 6, 6) and ds.class_names == ("cat", "dog") and ds.y.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(ds.x[1].transpose(1, 2, 0) * 255, pixels["cat", 1], atol=1e-3)  # PNG: lossless
    with Image.open(tmp_path / "dog" / "0.jpeg") as jpeg:  # lossy: compare with Pillow's own decoding
        np.testing.assert_allclose(ds.x[2].transpose(1, 2, 0) * 255, np.asarray(jpeg), atol=1e-3)
    small = load("image_folder", {"dir": str(tmp_path), "size": 3})[0]
    assert small.x.shape == (4, 3, 3, 3) and 0 <= small.x.min() and small.x.max() <= 1


def test_image_folder_failures(tmp_path):
    pytest.importorskip("PIL")
    _fails(lambda: image_folder(tmp_path, 4), "no class sub-folders")
    (tmp_path / "a").mkdir()
    _fails(lambda: image_folder(tmp_path, 4), "no image in this class folder", "*.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _fails(lambda: image_folder(tmp_path, 4), "not a readable image", "broken.png")


def png16(path, samples: np.ndarray) -> None:
    """A 16-bit PNG of grey [H, W] or RGB [H, W, 3] samples, written by hand: Pillow writes
    16-bit grey but not 48-bit colour."""
    import zlib

    h, w = samples.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)  # filter 0 on each row
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", w, h, 16, 0 if samples.ndim == 2 else 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_image_folder_reads_every_suffix_and_sub_folders_in_torchvisions_order(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from dslc.runtime.data.images import IMAGE_SUFFIXES
    from dslc.runtime.predict import IMAGE_SUFFIXES as PREDICT_READS

    assert PREDICT_READS is IMAGE_SUFFIXES  # what predict takes, training reads
    value = iter(range(10, 250, 5))  # each image one grey value, to tell which was read where

    def save(path, fmt="PNG"):
        path.parent.mkdir(parents=True, exist_ok=True)
        v = next(value)
        Image.fromarray(np.full((5, 5, 3), v, np.uint8)).save(path, fmt, lossless=True)
        return v
    order = {cls: [save(tmp_path / cls / f"{i}.{fmt.lower()}", fmt) for i in range(2)]
             for cls, fmt in (("cat", "PNG"), ("dog", "BMP"), ("fox", "WEBP"), ("gnu", "GIF"), ("hen", "TIFF"),
                              ("ibis", "PPM"), ("jay", "JPEG"))}
    # torchvision sorts folders by path ("a" < "a-b" < "a/c"), then each folder's names
    x, y, z = (save(tmp_path / "cat" / "a" / "c" / "x.png"), save(tmp_path / "cat" / "a-b" / "y.tif", "TIFF"),
               save(tmp_path / "cat" / "a" / "z.png"))
    order["cat"] += [save(tmp_path / "cat" / "2.PNG"), z, y, x]  # not a depth-first walk's z, x, y
    for skipped in ("notes.txt", ".DS_Store", "._0.png", ".hidden/0.png"):  # not images, or hidden
        (tmp_path / "cat" / skipped).parent.mkdir(exist_ok=True)
        (tmp_path / "cat" / skipped).write_bytes(b"junk")
    ds = image_folder(tmp_path, size=5)
    assert ds.class_names == ("cat", "dog", "fox", "gnu", "hen", "ibis", "jay")
    assert np.bincount(ds.y).tolist() == [6, 2, 2, 2, 2, 2, 2]
    exact = ds.y != 6  # JPEG is lossy
    want = np.array([v for vs in order.values() for v in vs], np.float32) / 255
    np.testing.assert_allclose(ds.x[exact][:, 1, 2, 2], want[exact], atol=1e-6)


def test_image_folder_class_without_images_is_an_error_naming_it(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "cat" / "0.png")
    (tmp_path / "dog" / "sub").mkdir(parents=True)
    (tmp_path / "dog" / "sub" / "notes.txt").write_text("no image here")
    (tmp_path / "emu").mkdir()
    e = _fails(lambda: image_folder(tmp_path, 4), "no image in this class folder or its sub-folders (nor in emu)",
               "*.webp")
    assert e.path == str(tmp_path / "dog")


def test_image_folder_follows_folder_links_but_not_round_loops_and_is_bounded(tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    from dslc.runtime.data import images

    root, extra = tmp_path / "data", tmp_path / "extra"
    for folder in (root / "cat", root / "dog", extra):
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(folder / "0.png")
    (root / "cat" / "self").symlink_to(root / "cat", target_is_directory=True)  # loops: not followed
    (root / "cat" / "up").symlink_to(root, target_is_directory=True)
    (root / "dog" / "more").symlink_to(extra, target_is_directory=True)  # followed
    ds = image_folder(root, 2)
    assert np.bincount(ds.y).tolist() == [1, 2]
    monkeypatch.setattr(images, "MAX_ENTRIES", 5)  # cat: 0.png self up; dog: 0.png more more/0.png
    _fails(lambda: image_folder(root, 2), "more than 5 files and folders under the class folders", str(root))
    monkeypatch.undo()
    (root / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link is named, not dropped
    _fails(lambda: image_folder(root, 2), "no such file", "gone.png")


def test_sixteen_bit_images_are_scaled_by_their_range_not_clipped(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from dslc.runtime.data.images import decode_pixels
    from dslc.runtime.predict import read_input

    grey = np.full((4, 4), 25700, np.uint16)  # 25700 / 65535 = 0.392, which clipping made 1.0
    grey[0, :2] = 65535, 1
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "g.pgm").write_bytes(b"P5 4 4 65535\n" + grey.astype(">u2").tobytes())  # Pillow mode I
    Image.fromarray(grey).save(tmp_path / "a" / "g.png")  # mode I;16
    Image.fromarray(grey).save(tmp_path / "a" / "g.tif")
    colour = np.stack([grey, grey // 2, grey // 4], axis=-1)
    png16(tmp_path / "a" / "rgb.png", colour)  # Pillow decodes 48-bit PNGs to 8 bits a sample
    ds = image_folder(tmp_path, 4)
    np.testing.assert_allclose(ds.x[:3], np.broadcast_to(grey / 65535, (3, 3, 4, 4)), rtol=1e-6)
    np.testing.assert_allclose(ds.x[3], colour.transpose(2, 0, 1) / 65535, atol=1 / 255)
    assert ds.x[3, 0, 1, 1] > 0.38  # not clipped to 1, not taken as 8-bit
    uniform = tmp_path / "u.png"
    Image.fromarray(np.full((6, 6), 25700, np.uint16)).save(uniform)
    np.testing.assert_allclose(decode_pixels(uniform, "L", (3, 3)), 25700 / 65535, rtol=1e-6)
    np.testing.assert_allclose(read_input(uniform, (3, 2, 2)), 25700 / 65535, rtol=1e-6)  # predict --input
    np.testing.assert_allclose(read_input(tmp_path / "a" / "g.png", (1, 4, 4))[0, 0], grey / 65535, rtol=1e-6)
    Image.fromarray(grey.astype(np.int32) * 1000).save(tmp_path / "i32.tif")  # no range: refused
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "f.tif")
    _fails(lambda: decode_pixels(tmp_path / "i32.tif", "RGB", None), "i32.tif", "32-bit integer pixels")
    _fails(lambda: read_input(tmp_path / "f.tif", (1, 4, 4)), "f.tif", "floating-point pixels (Pillow mode F)")


def test_an_image_over_pillows_limit_is_refused_without_pillows_warning(tmp_path, monkeypatch):
    """An image of more pixels than Pillow's limit (and less than twice it, where Pillow only
    warns) is dslc's one-line DataError naming the file and the limit, without Pillow's
    DecompressionBombWarning printed before it."""
    import warnings
    Image = pytest.importorskip("PIL.Image")
    from dslc.runtime.data.images import decode_pixels

    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: between the limit and twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fails(lambda: decode_pixels(tmp_path / "big.png", "L", None), "big.png", "more than Pillow's limit of 100")


def test_load_rejects_unknown_calls():
    _fails(lambda: load("imagenet", {}), "unknown dataset 'imagenet'")
    _fails(lambda: load("mnist", {}), "needs the argument(s) dir")


# ---- splits -------------------------------------------------------------------------

def toy(n: int = 103) -> Dataset:
    """Example i has input [i] and label i % 4, so every example can be recognised."""
    return Dataset(np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 4, 4, "toy")


def test_split_is_seeded_and_disjoint():
    a, b = split(toy(), 0.2, seed=7)
    assert (len(a), len(b)) == (82, 21)
    ids = np.concatenate([a.x[:, 0], b.x[:, 0]])
    assert sorted(ids.tolist()) == list(range(103))
    again = split(toy(), 0.2, seed=7)
    assert np.array_equal(again[1].x, b.x) and not np.array_equal(split(toy(), 0.2, seed=8)[1].x, b.x)
    assert np.array_equal(a.y, a.x[:, 0].astype(int) % 4)  # labels follow their examples
    with pytest.raises(DataError):
        split(toy(3), 0.1)


def test_partition_follows_the_recipe():
    train, val, test = partition(toy(), None, 0.1, test_fraction=0.2, seed=0)
    assert (len(train), len(val), len(test)) == (72, 10, 21)
    assert np.array_equal(test.x, holdout(toy(), 0.2, 0)[1].x)  # the test split ignores `fraction`
    assert np.array_equal(partition(toy(), None, 0.3, 0.2, 0)[2].x, test.x)
    shipped = toy(7)
    train, val, test = partition(toy(), shipped, 0.1, test_fraction=0.2)
    assert test is shipped and len(train) + len(val) == 103
    assert partition(toy(), None, 0.0)[1:] == (None, None)


# ---- batches ------------------------------------------------------------------------

def ids(batches) -> list[list[int]]:
    return [b.x[:, 0].astype(int).tolist() for b in batches]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_cover_each_example_once_per_epoch(prefetch):
    b = Batches(toy(), 10, seed=3, prefetch=prefetch)
    first, second = ids(b), ids(b)
    assert len(b) == 11 and [len(x) for x in first] == [10] * 10 + [3] and b.epoch == 2
    for epoch in (first, second):
        assert sorted(sum(epoch, [])) == list(range(103))
    assert first != second  # reshuffled each epoch
    assert ids(Batches(toy(), 10, seed=3, prefetch=2 - prefetch)) == first  # the thread changes nothing
    dropped = ids(Batches(toy(), 10, seed=3, drop_last=True))
    assert len(dropped) == 10 and all(len(x) == 10 for x in dropped)
    assert sum(ids(Batches(toy(), 10, shuffle=False)), []) == list(range(103))


def _flip_some(x, y, rng):
    """A random augmentation, so resuming must also reproduce the augmentation draws."""
    return Batch(x * rng.choice([-1, 1], size=(len(x), 1)).astype(np.float32), y)


def test_saved_state_reproduces_the_stream():
    b = Batches(toy(), 8, seed=11, augment=_flip_some)
    ids(b)
    saved = json.loads(json.dumps(b.state()))  # it survives a JSON checkpoint
    expected = [ids(b) for _ in range(2)]
    resumed = Batches(toy(), 8, seed=999, augment=_flip_some)
    resumed.restore(saved)
    assert [ids(resumed) for _ in range(2)] == expected and resumed.epoch == 3
    # from the middle of an epoch: the rest of the same epoch, then the same next one
    it = iter(b)
    taken = [next(it).x[:, 0].tolist() for _ in range(4)]
    mid = b.state()
    rest = [x.x[:, 0].tolist() for x in it]
    nxt = ids(b)
    again = Batches(toy(), 8, augment=_flip_some)
    again.restore(mid)
    assert [x.x[:, 0].tolist() for x in again] == rest and ids(again) == nxt and len(taken) + len(rest) == 13
    with pytest.raises(ValueError):
        Batches(toy(), 9).restore(mid)


def test_prefetch_thread_reraises_and_stops():
    def broken(x, y, rng):
        broken.calls += 1
        if broken.calls == 3:
            raise RuntimeError("augmentation failed")
        return Batch(x, y)
    broken.calls = 0
    b = Batches(toy(), 10, augment=broken, prefetch=2)
    got = []
    with pytest.raises(RuntimeError, match="augmentation failed"):
        for batch in b:
            got.append(batch)
    assert len(got) == 2
    it = iter(Batches(toy(), 10, prefetch=3))
    next(it)
    it.close()  # leaving early stops the producer
    assert not [t for t in threading.enumerate() if t.name == "dslc-batches"]


def test_batches_apply_transform_after_augment():
    b = Batches(toy(), 50, augment=lambda x, y, rng: Batch(x + 1, y), transform=lambda x: x * 2)
    assert sorted(sum(ids(b), [])) == [2 * (i + 1) for i in range(103)]


# ---- normalisation ------------------------------------------------------------------

def test_per_channel_statistics():
    x = (RNG.normal(size=(600, 3, 4, 5)) * [[[[2.0]], [[0.5]], [[1.0]]]] + [[[[1.0]], [[-3.0]], [[0.0]]]])
    x = x.astype(np.float32)
    stats = json.loads(json.dumps(normalize.fit(x, "per_channel")))
    np.testing.assert_allclose(stats["mean"], x.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["std"], x.std(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6)
    z = normalize.apply(x, stats)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    tab = np.stack([np.linspace(0, 1, 9), np.full(9, 7.0)], axis=1)  # a constant feature
    z = normalize.apply(tab, normalize.fit(tab))
    np.testing.assert_allclose(z[:, 1], 0)
    np.testing.assert_allclose(z[:, 0].std(), 1, rtol=1e-6)


def test_mean_image_and_none():
    x = RNG.random((50, 1, 3, 3), dtype=np.float32)
    stats = normalize.fit(x, "mean_image")
    np.testing.assert_allclose(np.array(stats["mean"]), x.mean(axis=0), atol=1e-7)
    np.testing.assert_allclose(normalize.apply(x, stats).mean(axis=0), 0, atol=1e-6)
    assert np.array_equal(normalize.apply(x, normalize.fit(x, "none")), x)
    with pytest.raises(ValueError):
        normalize.apply(x[:, :, :2], stats)
    with pytest.raises(ValueError):
        normalize.fit(x, "whiten")
