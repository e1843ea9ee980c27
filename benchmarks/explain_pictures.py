"""The pictures of README's `dslc explain` section, made from the shipped digits.

    python -m benchmarks.explain_pictures            # trains runs/digits_cnn unless it exists
    python -m benchmarks.explain_pictures --run DIR  # explain an existing run of digits_cnn

Trains models/digits_cnn.net with its own recipe (30 epochs, about a minute on 2 cores with
warm kernel caches), then runs each command of COMMANDS, as README shows it, writing
docs/explain/METHOD.png. Every method runs on the compiled CPU executor.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from dslc.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODEL = "models/digits_cnn.net"

# (picture, the flags after `dslc explain METHOD models/digits_cnn.net --checkpoint RUN`)
COMMANDS = [
    ("filters", "filters"),
    ("activations", "activations --index 0,11 --layer conv1 --channels 8"),
    ("neighbors", "neighbors --index 0,11,31 --layer conv3 -k 6"),
    ("embed", "embed --layer conv3 --examples 359 --method tsne"),
    ("occlusion", "occlusion --index 0,11,31,5 --patch 3 --stride 1"),
    ("saliency", "saliency --index 0,11,31,5 --guided"),
    ("classviz", "classviz --class 0,1,2,3,4,5,6,7,8,9 --steps 300"),
    ("adversarial", "adversarial --index 0,11,31 --target 8"),
    ("invert", "invert --index 0,11 --layer conv2"),
    ("dream", "dream --index 0,11 --layer conv3 --octaves 2"),
    ("style", "style --index 0 --style-index 31 --style-layers conv1,conv2 --content-layer conv3 --steps 300"),
]


def run_all(run: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, flags in COMMANDS:
        method, *rest = shlex.split(flags)
        argv = ["explain", method, MODEL, "--checkpoint", str(run), *rest, "-o", str(out / f"{name}.png")]
        started = time.perf_counter()
        status = main(argv)
        print(f"dslc {shlex.join(argv)}  ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        if status != 0:
            raise SystemExit(f"failed with status {status}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "digits_cnn")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "explain")
    args = parser.parse_args()
    os.chdir(ROOT)  # the commands name models/digits_cnn.net as README does
    if not (args.run / "best").exists() and not (args.run / "last").exists():
        if main(["train", str(ROOT / MODEL), "--out", str(args.run), "--quiet"]) != 0:
            raise SystemExit("training failed")
    run_all(args.run, args.out)
