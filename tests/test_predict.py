"""`dslc predict` feeds a model what it saw in training: a .npy read by the rule of the data call
its run was trained on (uint8 scaled to 0..1 as npz scales it; csv's numbers as they are)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dslc.runtime.data import DataError, npz
from dslc.runtime.data.tabular import scaled
from dslc.runtime.predict import read_input
from helpers import run_cli

TINY = """model tiny(classes: int = 2) {
    input image : f32[N, 16]
    input label : i64[N]

    out: logits = image |> linear(classes)

    output probs = softmax(logits)
    loss   cross_entropy(logits, label)
}

train tiny {
    data      = npz("{root}/x.npz")
    split     = validation(0.25, seed=0)
    batch     = 8
    epochs    = 2
    optimizer = adam(lr=1e-2)
}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder holding tiny.net, its uint8 images (x.npz; the same numbers as t.csv's integer
    features) and the first four of them (u8.npy)."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.net").write_text(TINY.replace("{root}", str(root)))
    y = np.arange(32) % 2
    x = (np.random.default_rng(0).integers(0, 128, (32, 16)) + 127 * y[:, None]).astype(np.uint8)
    np.savez(root / "x.npz", x=x.reshape(32, 1, 4, 4), y=y)
    rows = "".join(",".join(map(str, r)) + f",{label}\n" for r, label in zip(x, y))
    (root / "t.csv").write_text(",".join(f"f{i}" for i in range(16)) + ",label\n" + rows)
    np.save(root / "u8.npy", x[:4])
    return root


def _train(capsys, root: Path, data: str) -> str:
    """A run of tiny.net of two epochs on `data` ("x.npz" or "t.csv"): its folder's name in
    `root`, "npz" or "csv"."""
    name = data.split(".")[1]
    sets = [] if name == "npz" else ["--set", f'data=csv("{root / data}")']
    assert run_cli(capsys, "train", root / "tiny.net", "--out", root / name, "--quiet", *sets)[0] == 0
    return name


def _probabilities(capsys, root: Path, run: str, given: np.ndarray) -> np.ndarray:
    np.save(root / "given.npy", given)
    code, out, _ = run_cli(capsys, "predict", root / "tiny.net", "--checkpoint", root / run, "--input",
                           root / "given.npy", "--top", "2", "--json")
    assert code == 0
    return np.array([sorted(c["probability"] for c in row) for row in json.loads(out)])


def test_a_uint8_input_is_scaled_as_npz_scaled_the_training_data(tiny, capsys):
    u8 = np.load(tiny / "u8.npy")
    run = _train(capsys, tiny, "x.npz")
    got = _probabilities(capsys, tiny, run, u8)
    np.testing.assert_allclose(got, _probabilities(capsys, tiny, run, u8.astype(np.float32) / 255), atol=1e-6)
    assert got.min() > 0.01  # not fed 255 times the numbers it learnt on, which made it sure of all


def test_a_run_trained_on_csv_reads_integers_as_they_are(tiny, capsys):
    u8 = np.load(tiny / "u8.npy")
    run = _train(capsys, tiny, "t.csv")
    got = _probabilities(capsys, tiny, run, u8)
    np.testing.assert_allclose(got, _probabilities(capsys, tiny, run, u8.astype(np.float32)), atol=1e-6)
    assert np.abs(got - _probabilities(capsys, tiny, run, u8.astype(np.float32) / 255)).max() > 1e-3


def test_read_input_and_npz_share_one_rule(tiny):
    u8 = np.load(tiny / "u8.npy")
    np.testing.assert_array_equal(read_input(tiny / "u8.npy", (1, 4, 4), flat=True), scaled(u8).reshape(4, 1, 4, 4))
    np.testing.assert_array_equal(read_input(tiny / "u8.npy", (16,), as_is=True), u8.astype(np.float32))
    np.testing.assert_array_equal(npz(tiny / "x.npz").x[:4].reshape(4, 16), scaled(u8))
    assert scaled(np.array([0, 51, 255], np.uint8)).tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert scaled(np.array([0, 255], np.int64)).tolist() == [0, 255]  # only uint8 is pixels


def test_read_input_brings_examples_to_the_checkpoints_shape_by_trainings_rule(tmp_path):
    """As training does: a grey [H, W] gains its unit channel axis, a flat model takes any
    example of as many numbers, and channels-last images are refused, not reshaped into
    scrambled [C, H, W] ones."""
    hwc = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)
    np.save(tmp_path / "hwc.npy", hwc)
    with pytest.raises(DataError, match=r"channels-last \[H, W, C\].*np.transpose\(x, \(0, 3, 1, 2\)\)"):
        read_input(tmp_path / "hwc.npy", (3, 4, 4))
    np.save(tmp_path / "chw.npy", hwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(read_input(tmp_path / "chw.npy", (3, 4, 4)), hwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(read_input(tmp_path / "chw.npy", (3, 4, 4), flat=True), hwc.transpose(0, 3, 1, 2))
    grey = hwc[..., 0]
    np.save(tmp_path / "grey.npy", grey)
    np.testing.assert_array_equal(read_input(tmp_path / "grey.npy", (1, 4, 4)), grey[:, None])
    np.save(tmp_path / "one.npy", grey[0])
    np.testing.assert_array_equal(read_input(tmp_path / "one.npy", (1, 4, 4)), grey[:1, None])
    with pytest.raises(DataError, match=r"grey images \[H, W\]; the model reads 3 channels"):
        read_input(tmp_path / "grey.npy", (3, 4, 4))
    np.save(tmp_path / "flat.npy", grey.reshape(2, 16))
    with pytest.raises(DataError, match=r"neither one example.*reshape the examples to \[N, 1, 4, 4\]"):
        read_input(tmp_path / "flat.npy", (1, 4, 4))
