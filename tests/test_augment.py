"""Augmentations: shapes, seeded determinism, exact special cases, and bilinear resizing
against PyTorch's interpolate as an independent oracle (tolerance 1e-5, float32)."""
from __future__ import annotations

import numpy as np
import pytest

from dslc.runtime.data import Batch, Batches, Dataset, build_augment
from dslc.runtime.data.augment import (ColorJitter, Cutout, HFlip, Mixup, RandomCrop, RandomResizedCrop,
                                       resize_boxes)

X = np.random.default_rng(0).random((16, 3, 10, 12), dtype=np.float32)
# each transform with the shape it gives X
ALL = [(HFlip(0.5), X.shape), (RandomCrop(8, pad=2), (16, 3, 8, 8)), (RandomResizedCrop(6), (16, 3, 6, 6)),
       (ColorJitter(0.4, 0.4, 0.4), X.shape), (Cutout(4), X.shape)]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("t, shape", ALL, ids=[type(t).__name__ for t, _ in ALL])
def test_shapes_determinism_and_no_mutation(t, shape):
    before = X.copy()
    out = t(X, rng(5))
    assert out.shape == shape and out.dtype == np.float32
    assert np.array_equal(out, t(X, rng(5)))  # same generator state, same images
    assert not np.array_equal(out, t(X, rng(6)))
    assert np.array_equal(X, before)  # the dataset's arrays are never modified
    assert 0 <= out.min() and out.max() <= 1


def test_hflip():
    assert np.array_equal(HFlip(1.0)(X, rng()), X[..., ::-1])
    assert np.array_equal(HFlip(0.0)(X, rng()), X)
    big = np.repeat(X[:1], 2000, axis=0)
    flipped = (HFlip(0.5)(big, rng()) != big).any(axis=(1, 2, 3)).mean()
    assert 0.45 < flipped < 0.55


def test_random_crop():
    assert np.array_equal(RandomCrop(10, pad=0)(X[..., :10], rng()), X[..., :10])  # full size, no pad
    out = RandomCrop(10, pad=3)(X, rng(1))
    padded = np.pad(X, ((0, 0), (0, 0), (3, 3), (3, 3)))
    offsets = set()
    for i in range(len(X)):  # each output is one window of the zero-padded image
        found = [(t, left) for t in range(7) for left in range(9)
                 if np.array_equal(out[i], padded[i, :, t:t + 10, left:left + 10])]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 4
    with pytest.raises(ValueError):
        RandomCrop(17, pad=3)(X, rng())


def test_random_resized_crop_identity_and_range():
    square = X[..., :10]
    assert np.allclose(RandomResizedCrop(10, scale=(1, 1), ratio=(1, 1))(square, rng()), square, atol=1e-6)
    out = RandomResizedCrop(5)(square, rng(2))
    # every output pixel blends source pixels of its own image, so stays within its range
    assert np.all(out.min(axis=(1, 2, 3)) >= square.min(axis=(1, 2, 3)) - 1e-6)
    assert np.all(out.max(axis=(1, 2, 3)) <= square.max(axis=(1, 2, 3)) + 1e-6)
    # an impossible ratio falls back to the centred box of the nearest ratio
    tall = RandomResizedCrop(4, scale=(1, 1), ratio=(3, 3))._fallback(10, 12)
    assert tall == (12, 4)


def test_resize_boxes_downsample_by_two_is_a_box_mean():
    x = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
    out = resize_boxes(x, np.array([0, 0]), np.array([0, 0]), np.array([8, 8]), np.array([8, 8]), 4)
    np.testing.assert_allclose(out, x.reshape(2, 1, 4, 2, 4, 2).mean(axis=(3, 5)), atol=1e-6)


