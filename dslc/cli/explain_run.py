"""The bodies of `dslc explain METHOD` (flags in explain_verbs.py): load and compile the model,
read the examples, call dslc/explain, draw the picture, print the report."""
from __future__ import annotations

import math
import os

import numpy as np

from dslc.cli.common import checkpoint_files, checkpoint_sets
from dslc.diagnostics import UsageError
from dslc.explain import adversarial, features, gradients, objectives, occlusion, optimise
from dslc.explain.images import Tile, stretch, to_json, write_grid, write_npy, write_scatter
from dslc.explain.subject import Subject, open_subject
from dslc.files import output_is_not


def _subject(args) -> Subject:
    reads = [args.file] + [getattr(args, k, None) for k in ("image", "input", "style_image", "style_input")]
    reads += checkpoint_files(args.checkpoint)  # --npy runs/a/best/weights.safetensors replaced the weights
    for flag, out in (("-o", args.output), ("--npy", args.npy)):
        output_is_not(out, *[r for r in reads if r], flag=flag)
    # by path, not by spelling: `--npy ./x.png -o x.png` wrote the figure over the numbers
    if args.npy is not None and os.path.abspath(args.npy) == os.path.abspath(args.output):
        raise UsageError(f"--npy {args.npy} and -o {args.output} name the same file")
    sets = checkpoint_sets(args, recipe=hasattr(args, "split"))  # the methods that read a split use its recipe
    return open_subject(args.file, args.checkpoint, args.device, args.model, sets, args.force, args.quiet)


def _examples(s: Subject, args):
    return s.examples(args.image, args.input, args.index, args.split, args.as_name)


def _class(s: Subject, text: str) -> int:
    """A class given by number or by name."""
    if text in s.class_names:
        return s.class_names.index(text)
    try:
        k = int(text)
    except ValueError:
        k = -1
    if not 0 <= k < len(s.class_names):
        raise UsageError(f"--class/--target {text!r}: the classes are 0..{len(s.class_names) - 1}"
                         + (f" ({', '.join(s.class_names[:12])}{' ...' if len(s.class_names) > 12 else ''})"))
    return k


def _classes(s: Subject, args, x: np.ndarray) -> np.ndarray:
    """--class for every example, else each example's predicted class."""
    if getattr(args, "cls", None) is not None:
        return np.full(len(x), _class(s, args.cls))
    return s.scores(x).argmax(axis=1)


def _finish(args, report: dict, numbers: np.ndarray | None, rows, title: str) -> int:
    write_grid(rows, args.output, title)
    if args.npy is not None and numbers is not None:
        write_npy(args.npy, numbers)
    print(to_json(report) if args.json else f"wrote {args.output}" + (f" and {args.npy}" if args.npy else ""))
    return 0


def _map_rows(s, x, names, classes, maps, what: str, cmap: str, vmin=None, vmax=None):
    return [[Tile(xi, f"{name}: {s.class_names[c]}"), Tile(m, what, cmap, vmin, vmax)]
            for xi, name, c, m in zip(x, names, classes, maps)]


def cmd_saliency(args) -> int:
    s = _subject(args)
    x, _, names = _examples(s, args)
    classes = _classes(s, args, x)
    maps = gradients.saliency(s, x, classes, args.guided)
    what = "guided backprop" if args.guided else "saliency"
    report = {"classes": [s.class_names[c] for c in classes], "ink_share": gradients.ink_share(x, maps).tolist()}
    return _finish(args, report, maps, _map_rows(s, x, names, classes, maps, what, "hot"),
                   f"{s.model.name}: {what} of the class score")


def cmd_occlusion(args) -> int:
    if args.stride > args.patch:  # the pixels between two patches would be covered by none: a NaN map
        raise UsageError(f"--stride {args.stride} is larger than --patch {args.patch}: the pixels between "
                         "patches would never be occluded; take a stride of at most the patch")
    s = _subject(args)
    x, _, names = _examples(s, args)
    classes = _classes(s, args, x)
    maps = occlusion.occlusion(s, x, classes, args.patch, args.stride)
    report = {"classes": [s.class_names[c] for c in classes], "probability": s.probs(x)[np.arange(len(x)), classes],
              "lowest": maps.min(axis=(1, 2)), "patch": args.patch, "stride": args.stride}
    return _finish(args, report, maps, _map_rows(s, x, names, classes, maps, "P(class), occluded", "viridis", 0, 1),
                   f"{s.model.name}: occlusion ({args.patch}x{args.patch} patch, stride {args.stride})")


