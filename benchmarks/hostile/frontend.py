"""Hostile and careless input to the front end and the command line (issue 12, items 1, 3, 5,
10 and 12): .net sources through symbolic links, devices and FIFOs as sources and imports,
deep but plausible programs and absurd ones, `--set` values and flags, memory bombs.

Each trial writes its files into a fresh workspace (FIFOs and links to devices made there,
never in the system's directories) and runs one `dslc` command from it, as the other
trials of this package do (kit.py). Beyond kit's checks, every file the trial wrote must be
there unchanged afterwards, and the strings it names must appear in the output (stdout or
stderr: a summary or a message).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from benchmarks.hostile.kit import MODELS, Case, Outcome, Trial, Workspace

GIB = 1 << 30
MEMORY_CAP = 4 * GIB  # RLIMIT_AS of the memory-bomb trials: far below what they would ask for


def trial(item: int, name: str, setup: Callable[[Path], list[str]], status: int, says: tuple[str, ...] = (),
          seconds: float = 60.0, memory: int | None = None) -> Trial:
    """`setup(dir)` writes the files and returns the arguments of `dslc`; the run must exit
    with `status`, print every string of `says` and leave every file it found as it was."""
    def make(ws: Workspace) -> Case:
        argv = setup(ws.path)
        found = tuple(Path(here) / n for here, dirs, names in os.walk(ws.path) for n in names + dirs
                      if not (Path(here) / n).is_dir() or (Path(here) / n).is_symlink())

        def printed(outcome: Outcome) -> list[str]:
            return [f"no {s!r} in the output" for s in says if s not in outcome.stdout + outcome.stderr]
        return Case(argv, status, keep=found, seconds=seconds, memory=memory, after=printed)
    return Trial(item, name, make)


# ---- building blocks ---------------------------------------------------------------------

def model(body: str, head: str = "") -> str:
    return f"{head}model m {{\n    input x : f32[N, 4]\n{body}\n}}\n"


def write(d: Path, contents: dict[str, str]) -> None:
    for name, text in contents.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def files(contents: dict[str, str], *argv: str) -> Callable[[Path], list[str]]:
    """Write `contents`, then run `dslc ARGV`."""
    def setup(d: Path) -> list[str]:
        write(d, contents)
        return list(argv)
    return setup


def digits_through_a_symlinked_folder(*argv: str) -> Callable[[Path], list[str]]:
    """shared/digits_mlp.net, reached as models/digits_mlp.net through models -> shared."""
    def setup(d: Path) -> list[str]:
        (d / "shared").mkdir()
        (d / "shared" / "digits_mlp.net").write_bytes((MODELS / "digits_mlp.net").read_bytes())
        (d / "models").symlink_to("shared")
        return list(argv)
    return setup


def fifo(name: str, contents: dict[str, str], *argv: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        write(d, contents)
        os.mkfifo(d / name)
        return list(argv)
    return setup


def link(name: str, target: str, contents: dict[str, str], *argv: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        write(d, contents)
        (d / name).symlink_to(target)
        return list(argv)
    return setup


def mistake_through_symlink(d: Path) -> list[str]:
    digits_through_a_symlinked_folder()(d)
    (d / "shared" / "digits_mlp.net").write_text(model("    output y = x |> relu(3)"))
    return ["check", "models/digits_mlp.net"]


def fifo_behind_a_symlink(d: Path) -> list[str]:
    os.mkfifo(d / "f")
    (d / "g.net").symlink_to("f")
    return ["check", "g.net"]


def directory(d: Path) -> list[str]:
    (d / "dir.net").mkdir()
    return ["check", "dir.net"]


def import_chain(n: int) -> Callable[[Path], list[str]]:
    files_ = {f"i{k}.net": f'import "i{k + 1}.net"\n' for k in range(n)}
    files_[f"i{n}.net"] = model("    output y = relu(x)")
    return files(files_, "check", "i0.net")


DIGITS = str(MODELS / "digits_mlp.net")
TWO_LAYER = str(MODELS / "two_layer.net")
UNCALLED = "block unused(x) {\n    return x |> conv2d(4, kernal=3)\n}\n"


# ---- the trials -----------------------------------------------------------------------------

TRIALS = [
    # 1: a .net path through a symbolic link names the file as the user wrote it, for every verb
    trial(1, "check-through-symlink", digits_through_a_symlinked_folder("check", "models/digits_mlp.net"), 0,
          ("fc1.linear", "Trainable params:  9,610")),
    trial(1, "inspect-through-symlink", digits_through_a_symlinked_folder(
        "inspect", "models/digits_mlp.net", "--stage", "infer"), 0, ("graph digits_mlp",)),
    trial(1, "lr-through-symlink", digits_through_a_symlinked_folder(
        "lr", "models/digits_mlp.net", "-o", "lr.png"), 0, ("wrote lr.png",)),
    trial(1, "gradcheck-through-symlink", digits_through_a_symlinked_folder(
        "gradcheck", "models/digits_mlp.net", "--max-elements", "5"), 0, ("fc1.linear.weight",)),
    trial(1, "mistake-through-symlink", mistake_through_symlink, 1,
          ("models/digits_mlp.net:3:26: error[E0211]",)),

    # 3: sources are regular files, read with a bound
    trial(3, "check-dev-zero", lambda d: ["check", "/dev/zero"], 1,
          ("cannot read /dev/zero: a character device, not a regular file",), seconds=5),
    trial(3, "symlink-to-dev-zero", link("zero.net", "/dev/zero", {}, "check", "zero.net"), 1,
          ("cannot read zero.net: a character device",), seconds=5),
    trial(3, "import-dev-zero", files({"m.net": 'import "/dev/zero"\n' + model("    output y = relu(x)")},
                                        "check", "m.net"), 1,
          ("m.net:1:1: error[E0002]: cannot import '/dev/zero'", "a character device"), seconds=5),
    trial(3, "fifo-as-source", fifo("f.net", {}, "check", "f.net"), 1,
          ("cannot read f.net: a FIFO, not a regular file",), seconds=5),
    trial(3, "fifo-as-import", fifo("f.net", {"m.net": 'import "f.net"\n' + model("    output y = relu(x)")},
                                      "check", "m.net"), 1, ("m.net:1:1: error[E0002]", "a FIFO"), seconds=5),
    trial(3, "symlink-to-fifo", fifo_behind_a_symlink, 1, ("cannot read g.net: a FIFO",), seconds=5),
    trial(3, "source-over-the-bound", files({"big.net": "# " + "x" * (2 << 20) + "\n"}, "check", "big.net"), 1,
          ("cannot read big.net: larger than 1 MiB",), seconds=5),
    trial(3, "directory-as-source", directory, 1,
          ("cannot read dir.net: it is a directory",)),
    *[trial(3, f"{verb.split()[0]}-{kind}", setup, 1, (f"error[E0001]: cannot read {shown}: {why}",), seconds=10)
      for verb in ("compile", "inspect", "gradcheck", "train", "lr", "eval --checkpoint run")
      for kind, shown, why, setup in (
          ("symlink-loop", "loop.net", "a loop of symbolic links",
           link("loop.net", "loop.net", {}, *verb.split(), "loop.net")),
          ("fifo", "f.net", "a FIFO", fifo("f.net", {}, *verb.split(), "f.net")),
          ("dev-zero", "/dev/zero", "a character device", files({}, *verb.split(), "/dev/zero")))],

    # 5: deep but plausible programs work; absurd ones get a located message
    trial(5, "pipeline-300", files({"p.net": model("    output y = x" + " |> relu" * 300)}, "check", "p.net"), 0,
          ("relu_299  relu  f32[N, 4]", "Forward FLOPs:     1,200 per example")),
    trial(5, "nested-calls-300", files({"c.net": model("    output y = " + "relu(" * 300 + "x" + ")" * 300)},
                                         "check", "c.net"), 0, ("relu_299  relu  f32[N, 4]",)),
    trial(5, "nested-repeat-300", files({"r.net": model("    " + "repeat 1 { " * 300 + "x = relu(x)" + " }" * 300
                                                          + "\n    output y = x")}, "check", "r.net"), 0, ("relu",)),
    trial(5, "nested-lists-326", files({"l.net": model("    output y = x |> linear(4, init=" + "[" * 326 + "1"
                                                         + "]" * 326 + ")")}, "check", "l.net"), 1,
          ("l.net:3:36: error[E0212]: linear attribute 'init': expected an initialiser",)),
    trial(5, "sum-2000-terms", files({"s.net": model("    output y = x" + " + x" * 2000)}, "check", "s.net"), 0,
          ("add_1999  add  f32[N, 4]",)),
    trial(5, "import-chain-967", import_chain(967), 0, ("relu",), seconds=30),
    trial(5, "brackets-too-deep", files({"b.net": model("    output y = " + "(" * 1200 + "x" + ")" * 1200)},
                                          "check", "b.net"), 1,
          ("b.net:3:1015: error[E0108]: brackets nest more than 1000 deep here",)),
    trial(5, "nesting-through-blocks", files({"k.net": "\n".join(
        f"block k{i}(x) {{\n    return {'relu(' * 900}{f'k{i + 1}(x)' if i < 9 else 'x'}{')' * 900}\n}}"
        for i in range(10)) + "\n" + model("    output y = k0(x)")}, "check", "k.net"), 1,
          ("k.net:17:", "error[E0257]: expressions nest more than 5000 deep here")),

    # 10: the command line
    trial(10, "set-unknown-hyper-parameter", lambda d: ["check", DIGITS, "--set", "hiden=3"], 2,
          ("--set hiden: model 'digits_mlp' has no hyper-parameter 'hiden'; did you mean 'hidden'?",)),
    trial(10, "set-wrong-type", lambda d: ["check", DIGITS, "--set", "hidden=wide"], 2,
          ("--set hidden: hyper-parameter 'hidden' is int, got the string 'wide'",)),
    trial(10, "set-unknown-recipe-argument", lambda d: ["lr", DIGITS, "--set", "optimizer.lrr=1", "-o", "lr.png"],
          2, ("--set optimizer.lrr: adam() has no argument 'lrr'; did you mean 'lr'?",)),
    trial(10, "set-huge-integer", lambda d: ["check", DIGITS, "--set", "hidden=99999999999999999999"], 2,
          ("--set hidden=99999999999999999999: cannot read", "is too large")),
    trial(10, "model-beyond-memory", lambda d: ["train", DIGITS, "--set", "hidden=1000000000000", "--out", "run"],
          1, ("model 'digits_mlp'", "parameters, which needs 272.8 TiB; this machine has"), seconds=5,
          memory=MEMORY_CAP),
    trial(10, "gradcheck-batch-beyond-memory", lambda d: ["gradcheck", TWO_LAYER, "--batch", "100000000"], 1,
          ("a random batch of 100,000,000 for 'two_layer' needs", "available"), seconds=5, memory=MEMORY_CAP),
    trial(10, "freeze-everything", lambda d: ["train", DIGITS, "--set", 'freeze=["*"]', "--out", "run"], 2,
          ("--set freeze=[\"*\"]: freeze selects every trainable parameter of model 'digits_mlp'",)),
    trial(10, "set-value-with-a-brace", lambda d: [
        "lr", DIGITS, "--set", "epochs=2 } model zz { input q : f32[N, 1] output q", "-o", "lr.png"], 2,
          ("--set epochs=2 } model zz", "cannot read", "unexpected '}'")),
    trial(10, "set-seed-1e308", lambda d: ["lr", DIGITS, "--set", "seed=1e308", "-o", "lr.png"], 2,
          ("--set seed=1e308: seed must be in [0, 4294967295], got 1e+308",)),
    *[trial(10, f"{verb}-batch-{b}", files({}, verb, DIGITS, *extra, "--batch", b), 2,
            ("argument --batch: must be at least 1",))
      for verb, extra, b in (("compile", [], "0"), ("compile", [], "-2"), ("inspect", ["--passes", "--verify"], "-1"),
                             ("inspect", ["--passes"], "0"), ("gradcheck", [], "0"))],
    trial(10, "gradcheck-threshold-nan", lambda d: ["gradcheck", DIGITS, "--threshold", "nan"], 2,
          ("argument --threshold: must be a finite number > 0, got 'nan'",)),
    trial(10, "set-without-equals", lambda d: ["check", DIGITS, "--set", "hidden"], 2,
          ("--set expects KEY=VALUE, got 'hidden'",)),

    # 12: the front end, smaller
    *[trial(12, f"line-quoted-after-{name}", files(
        {"q.net": f"# a {ch} b\n" + model("    output y = x |> relu(3)")}, "check", "q.net"), 1,
        ("q.net:4:26: error[E0211]", "\n        output y = x |> relu(3)\n"))
      for name, ch in (("form-feed", "\f"), ("vertical-tab", "\v"), ("nel", "\u0085"), ("line-separator", "\u2028"),
                       ("paragraph-separator", "\u2029"))],
    trial(12, "self-referencing-symlink-import", link(
        "self.net", "self.net", {"m.net": 'import "self.net"\n' + model("    output y = relu(x)")}, "check", "m.net"),
          1, ("m.net:1:1: error[E0002]: cannot import 'self.net': self.net: a loop of symbolic links",)),
    trial(12, "newline-in-import-path", files({"m.net": 'import "a\\nb.net"\n' + model("    output y = relu(x)")},
                                                "check", "m.net"), 1,
          ("m.net:1:1: error[E0002]: cannot import 'a\\nb.net': a\\nb.net: no such file",)),
    trial(12, "mistake-in-an-uncalled-block", files({"u.net": UNCALLED + model("    output y = relu(x)")},
                                                      "check", "u.net"), 1,
          ("u.net:2:27: error[E0210]: conv2d has no attribute 'kernal'", "checked without arguments")),
    trial(12, "100000-statements", files({"s.net": model("\n".join("x=relu(x)" for _ in range(100_000))
                                                           + "\n    output y = x")}, "check", "s.net"), 1,
          ("s.net:", "error[E0107]: s.net is too long: more than 100,000 tokens"), seconds=5),
]
