"""`dslc explain METHOD`: what a trained classifier learned, as pictures (dslc/explain/).

Each method is a sub-verb with its own flags; they share the model, checkpoint, device and
output flags, and those that explain examples share --image / --input / --index. The bodies
are in explain_run.py; this module declares the command line.
"""
from __future__ import annotations

import argparse

from dslc.cli.common import add_checkpoint_args, count, figure_file, nonnegative, positive, seed, steps_apart, verb

RUN = "runs/digits_cnn"
M = "models/digits_cnn.net"


def indices(text: str) -> list[int]:
    """--index 0 or --index 0,5,9: examples of the split, counted from 0."""
    try:
        out = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected example numbers such as 3 or 0,5,9, got {text!r}") from None
    if any(i < 0 for i in out):
        raise argparse.ArgumentTypeError(f"example numbers count from 0, got {text!r}")
    return out


def fraction(text: str) -> float:
    value = positive(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser, method: str, examples: bool = True, layer: str | None = None) -> None:
    """The flags every method takes; `layer`: the example of a required --layer."""
    add_checkpoint_args(p)
    if layer:
        p.add_argument("--layer", required=True, help=f"a layer's label or node name, e.g. {layer}")
    p.add_argument("-o", "--output", default=f"{method}.png", type=figure_file,
                   help=f"figure to write: .png (default: {method}.png), .pdf, .svg or .jpg")
    p.add_argument("--npy", metavar="FILE", help="also write the numbers (maps, images, features) as a .npy")
    p.add_argument("--json", action="store_true", help="print a report of the numbers as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if examples:
        p.add_argument("--image", metavar="PNG", help="an image of the model's size (0..255 pixels scaled to 0..1)")
        p.add_argument("--input", metavar="X.npy", help="one example or a batch, in the training data's pixel range")
        p.add_argument("--index", type=indices, default=[], metavar="N[,N...]",
                       help="examples of the recipe's data split (--split), counted from 0")
        p.add_argument("--split", choices=("test", "val", "train"), default="test",
                       help="the split --index counts in (default: test)")
        p.add_argument("--as", dest="as_name", metavar="NAME", help="the recipe whose data --index reads")


def _optimiser(p: argparse.ArgumentParser, steps: int, lr: float, jitter: int = 1) -> None:
    p.add_argument("--steps", type=count, default=steps, help=f"optimisation steps (default: {steps})")
    p.add_argument("--lr", type=positive, default=lr, help=f"learning rate in pixels per step (default: {lr})")
    p.add_argument("--jitter", type=int, choices=range(0, 9), default=jitter, metavar="PX",
                   help=f"random shift of the image at each step, pixels (default: {jitter})")
    p.add_argument("--seed", type=seed, default=0, help="seed of the start and the jitter (default: 0)")


def _method(name: str):
    """The command `name` of explain_run.py, imported when it runs: the methods bring in the
    explain package, the objectives and the op registry, 80 ms of every other command's start
    (`dslc --help` included) when they were imported to build the parser."""
    def method(args) -> int:
        from dslc.cli import explain_run
        return getattr(explain_run, name)(args)
    return method


def register(verbs) -> None:
    """Add `explain` and its methods to the CLI's subparsers."""
    p = verb(verbs, "explain", "see what a trained network learned: saliency, classviz, adversarial, style ...",
             "Pictures of what a trained classifier computes, from its run's checkpoint, on the compiled "
             "executor: filters, activations, neighbors, embed, occlusion, saliency, classviz, adversarial, "
             "invert, dream, style. Run `dslc explain METHOD --help` for one method's flags.",
             f"  dslc explain saliency {M} --checkpoint {RUN} --index 0,1,2 -o saliency.png\n"
             f"  dslc explain adversarial {M} --checkpoint {RUN} --index 0 --target 8")
    methods = p.add_subparsers(dest="method", metavar="METHOD")

    def no_method(args) -> int:
        p.print_help()
        return 2
    p.set_defaults(run=no_method)

    q = verb(methods, "filters", "the first layer's kernels as an image grid",
             "Draw the kernels of the first convolution (or of --layer), each stretched to its own range; "
             "for a model whose first layer is linear, each unit's weights as an image (its template).",
             f"  dslc explain filters {M} --checkpoint {RUN} -o filters.png")
    _common(q, "filters", examples=False)
    q.add_argument("--layer", help="a convolution's label (default: the first convolution)")
    q.set_defaults(run=_method("cmd_filters"))

    q = verb(methods, "activations", "a layer's feature maps for an input",
             "Draw each channel of a layer's values for each example (a dense layer as one square map).",
             f"  dslc explain activations {M} --checkpoint {RUN} --index 0 --layer conv1")
    _common(q, "activations", layer="conv1")
    q.add_argument("--channels", type=count, default=16, help="channels drawn per example (default: 16)")
    q.set_defaults(run=_method("cmd_activations"))

    q = verb(methods, "neighbors", "nearest training images in a layer's feature space, and in pixel space",
             "For each example, the k training images nearest to it in a layer's features (Euclidean), and "
             "below them the k nearest in raw pixels: a network's features group by class, pixels by ink.",
             f"  dslc explain neighbors {M} --checkpoint {RUN} --index 0,1 --layer conv3 -k 6")
    _common(q, "neighbors", layer="conv3")
    q.add_argument("-k", type=count, default=5, help="neighbours per example (default: 5)")
    q.add_argument("--limit", type=count, default=5000,
                   help="search the first LIMIT training images at most (default: 5000)")
    q.set_defaults(run=_method("cmd_neighbors"))

    q = verb(methods, "embed", "a 2-D map of a layer's features (t-SNE or PCA, scikit-learn)",
             "Place a few hundred examples of a split on a plane by their features at a layer, with "
             "scikit-learn's t-SNE or PCA, coloured by class (needs the `explain` extra: scikit-learn).",
             f"  dslc explain embed {M} --checkpoint {RUN} --layer conv3 --examples 300 -o embed.png")
    _common(q, "embed", examples=False, layer="conv3")
    q.add_argument("--method", choices=("tsne", "pca"), default="tsne", help="(default: tsne)")
    q.add_argument("--examples", type=count, default=500, help="the split's first N examples are placed (default: 500)")
    q.add_argument("--split", choices=("test", "val", "train"), default="test", help="(default: test)")
    q.add_argument("--as", dest="as_name", metavar="NAME", help="the recipe whose data to read")
    q.add_argument("--seed", type=seed, default=0, help="t-SNE's seed (default: 0)")
    q.set_defaults(run=_method("cmd_embed"))

    q = verb(methods, "occlusion", "the class probability as a grey patch slides over the image",
             "A heat map, of the image's size, of the probability of the class (default: the predicted one) "
             "when a patch of the mean image covers each pixel: dark where the evidence is.",
             f"  dslc explain occlusion {M} --checkpoint {RUN} --index 0,1,2 --patch 3 --stride 1")
    _common(q, "occlusion")
    q.add_argument("--class", dest="cls", help="the class (number or name; default: each example's predicted)")
    q.add_argument("--patch", type=count, default=3, help="patch side in pixels (default: 3)")
    q.add_argument("--stride", type=count, default=1, help="patch step in pixels (default: 1)")
    q.set_defaults(run=_method("cmd_occlusion"))

    q = verb(methods, "saliency", "the input gradient of the class score (max over channels of |gradient|)",
             "Saliency maps (Simonyan et al. 2014): how much each pixel changes the class score. With "
             "--guided, guided backpropagation: ReLUs pass a gradient only where both their input and the "
             "gradient arriving are positive.",
             f"  dslc explain saliency {M} --checkpoint {RUN} --index 0,1,2\n"
             f"  dslc explain saliency {M} --checkpoint {RUN} --image digit.png --guided --class 3")
    _common(q, "saliency")
    q.add_argument("--class", dest="cls", help="the class (number or name; default: each example's predicted)")
    q.add_argument("--guided", action="store_true", help="guided backpropagation")
    q.set_defaults(run=_method("cmd_saliency"))

    q = verb(methods, "classviz", "an image that maximises a class score, by gradient ascent",
             "Class visualisation: start from the mean image and ascend the class score minus an L2 penalty, "
             "with random jitter and a periodic light blur (the lecture's recipe).",
             f"  dslc explain classviz {M} --checkpoint {RUN} --class 3 --steps 200 --lr 0.05")
    _common(q, "classviz", examples=False)
    q.add_argument("--class", dest="cls", required=True, action="append",
                   help="the class (number or name); several as 0,3,8 or by repeating it")
    _optimiser(q, 200, 0.05)
    q.add_argument("--l2", type=nonnegative, default=1e-3, help="weight of |x - mean image|^2 (default: 1e-3)")
    q.add_argument("--blur-every", type=steps_apart, default=10, metavar="N",
                   help="blur every N steps, 0 never (default: 10)")
    q.add_argument("--blur-sigma", type=positive, default=0.3, help="blur width in pixels (default: 0.3)")
    q.set_defaults(run=_method("cmd_classviz"))

    q = verb(methods, "adversarial", "fast gradient sign method, or an iterative 'fool it into class k'",
             "Without --target: FGSM, every pixel moved --epsilon against the gradient of its class's "
             "probability. With --target K: gradient ascent on log P(K) until P(K) > --confidence. Prints the "
             "original and new class, probability and perturbation norm; draws original, perturbation "
             "(magnified) and result side by side.",
             f"  dslc explain adversarial {M} --checkpoint {RUN} --index 0,1,2 --epsilon 0.1\n"
             f"  dslc explain adversarial {M} --checkpoint {RUN} --index 0 --target 8")
    _common(q, "adversarial")
    q.add_argument("--epsilon", type=positive, default=0.1, help="FGSM's step in pixel units, 0..1 (default: 0.1)")
    q.add_argument("--target", help="fool the model into this class (number or name)")
    q.add_argument("--confidence", type=fraction, default=0.9, help="stop at P(target) above this (default: 0.9)")
    q.add_argument("--steps", type=count, default=200, help="at most this many steps with --target (default: 200)")
    q.add_argument("--lr", type=positive, default=0.05, help="L2 length of each --target step (default: 0.05)")
    q.set_defaults(run=_method("cmd_adversarial"))

    q = verb(methods, "invert", "reconstruct an image from a layer's features (with total variation)",
             "Feature inversion: from noise, find an image whose features at --layer match the example's, "
             "with a total-variation penalty. Deeper layers keep less of the image.",
             f"  dslc explain invert {M} --checkpoint {RUN} --index 0 --layer conv2")
    _common(q, "invert", layer="conv2")
    _optimiser(q, 300, 0.05, jitter=0)
    q.add_argument("--tv", type=nonnegative, default=1e-2, help="total-variation weight (default: 1e-2)")
    q.add_argument("--l2", type=nonnegative, default=0.0, help="weight of |x - mean image|^2 (default: 0)")
    q.set_defaults(run=_method("cmd_invert"))

    q = verb(methods, "dream", "DeepDream: amplify a layer's activations, with octaves and jitter",
             "Gradient ascent on half the squared activations of --layer from the example, in --octaves "
             "bands of detail from coarse to fine, with jitter.",
             f"  dslc explain dream {M} --checkpoint {RUN} --index 0 --layer conv3 --octaves 2")
    _common(q, "dream", layer="conv3")
    _optimiser(q, 30, 0.01)
    q.add_argument("--octaves", type=count, default=2, help="bands of detail, coarse to fine (default: 2)")
    q.add_argument("--octave-scale", type=positive, default=1.4, help="size ratio between octaves (default: 1.4)")
    q.set_defaults(run=_method("cmd_dream"))

    q = verb(methods, "style", "neural style transfer with Gram matrices at chosen layers",
             "Start from the content example (--image/--input/--index) and minimise a content loss at "
             "--content-layer, Gram-matrix style losses at --style-layers against the style example, and "
             "total variation. Works on any conv model; the quality of the result scales with the network "
             "(a small digits CNN transfers strokes and thickness, not painting styles).",
             f"  dslc explain style {M} --checkpoint {RUN} --index 0 --style-index 7 "
             "--style-layers conv1,conv2 --content-layer conv3")
    _common(q, "style")
    q.add_argument("--style-image", metavar="PNG", help="the style image")
    q.add_argument("--style-input", metavar="X.npy", help="the style example as a .npy")
    q.add_argument("--style-index", type=indices, default=[], metavar="N", help="the style example in --split")
    q.add_argument("--style-layers", required=True, help="comma-separated layers, e.g. conv1,conv2")
    q.add_argument("--content-layer", required=True, help="the layer whose features are kept")
    q.add_argument("--style-weight", type=positive, default=1e3, help="weight of the Gram losses (default: 1e3)")
    q.add_argument("--content-weight", type=nonnegative, default=1.0, help="weight of the content loss (default: 1)")
    q.add_argument("--tv", type=nonnegative, default=1e-3, help="total-variation weight (default: 1e-3)")
    _optimiser(q, 200, 0.02, jitter=0)
    q.set_defaults(run=_method("cmd_style"))