def cmd_adversarial(args) -> int:
    s = _subject(args)
    x, labels, names = _examples(s, args)
    target = None if args.target is None else _class(s, args.target)
    if target is None:
        truth = labels if labels is not None else s.scores(x).argmax(axis=1)
        moved, how = adversarial.fgsm(s, x, truth, args.epsilon), f"FGSM, epsilon {args.epsilon:g}"
    else:
        moved, steps = adversarial.fool(s, x, target, args.confidence, args.steps, args.lr)
        how = f"fooled into {s.class_names[target]} in {steps} steps"
    rows = adversarial.report(s, x, moved, target)
    tiles = []
    for xi, mi, name, row in zip(x, moved, names, rows):
        delta = mi - xi
        top = max(float(np.abs(delta).max()), 1e-12)
        tiles.append([Tile(xi, f"{name}: {row['original']} ({row['original_probability']:.2f})"),
                      Tile(0.5 + delta / (2 * top), f"perturbation x{0.5 / top:.3g}"),
                      Tile(mi, f"{row['new']} ({row['new_probability']:.2f})")])
    if not args.json:
        for name, row in zip(names, rows):
            print(f"{name}: {row['original']} ({row['original_probability']:.3f}) -> {row['new']} "
                  f"({row['new_probability']:.3f}); perturbation L2 {row['l2']:.3f}, Linf {row['linf']:.3f}")
    return _finish(args, {"method": how, "examples": rows}, moved, tiles, f"{s.model.name}: {how}")


def cmd_classviz(args) -> int:
    s = _subject(args)
    targets = [_class(s, c) for given in args.cls for c in given.split(",")]
    settings = optimise.Settings(args.steps, args.lr, args.jitter, args.blur_every, args.blur_sigma, seed=args.seed)
    start = np.repeat(s.blank(), len(targets), axis=0)
    x, _ = optimise.descend(s, objectives.classviz_loss(s, targets, args.l2), start, settings, "class visualisation")
    picked = np.arange(len(targets)), targets
    before, after, probs = s.scores(start)[picked], s.scores(x)[picked], s.probs(x)[picked]
    report = [{"class": s.class_names[t], "score_before": float(b), "score_after": float(a), "probability": float(p)}
              for t, b, a, p in zip(targets, before, after, probs)]
    rows = [[Tile(stretch(img), f"{r['class']}: score {r['score_after']:.1f}") for img, r in zip(x, report)]]
    return _finish(args, {"classes": report}, x, rows, f"{s.model.name}: class visualisation")