def test_resize_boxes_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    g = rng(4)
    top, left = g.integers(0, 5, 16), g.integers(0, 6, 16)
    height, width = g.integers(1, 11 - top), g.integers(1, 13 - left)
    out = resize_boxes(X, top, left, height, width, 7)
    for i in range(len(X)):
        box = torch.from_numpy(X[i:i + 1, :, top[i]:top[i] + height[i], left[i]:left[i] + width[i]].copy())
        ref = torch.nn.functional.interpolate(box, size=(7, 7), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(out[i], ref[0].numpy(), atol=1e-5)


def test_color_jitter():
    assert np.array_equal(ColorJitter()(X, rng()), X)
    dim = X * 0.5
    out = ColorJitter(brightness=0.5)(dim, rng(1))
    factor = out / np.where(dim > 0, dim, 1)
    per_image = factor.reshape(16, -1)
    assert np.allclose(per_image, per_image[:, :1], atol=1e-5)  # one factor per image
    assert np.all((per_image[:, 0] >= 0.5 - 1e-6) & (per_image[:, 0] <= 1.5 + 1e-6))
    grey = np.repeat(dim[:, :1], 3, axis=1)  # R = G = B: nothing to (de)saturate
    np.testing.assert_allclose(ColorJitter(saturation=0.9)(grey, rng()), grey, atol=1e-6)
    mid = 0.4 + 0.2 * X  # no clipping: contrast keeps each image's mean grey
    out = ColorJitter(contrast=0.5)(mid, rng(2))
    luma = lambda a: np.tensordot([0.299, 0.587, 0.114], a, axes=([0], [1])).mean(axis=(1, 2))
    np.testing.assert_allclose(luma(out), luma(mid), atol=1e-5)


def test_cutout_zeroes_one_clipped_square():
    ones = np.ones((200, 2, 9, 9), np.float32)
    out = Cutout(4)(ones, rng())
    for img in out:
        assert np.array_equal(img[0], img[1])  # the same hole in every channel
        rows, cols = np.nonzero(img[0] == 0)
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
        assert np.ptp(rows) < 4 and np.ptp(cols) < 4
    holes = (out[:, 0] == 0).sum(axis=(1, 2))
    assert holes.max() == 16 and holes.min() >= 4  # whole inside, or clipped at a corner


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_cutout_square_is_size_by_size_for_both_parities(size):
    """The hole spans rows cy - size//2 .. cy - size//2 + size - 1 (columns likewise): size x
    size where it fits (an odd size cut (size-1) x (size-1), and cutout(1) nothing), centred
    for an odd size, one row and column more above and left of the centre for an even one."""
    ones = np.ones((300, 1, 11, 11), np.float32)
    out = Cutout(size)(ones, rng(3))
    g = rng(3)
    cy, cx = g.integers(0, 11, 300), g.integers(0, 11, 300)  # the centres, drawn as Cutout draws them
    for img, y, x in zip(out[:, 0], cy, cx):
        want = np.ones((11, 11), np.float32)
        want[max(0, y - size // 2):y - size // 2 + size, max(0, x - size // 2):x - size // 2 + size] = 0
        assert np.array_equal(img, want)
    assert (out[:, 0] == 0).sum(axis=(1, 2)).max() == size * size


def test_mixup_blends_inputs_and_labels():
    y = np.arange(16)
    x, ya, yb, lam = Mixup(0.4)(X, y, rng(7))
    assert 0 < lam < 1 and np.array_equal(ya, y) and sorted(yb) == list(y)
    np.testing.assert_allclose(x, lam * X + (1 - lam) * X[yb], atol=1e-6)
    t = Batch(x, ya, yb, lam).targets(16)
    np.testing.assert_allclose(t.sum(axis=1), 1, atol=1e-6)
    same = ya == yb
    np.testing.assert_allclose(t[~same, ya[~same]], lam, atol=1e-6)
    np.testing.assert_allclose(t[~same, yb[~same]], 1 - lam, atol=1e-6)
    lams = [Mixup(0.2)(X, y, rng(s))[3] for s in range(400)]
    assert abs(np.mean(lams) - 0.5) < 0.05  # Beta(a, a) is symmetric around 1/2
    assert np.array_equal(Batch(X, y).targets(16), np.eye(16, dtype=np.float32)[y])


def test_build_augment_from_recipe_calls():
    from dslc.recipe.schema import AUGMENTATIONS
    calls = [AUGMENTATIONS["mixup"].make(alpha=0.2), AUGMENTATIONS["hflip"].make(),
             AUGMENTATIONS["random_resized_crop"].make(size=6, scale=[0.5, 1.0])]
    aug = build_augment(calls)
    assert aug.transforms == (HFlip(0.5), RandomResizedCrop(6, (0.5, 1.0))) and aug.mixup == Mixup(0.2)
    batch = aug(X, np.arange(16), rng())
    assert batch.x.shape == (16, 3, 6, 6) and batch.y_b is not None
    assert build_augment([("cutout", {"size": 3})])(X, np.arange(16), rng()).y_b is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment([("rotate", {})])
    with pytest.raises(ValueError, match="needs images"):
        HFlip()(X.reshape(16, -1), rng())


def test_augmented_batches_are_reproducible():
    ds = Dataset(X, np.arange(16) % 4, 4, "x")
    aug = build_augment([("random_crop", {"size": 8, "pad": 1}), ("hflip", {}), ("mixup", {"alpha": 1.0})])
    run = lambda: [(b.x, b.y_b, b.lam) for b in Batches(ds, 5, seed=2, augment=aug)]
    first, second = run(), run()
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
               for a, b in zip(first, second))
    assert [len(b[0]) for b in first] == [5, 5, 5, 1]
