"""Transfer learning end to end: train on digits 0-4, then start from that run with the head
skipped (fresh) and the body frozen, and fine-tune on digits 5-9. The frozen weights must
come out bit-identical, the head must have learnt the new classes."""
from __future__ import annotations

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import CheckpointError, load_checkpoint
from dslc.runtime.recipes import model_and_recipe
from dslc.runtime.trainer import Options, train

pytestmark = pytest.mark.slow

MODEL = """
model mlp(hidden: int = 64, classes: int = 5) {{
    input image : f32[N, 64]
    input label : i64[N]
    body: h = image |> linear(hidden) |> relu
    head: logits = h |> linear(classes)
    metric accuracy(logits, label)
    loss cross_entropy(logits, label)
}}

train mlp as low {{
    data = digits(classes=[0, 1, 2, 3, 4])
    split = validation(0.1, test=0.2, seed=0)
    epochs = 8
    optimizer = adam(lr=3e-3)
}}

train mlp as high {{
    data = digits(classes=[5, 6, 7, 8, 9])
    split = validation(0.1, test=0.2, seed=0)
    epochs = 8
    optimizer = adam(lr=3e-3)
    init = checkpoint("{run}", skip=["head*"])
    freeze = ["body*"]
}}
"""


def test_finetune_a_frozen_body_on_new_classes(tmp_path, capsys):
    low = tmp_path / "low"
    path = tmp_path / "mlp.net"
    path.write_text(MODEL.format(run=low))
    assert main(["train", str(path), "--as", "low", "--out", str(low), "--quiet", "--test"]) == 0
    assert "test_accuracy" in capsys.readouterr().out
    model, recipe = model_and_recipe(path, "high")
    result = train(model, recipe, tmp_path / "high", quiet=True, echo=lambda _: None, options=Options(test=True))
    # a linear head on features learnt from other digits: ~0.88 (chance is 0.2)
    assert result.test.metrics["accuracy"] > 0.8

    before = load_checkpoint(low / "best").weights  # `init` reads a run's best checkpoint
    after = load_checkpoint(tmp_path / "high" / "last").weights
    for name in ("body.linear.weight", "body.linear.bias"):
        assert np.array_equal(before[name], after[name]), f"frozen {name} changed"
    assert not np.array_equal(before["head.weight"], after["head.weight"])
    state = load_checkpoint(tmp_path / "high" / "last").state
    assert state["class_names"] == ["5", "6", "7", "8", "9"]


def test_init_from_a_checkpoint_that_does_not_fit(tmp_path):
    low = tmp_path / "low"
    path = tmp_path / "mlp.net"
    path.write_text(MODEL.format(run=low))
    assert main(["train", str(path), "--as", "low", "--out", str(low), "--quiet", "--epochs", "1"]) == 0
    model, recipe = model_and_recipe(path, "high", {"hidden": 32, "init.skip": '["head*"]'})
    with pytest.raises(CheckpointError, match=r"body.linear.weight: checkpoint has shape \[64, 64\], model \[64, 32\]"):
        train(model, recipe, tmp_path / "high", quiet=True, echo=lambda _: None)
    missing = tmp_path / "nowhere"
    path.write_text(MODEL.format(run=missing))
    model, recipe = model_and_recipe(path, "high")
    with pytest.raises(CheckpointError, match="nowhere"):
        train(model, recipe, tmp_path / "high2", quiet=True, echo=lambda _: None)