def cmd_invert(args) -> int:
    s = _subject(args)
    x, _, names = _examples(s, args)
    layer = s.layer(args.layer)
    target = s.forward(x, [layer])[layer].astype(np.float64)
    rng = np.random.default_rng(args.seed)
    start = np.clip(s.blank() + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    settings = optimise.Settings(args.steps, args.lr, args.jitter, seed=args.seed)
    out, history = optimise.descend(s, objectives.inversion_loss(s, layer, target, args.tv, args.l2), start,
                                    settings, f"inverting {args.layer}")
    rows = [[Tile(xi, name), Tile(oi, f"from {args.layer}")] for xi, oi, name in zip(x, out, names)]
    report = {"layer": args.layer, "loss_start": history[0], "loss_end": history[-1]}
    return _finish(args, report, out, rows, f"{s.model.name}: feature inversion")


def cmd_dream(args) -> int:
    _check_octaves(args, None)  # the flags alone, before the model is loaded
    s = _subject(args)
    x, _, names = _examples(s, args)
    layer = s.layer(args.layer)
    _check_octaves(args, x.shape[-2:])
    settings = optimise.Settings(args.steps, args.lr, args.jitter, octaves=args.octaves,
                                 octave_scale=args.octave_scale, seed=args.seed)
    loss = objectives.dream_loss(s, layer)
    out, history = optimise.descend(s, loss, x, settings, f"dreaming {args.layer}")
    rows = [[Tile(xi, name), Tile(oi, f"dream {args.layer}")] for xi, oi, name in zip(x, out, names)]
    report = {"layer": args.layer, "objective_start": -history[0], "objective_end": -loss(out)[0]}
    return _finish(args, report, out, rows, f"{s.model.name}: DeepDream")


def _check_octaves(args, shape: tuple[int, int] | None) -> None:
    """UsageError unless each octave gets a step and (given the image's `shape`) the coarsest
    octave's grid, the image's side / scale^(octaves-1), is at least 2 pixels: past that the
    octaves only repeat the 2-pixel grid, and the power itself overflows (`--octaves 100000`
    was an OverflowError, `--octave-scale 1e-300` a grid too large for NumPy). Compared as
    logarithms, which cannot overflow."""
    if args.octave_scale < 1:
        raise UsageError(f"--octave-scale {args.octave_scale:g}: the ratio between octaves is at least 1 "
                         "(each octave's grid is coarser than the next)")
    if args.octaves > args.steps:
        raise UsageError(f"--octaves {args.octaves} is more than --steps {args.steps}: each octave takes steps")
    if shape is None or args.octave_scale == 1:
        return
    most = max(1, 1 + math.floor(math.log(min(shape) / 2, args.octave_scale)))
    if args.octaves > most:
        raise UsageError(f"--octaves {args.octaves} at --octave-scale {args.octave_scale:g}: on a "
                         f"{shape[1]}x{shape[0]} image the coarsest grid would be under 2 pixels; "
                         f"at most {most} octave{'s' * (most > 1)}")


def cmd_style(args) -> int:
    given = [name.strip() for name in args.style_layers.split(",") if name.strip()]
    if not given:  # else a division by their number
        raise UsageError(f"--style-layers {args.style_layers!r} names no layer; give some, e.g. conv1,conv2")
    if not (args.style_image or args.style_input or args.style_index):  # not the content's flags
        raise UsageError("give the style example with one of --style-image PNG, --style-input X.npy or "
                         "--style-index N")
    s = _subject(args)
    content, _, names = _examples(s, args)
    style, _, style_names = s.examples(args.style_image, args.style_input, args.style_index, args.split, args.as_name,
                                       flags="--style-")
    if len(content) != 1 or len(style) != 1:
        raise UsageError("style transfer takes one content and one style example")
    layers = [s.layer(name) for name in given]
    for name, node in zip(given, layers):
        if len(s.model.graph[node].type.shape) not in (3, 4):
            raise UsageError(f"--style-layers: '{name}' is {s.model.graph[node].type.show()}; a Gram matrix needs "
                             "feature maps [N, C, H, W]")
    content_layer = s.layer(args.content_layer)
    feats = s.forward(style, layers)
    grams = [objectives.gram(feats[name]) for name in layers]
    weights = [args.style_weight / len(layers)] * len(layers)
    target = s.forward(content, [content_layer])[content_layer].astype(np.float64)
    loss = objectives.StyleLoss(s, content_layer, target, layers, grams, weights, args.content_weight, args.tv)
    settings = optimise.Settings(args.steps, args.lr, args.jitter, seed=args.seed)
    before = loss.style_value(content)
    out, _ = optimise.descend(s, loss, content, settings, "style transfer")
    report = {"style_loss_start": before, "style_loss_end": loss.style_value(out),
              "style_layers": args.style_layers.split(","), "content_layer": args.content_layer}
    rows = [[Tile(content[0], f"content {names[0]}"), Tile(style[0], f"style {style_names[0]}"),
             Tile(out[0], "result")]]
    return _finish(args, report, out, rows, f"{s.model.name}: style transfer")


def cmd_filters(args) -> int:
    s = _subject(args)
    w, rows = features.filters(s, args.layer)
    return _finish(args, {"shape": list(w.shape)}, w, rows, f"{s.model.name}: first-layer filters")


def cmd_activations(args) -> int:
    s = _subject(args)
    x, _, names = _examples(s, args)
    values = features.activations(s, x, args.layer)
    rows = []
    for xi, vi, name in zip(x, values, names):
        maps = features.as_maps(vi)[:args.channels]
        rows.append([Tile(xi, name)] + [Tile(m, f"{args.layer}[{c}]", "viridis") for c, m in enumerate(maps)])
    report = {"layer": args.layer, "shape": list(values.shape), "mean": float(values.mean()),
              "active_share": float((values > 0).mean())}
    return _finish(args, report, values, rows, f"{s.model.name}: activations of {args.layer}")


def cmd_neighbors(args) -> int:
    s = _subject(args)
    x, _, names = _examples(s, args)
    pool = s.dataset("train", args.as_name)
    pool_x = pool.x[:args.limit].reshape((-1, *s.shape))
    found = features.neighbors(s, x, pool_x, args.layer, args.k)
    rows = []
    for i, name in enumerate(names):
        for space in ("features", "pixels"):
            rows.append([Tile(x[i], f"{name} ({space})")] +
                        [Tile(pool_x[j], f"#{j}: {s.class_names[int(pool.y[j])]}") for j in found[space][i]])
    report = {space: [[{"index": int(j), "class": s.class_names[int(pool.y[j])]} for j in row]
                      for row in found[space]] for space in found}
    return _finish(args, report, np.stack([found["features"], found["pixels"]]), rows,
                   f"{s.model.name}: nearest training images by {args.layer} (top) and by pixels (below)")


def cmd_embed(args) -> int:
    s = _subject(args)
    data = s.dataset(args.split, args.as_name)
    n = min(args.examples, len(data))
    x = data.x[:n].reshape((n, *s.shape))
    points = features.embed(features.features_of(s, x, args.layer), args.method, args.seed)
    write_scatter(points, data.y[:n], s.class_names, args.output,
                  f"{s.model.name}: {args.layer} of {n} {args.split} examples ({args.method})")
    if args.npy is not None:
        write_npy(args.npy, points)
    report = {"layer": args.layer, "method": args.method, "points": points, "labels": data.y[:n]}
    print(to_json(report) if args.json else f"wrote {args.output}" + (f" and {args.npy}" if args.npy else ""))
    return 0
