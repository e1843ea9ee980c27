"""Learning-rate schedules: closed forms at chosen times, warm-up continuity, parity with the
recipe schema, PyTorch's schedulers at whole epochs, and the plot."""
from __future__ import annotations

import inspect
import math

import pytest

from dslc.recipe import schema as R
from dslc.frontend.parse import parse
from dslc.runtime import schedules as S
from dslc.runtime.lrfind import plot_schedule
from helpers import ROOT, run_cli

LR = 0.1


def make(name: str, total: float = 20, lr: float = LR, **args):
    """lr(t) for schedule `name` with recipe arguments `args` (defaults from the schema)."""
    return S.schedule_from_recipe(R.SCHEDULES[name].make(**args), lr, total)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def test_every_recipe_schedule_is_implemented_with_the_same_arguments():
    assert set(S.SCHEDULES) == set(R.SCHEDULES)
    for name, spec in R.SCHEDULES.items():
        ours = list(inspect.signature(S.SCHEDULES[name]).parameters)[2:]  # after (lr0, total)
        assert ours == [a.name for a in spec.args if a.name != "warmup"], name


# ---- closed forms ------------------------------------------------------------------------

def test_constant():
    fn = make("constant")
    assert all(fn(t) == LR for t in (0, 0.5, 7.3, 20, 25))


@pytest.mark.parametrize("t, drops", [(0, 0), (2.999, 0), (3, 1), (5.9, 1), (6, 2), (0.3 * 30, 3), (19.5, 6)])
def test_step_drops_at_multiples_of_every(t, drops):
    assert close(make("step", every=3, gamma=0.5)(t), LR * 0.5 ** drops)


def test_step_boundaries_computed_in_floating_point_drop_on_time():
    fn = make("step", every=0.1, gamma=0.5)
    assert close(fn(3 * 0.1), LR * 0.5 ** 3)  # 3 * 0.1 / 0.1 = 2.9999999999999996


@pytest.mark.parametrize("t", [0, 0.25, 1, 7.5, 20])
def test_exponential_and_inverse_time(t):
    assert close(make("exponential", k=0.3)(t), LR * math.exp(-0.3 * t))
    assert close(make("inverse_time", k=0.3)(t), LR / (1 + 0.3 * t))


@pytest.mark.parametrize("t, want", [(0, LR), (10, (LR + 1e-3) / 2), (20, 1e-3), (30, 1e-3),
                                     (5, 1e-3 + (LR - 1e-3) * (1 + math.cos(math.pi / 4)) / 2)])
def test_cosine_runs_over_the_whole_training(t, want):
    assert close(make("cosine", min_lr=1e-3)(t), want)


@pytest.mark.parametrize("t, want", [(0, 0.01), (2, 0.1), (4, 0.01), (1, 0.055), (5, 0.055), (9, 0.055),
                                     (10, 0.1), (0.4, 0.01 + 0.09 * 0.2)])
def test_cyclical_is_triangular_between_absolute_bounds(t, want):
    assert close(make("cyclical", low=0.01, high=0.1, period=4)(t), want)


def test_one_cycle_rises_to_max_lr_then_anneals():
    fn = make("one_cycle", total=10, lr=0.004, max_lr=0.1, pct=0.3)
    assert close(fn(0), 0.004) and close(fn(3), 0.1) and close(fn(10), 0.004 / 1e4)
    assert close(fn(1.5), 0.1 + (0.004 - 0.1) * (1 + math.cos(math.pi / 2)) / 2)
    assert close(fn(6.5), 0.004 / 1e4 + (0.1 - 0.004 / 1e4) * (1 + math.cos(math.pi / 2)) / 2)
    rise = [fn(3 * i / 50) for i in range(51)]
    fall = [fn(3 + 7 * i / 50) for i in range(51)]
    assert rise == sorted(rise) and fall == sorted(fall, reverse=True)


# ---- warm-up -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, args", [("constant", {}), ("cosine", {"min_lr": 0.0}), ("step", {"every": 4}),
                                        ("exponential", {"k": 0.5}), ("one_cycle", {"max_lr": 1.0})])
def test_warmup_ramps_linearly_from_near_zero_and_joins_continuously(name, args):
    plain, warm = make(name, **args), make(name, warmup=2, **args)
    assert close(warm(0), S.WARMUP_START * plain(0))
    assert close(warm(1), plain(1) * (S.WARMUP_START + (1 - S.WARMUP_START) / 2))
    eps = 1e-9
    assert abs(warm(2 - eps) - warm(2 + eps)) < 1e-6 and close(warm(2), plain(2))
    assert all(close(warm(t), plain(t)) for t in (2.5, 4, 9.9, 20))


def test_warmup_of_a_constant_rate_is_a_straight_line():
    fn = make("constant", warmup=4)
    values = [fn(t / 10) for t in range(41)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert max(steps) - min(steps) < 1e-15 and values[-1] == LR


# ---- from a written recipe -------------------------------------------------------------------

def test_schedule_from_a_parsed_recipe():
    text = ("train m {\n data = digits()\n optimizer = sgd(0.2)\n epochs = 12\n"
            " schedule = step(5, gamma=0.5, warmup=1)\n}")
    recipe, errors = R.validate(parse(text, "r.net").trains[0])
    assert errors == []
    fn = S.schedule_from_recipe(recipe["schedule"], recipe["optimizer"]["lr"], recipe["epochs"])
    assert close(fn(0.5), 0.2 * (S.WARMUP_START + (1 - S.WARMUP_START) * 0.5))
    assert close(fn(4.9), 0.2) and close(fn(5), 0.1) and close(fn(11), 0.05)


def test_unknown_schedule_and_empty_run_are_refused():
    with pytest.raises(ValueError, match="unknown schedule 'poly'"):
        S.schedule_from_recipe(R.CallValue("poly", (("warmup", 0.0),)), LR, 10)
    with pytest.raises(ValueError, match="positive run length"):
        make("cosine", total=0)


# ---- PyTorch's schedulers as an independent oracle, at whole epochs ---------------------------

@pytest.mark.slow  # importing torch takes seconds
@pytest.mark.parametrize("name, args, kind, torch_args", [
    ("step", {"every": 3, "gamma": 0.3}, "StepLR", {"step_size": 3, "gamma": 0.3}),
    ("exponential", {"k": 0.2}, "ExponentialLR", {"gamma": math.exp(-0.2)}),
    ("cosine", {"min_lr": 0.01}, "CosineAnnealingLR", {"T_max": 12, "eta_min": 0.01}),
])
def test_matches_torch_schedulers_at_whole_epochs(name, args, kind, torch_args):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = getattr(torch.optim.lr_scheduler, kind)(opt, **torch_args)
    fn = make(name, total=12, **args)
    for epoch in range(13):
        assert math.isclose(fn(epoch), opt.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12), (name, epoch)
        opt.step()
        sched.step()


def test_plot_schedule_writes_a_png(tmp_path):
    out = tmp_path / "lr.png"
    plot_schedule(make("one_cycle", max_lr=0.5, warmup=1), 20, out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


# ---- linear, inverse_sqrt, cosine_restarts, reduce_on_plateau ------------------------------

@pytest.mark.parametrize("t, want", [(0, LR), (5, 0.75 * LR + 0.25 * 0.01), (20, 0.01), (25, 0.01)])
def test_linear_runs_straight_to_min_lr(t, want):
    assert close(make("linear", min_lr=0.01)(t), want)


@pytest.mark.parametrize("t, want", [(0, LR), (2, LR), (8, LR / 2), (18, LR / 3)])
def test_inverse_sqrt_decays_after_start(t, want):
    assert close(make("inverse_sqrt", start=2)(t), want)


def test_cosine_restarts_restart_at_the_end_of_each_longer_cycle():
    fn = make("cosine_restarts", total=30, period=2, mult=2, min_lr=0.001)  # cycles [0, 2), [2, 6), [6, 14)
    assert close(fn(0), LR) and close(fn(2), LR) and close(fn(6), LR) and close(fn(14), LR)
    assert close(fn(1), (LR + 0.001) / 2) and close(fn(4), (LR + 0.001) / 2) and close(fn(10), (LR + 0.001) / 2)
    assert fn(5.999) < 0.0011 and fn(13.999) < 0.0011


def test_reduce_on_plateau_lowers_the_scale_after_patience_epochs():
    rule = S.Plateau.from_recipe(R.SCHEDULES["reduce_on_plateau"].make(patience=2, factor=0.5, min_lr=0.02), LR)
    assert S.Plateau.from_recipe(R.SCHEDULES["cosine"].make(), LR) is None
    assert make("reduce_on_plateau")(7.5) == LR  # the closed form is the constant rate
    state: dict = {}
    scales = []
    for loss in (1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.94, 0.8, 0.85, 0.86, 0.9, 0.9, 0.9, 0.9):
        state = rule.update(state, {"val_loss": loss})
        scales.append(state["scale"])
    # two epochs without improvement halve the rate; the floor is min_lr / lr = 0.2
    assert scales == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2])
    assert rule.update(state, {"val_loss": float("nan")}) == state  # a non-finite value changes nothing


def test_plateau_mode_follows_the_metric():
    spec = R.SCHEDULES["reduce_on_plateau"]
    assert spec.make(metric="val_accuracy")["mode"] == "max" and spec.make()["mode"] == "min"


@pytest.mark.parametrize("name, args, points", [
    ("cyclical", {"low": 0.001, "high": 0.01, "period": 4}, [(0, 0.001), (2, 0.01), (4, 0.001), (6, 0.01)]),
    ("cosine", {"warmup": 2}, [(0, LR * S.WARMUP_START), (2, LR * (1 + math.cos(math.pi / 10)) / 2)]),
])
def test_landmarks_show_turns_not_evenly_spaced_samples(name, args, points):
    shown, more = S.landmarks(make(name, total=20, **args), 20)
    for (t, lr), (want_t, want_lr) in zip(shown, points):
        assert t == pytest.approx(want_t, abs=0.01) and lr == pytest.approx(want_lr, rel=1e-3)
    assert shown[-1][0] == 20 and more == (name == "cyclical")


@pytest.mark.parametrize("name, magic", [("lr.pdf", b"%PDF"), ("lr.svg", b"<?xml"), ("lr.JPG", b"\xff\xd8\xff"),
                                         ("lr", b"\x89PNG")])
def test_a_figure_takes_the_format_its_name_asks_for(tmp_path, capsys, name, magic):
    """-o lr.pdf writes a PDF (it wrote PNG bytes under any name); a name without a suffix is PNG."""
    code, out, err = run_cli(capsys, "lr", str(ROOT / "models" / "small_cnn.net"), "-o", str(tmp_path / name))
    assert code == 0 and (tmp_path / name).read_bytes().startswith(magic), (out, err)


def test_a_figure_named_with_a_suffix_no_figure_has_is_refused_before_anything_is_written(tmp_path, capsys):
    kept = tmp_path / "notes.txt"
    kept.write_text("mine")
    code, _, err = run_cli(capsys, "lr", str(ROOT / "models" / "small_cnn.net"), "-o", str(kept))
    assert code == 2 and "notes.txt: a figure is written as .png, .pdf, .svg" in err and "not .txt" in err
    assert kept.read_text() == "mine" and "Traceback" not in err
