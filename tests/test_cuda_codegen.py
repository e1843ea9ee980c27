"""The CUDA code generator without a GPU: registry expressions, the source's text, and nvcc.

- every elementwise and optimizer op carries both scalar expressions in its op block,
  and each CUDA expression computes what the CPU one does (compiled as C++ on the host,
  where a C++ compiler exists; the CPU ones are checked against the references by
  tests/test_numba_backend.py), at points on both sides of every kink;
- generation is byte-identical, names kernels after layers with `.net` lines, never
  imports CuPy;
- where `nvcc` is on the PATH, the generated module of every model in models/ (train_step
  and infer, default sizes) compiles with `nvcc -cubin` for sm_80 and sm_90: one nvcc call
  per architecture for all modules. digits_mlp compiles unmarked for each architecture;
  the whole set (about 30 s per architecture) is marked slow;
- `dslc compile --target gpu` writes one `.cu` per stage, byte-identical when repeated,
  and builds it with nvcc where there is one (says so where there is none);
- without a GPU, `--device gpu` (train, eval, predict, the benchmark) is a one-line error
  and exit status 1, `--device auto` trains on the CPU; `to_host` leaves NumPy arrays alone;
- what failed on the first GPU run (scalar copies, labelled kernel names) is checked here.

Running the kernels needs a GPU: tests/test_gpu.py.
"""
from __future__ import annotations

import importlib.util
import math
import shutil
import string
import subprocess
import sys

import numpy as np
import pytest

import dslc
from dslc.cli import main
from dslc.codegen import cuda_library as library
from dslc.codegen.cuda_gpu import BLOCK, MAX_BLOCKS, Launch, generate
from dslc.codegen.scalar import CONSTANTS, CUDA, SCALAR, expression
from dslc.ir.builder import complete_attrs
from dslc.kernels import lower
from dslc.ops import registry
from dslc.passes.pipeline import optimize
from dslc.runtime.host import to_host
from dslc.stages import build
from helpers import HOST_FALLBACKS, MODELS, SAMPLES, op_graph

NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")
ARCHS = ("sm_80", "sm_90")
STAGES = ("train_step", "infer")


def module(model="small_cnn.net", stage="train_step", **overrides):
    return generate(lower(optimize(build(dslc.load(MODELS / model, **overrides), stage))[0]))


# ---- the op registry ---------------------------------------------------------------------

def test_every_elementwise_and_optimizer_op_has_both_expressions():
    """Fails when an op that fusion or the update groups can put in a loop lacks either."""
    ops = registry.all_ops()
    needed = {n for n, op in ops.items() if op.elementwise is not None or op.category == "optimizer"}
    lacking = sorted(n for n in needed if ops[n].scalar is None or not ops[n].scalar.cpu or not ops[n].scalar.cuda)
    assert not lacking, f"no scalar expression (cpu and cuda) for {lacking}"
    assert set(SCALAR) == set(CUDA) == {n for n, op in ops.items() if op.scalar is not None}


def _attr_sets(op):
    """The defaults, and the attributes of each of the op's samples (clip's optional bounds)."""
    base = {a.name: a.default for a in op.attrs if isinstance(a.default, (int, float, bool))}
    sets = [base] + ([dict(base, square=not base["square"])] if "square" in base else [])
    sets += [dict(complete_attrs(op, s.attrs)) for s in op.samples if s.attrs]
    return [attrs for attrs in sets if all(a.name in attrs for a in op.attrs)]


# Points on both sides of zero (the kinks), and positive ones for sqrt/div domains.
POINTS = (-2.5, -0.3, 0.0, 0.7, 1.9)


def _arity(name: str, attrs) -> int:
    """Operands an expression reads: params (prelu's slope, batchnorm's) follow the inputs."""
    template = SCALAR[name](attrs) if callable(SCALAR[name]) else SCALAR[name]
    return 1 + max(int(field) for _, field, _, _ in string.Formatter().parse(template) if field and field.isdigit())


def _cases():
    for name in sorted(SCALAR):
        op = registry.get(name)
        for attrs in _attr_sets(op):
            arity = _arity(name, attrs)
            for k, x in enumerate(POINTS):  # the first operand takes every point
                yield name, attrs, tuple(POINTS[(k + j) % len(POINTS)] if j == 0 else 0.5 + j * 0.25 + abs(x)
                                         for j in range(arity))


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
def test_cuda_expressions_compute_what_the_cpu_expressions_do(tmp_path):
    """Each CUDA expression, compiled as host C++ (the same <cmath> names), against the
    CPU expression evaluated by Python at the same points (elementary's functions are math's
    there: their plain-Python meaning)."""
    from dslc.runtime.cpu import elementary
    cases = []
    for name, attrs, args in _cases():
        env = {"math": math, "np": np, "max": max, "min": min, "elementary": elementary,
               **{k: float(v) for k, v in CONSTANTS.items()}}
        operands = [f"a{j}" for j in range(len(args))]
        try:
            want = eval(expression(name, operands, attrs), env, dict(zip(operands, args)))
        except (ValueError, ZeroDivisionError, OverflowError):
            continue  # outside the op's domain: the reference's NaN/inf, not compared
        if isinstance(want, complex):
            continue  # Python's ** of a negative base to a fractional power (Numba's, as NumPy's: NaN)
        cases.append((name, attrs, args, want, expression(name, operands, attrs, target="cuda")))
    lines = ["#include <cmath>", "#include <cstdio>", "using namespace std;"]
    lines += [f"#define {k} {v}" for k, v in CONSTANTS.items()]
    lines.append("int main() {")
    for _, _, args, _, expr in cases:
        binds = " ".join(f"const double a{j} = {a!r};" for j, a in enumerate(args))
        lines.append(f"  {{ {binds} printf(\"%.17g\\n\", (double)({expr})); }}")
    lines.append("  return 0;\n}")
    src = tmp_path / "expressions.cpp"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "expressions"
    subprocess.run([CXX, "-O0", "-o", str(exe), str(src)], check=True, capture_output=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert len(got) == len(cases)
    for (name, attrs, args, want, expr), g in zip(cases, got):
        assert math.isclose(float(g), want, rel_tol=1e-12, abs_tol=1e-12), \
            f"{name}{args} {attrs}: cuda {g} ({expr}), cpu {want}"


# ---- the generated text ----------------------------------------------------------------------

def test_generation_is_deterministic():
    assert module().source == module().source  # fresh loads, parses and lowerings


def test_kernels_are_named_after_layers_with_headers_pointing_at_the_source():
    src = module().source
    assert 'extern "C" __global__ void k_stage1_conv_bn_relu_sweep(' in src
    assert 'extern "C" __global__ void k_update_adam_step(' in src
    header = src[src.index("// ---- kernel 1: stage1.conv_bn_relu.sweep"):src.index("void k_stage1_conv_bn_relu_sweep")]
    assert "batchnorm" in header and "relu" in header and "small_cnn.net:14" in header
    assert "// ---- the step, in order" in src and "fc.relu: library linear, then k_fc_relu" in src
    assert "0 host fallbacks" in src


def test_sizes_are_arguments_so_one_module_serves_every_width_and_batch():
    """A buffer a generated kernel takes is followed by the dimensions its body reads; no
    width or batch size is in the text, so the module (CuPy's cache key) is the same at
    other sizes, and the launch passes the bound arrays' dimensions."""
    m = module("small_cnn.net")
    assert m.source == module("small_cnn.net", width=40, hidden=96).source
    sweep = m.source[m.source.index("void k_stage1_conv_bn_relu_sweep("):]
    assert sweep.index("const float* stage1_conv_bn_relu_conv2d_,") < sweep.index(
        "const long long stage1_conv_bn_relu_conv2d_s3_,") < sweep.index("const float* stage1_conv_bn_relu_batchnorm_gamma_")
    launch = next(la for la in m.launches if la.function == "k_fc_relu")  # linear's epilogue, in place
    assert launch.args == ("flatten", "fc.linear.weight", "fc.linear.bias", "fc.relu")
    assert launch.axes == ((), (), (), (0, 1))  # the count it loops over
    views = {"flatten": np.zeros((64, 3920), np.float32), "fc.linear.weight": np.zeros((96, 3920), np.float32),
             "fc.linear.bias": np.zeros(96, np.float32), "fc.relu": np.zeros((64, 96), np.float32)}
    args = launch.arguments(views, np.int64)
    assert args[0] is views["flatten"] and args[3] is views["fc.relu"] and args[4:] == (64, 96)


def test_no_model_has_a_host_fallback():
    """Every kernel of every model in models/ runs on the GPU: slice, pad and the hinge loss
    (ResNet-20's shortcuts, two_layer's loss) have library kernels, as on the CPU."""
    fallbacks = {}
    for path in sorted(MODELS.glob("*.net")):
        for stage in STAGES:
            m = module(path.name, stage)
            fallbacks.update({f"{path.stem} {stage} {m.kernels[p].name}": m.kernels[p].nodes[0].op for p in m.fallbacks})
    assert not fallbacks, fallbacks


def test_every_op_sample_is_a_kernel_unless_a_known_host_fallback():
    """Each op's samples (with their gradients) generate CUDA kernels or library launches;
    only the ops of helpers.HOST_FALLBACKS may run on the host."""
    fell = {}
    for name, k, sample in SAMPLES:
        if name == "dropconnect":  # its mask is drawn per step: no op_graph of its own
            continue
        m = generate(lower(optimize(op_graph(name, sample)[0])[0]))
        ops = {n.op for p in m.fallbacks for n in m.kernels[p].covers()} - HOST_FALLBACKS
        if ops:
            fell[f"{name}-{k}"] = sorted(ops)
    assert not fell, fell


def test_launch_grids_cover_the_work_of_the_bound_sizes():
    views = {"x": np.zeros((64, 100)), "big": np.zeros((64, 10**6 // 64)), "c": np.zeros((8, 16, 3, 3)),
             "w": np.zeros((64, 128)), "b": np.zeros(5)}
    whole = lambda b: tuple((b, a) for a in range(views[b].ndim))
    assert Launch(0, "generated", "k", work=(whole("x"),)).grid(views) == (-(-6400 // BLOCK), 1)
    assert Launch(0, "generated", "k", work=(whole("big"),)).grid(views) == (-(-10**6 // BLOCK), 1)
    assert Launch(0, "generated", "k", work=((("big", 0), ("big", 1), ("x", 1)),)).grid(views) == (MAX_BLOCKS, 1)
    assert Launch(0, "generated", "k", work=((("c", 1),),), per_block=True).grid(views) == (16, 1)
    assert Launch(0, "generated", "k", work=(), per_block=True).grid(views) == (1, 1)
    # an update: one segment per parameter, as wide as the largest
    assert Launch(0, "generated", "k", work=(whole("w"), whole("b")), segments=2).grid(views) == (32, 2)


def test_library_kernels_are_included_once_per_dtype():
    src = module("mlp_bn.net").source
    assert src.count("void dslc_cross_entropy_forward_f32_i64(") == 1
    assert src.count("__device__ double dslc_row_lse(") == 1  # shared by the loss and its gradient
    assert "#undef scalar_t" in src and "@" not in src


def test_generating_needs_no_cupy():
    code = ("import sys, dslc\nfrom dslc.codegen.cuda_gpu import generate\nfrom dslc.kernels import lower\n"
            "from dslc.passes.pipeline import optimize\nfrom dslc.stages import build\n"
            f"generate(lower(optimize(build(dslc.load({str(MODELS / 'digits_mlp.net')!r}), 'train_step'))[0]))\n"
            "import dslc.runtime.cuda.runner\nassert 'cupy' not in sys.modules\n"
            # the emitter is shared (dslc/codegen/emit.py, groups.py); the Numba side is not needed
            "assert not {'dslc.codegen.numba_cpu', 'dslc.codegen.numba_loops', 'numba'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_gpu_device_without_cupy_is_a_clear_error():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    from dslc.runtime.cuda.runner import cupy as get_cupy
    from dslc.runtime.errors import DeviceError
    with pytest.raises(DeviceError, match="cupy-cuda12x"):
        get_cupy()


# ---- nvcc -----------------------------------------------------------------------------------

def nvcc(sources: dict[str, str], arch: str, tmp_path) -> None:
    """Compile every source with one `nvcc -cubin` call; fail with nvcc's output on an error."""
    for name, text in sources.items():
        (tmp_path / f"{name}.cu").write_text(text)
    files = [f"{name}.cu" for name in sources]
    done = subprocess.run([NVCC, "-cubin", f"-arch={arch}", *files], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc -arch={arch} failed:\n{done.stdout}\n{done.stderr}"
    assert all((tmp_path / f"{name}.cubin").stat().st_size > 0 for name in sources)


def _sources(names) -> dict[str, str]:
    return {f"{name}_{stage}": module(f"{name}.net", stage).source for name in names for stage in STAGES}


needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_digits_mlp_compiles(arch, tmp_path):
    nvcc(_sources(["digits_mlp"]), arch, tmp_path)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(p.stem for p in MODELS.glob("*.net")))
def test_every_model_compiles(model, tmp_path):
    """One case per model, so parallel test workers share them out, for the arch of the GPUs
    dslc is lent (the H100's and H200's sm_90): the same sources compiled for sm_80 as well
    took 37 more seconds of the suite, and digits_mlp and every library kernel still are."""
    nvcc(_sources([model]), ARCHS[-1], tmp_path)


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_library_kernel_compiles_for_both_dtypes(arch, tmp_path):
    parts = [library.PRELUDE] + [library.source(k, None) for k in library.UNTYPED]
    parts += [library.source(k, d, label) for k in library.KERNELS if k not in library.UNTYPED for d in ("f32", "f64")
              for label in (("i32", "i64") if k in library.LABELLED else (None,))]
    nvcc({"library": "\n\n".join(parts) + "\n"}, arch, tmp_path)


# ---- dslc compile --target gpu -----------------------------------------------------------------

DIGITS = str(MODELS / "digits_mlp.net")


def compile_gpu(capsys, *args) -> tuple[int, str, str]:
    code = main(["compile", DIGITS, "--target", "gpu", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_target_gpu_emits_one_cu_per_stage_byte_identical(tmp_path, capsys):
    sources = []
    for _ in range(2):
        code, out, _ = compile_gpu(capsys, "--emit", str(tmp_path), "--no-build")
        assert code == 0 and "digits_mlp train_step: 11 kernels (3 generated" in out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_mlp_infer.cu", "digits_mlp_train_step.cu"]
        sources.append({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    assert sources[0] == sources[1]
    assert sources[0]["digits_mlp_infer.cu"] == module("digits_mlp.net", "infer").source.encode()


def test_compile_target_gpu_without_nvcc_only_writes_the_source(tmp_path, capsys, monkeypatch):
    """Without --emit the module goes to the cache (DSLC_CACHE), named by its hash."""
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "nvcc" else real(name, *a, **k))
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path))
    code, out, _ = compile_gpu(capsys, "--stage", "infer")
    assert code == 0 and "nvcc is not on the PATH: the CUDA source was only written, not compiled" in out
    written = list(tmp_path.iterdir())
    assert len(written) == 1 and written[0].name.startswith("digits_mlp_infer_") and written[0].suffix == ".cu"
    assert written[0].read_text() == module("digits_mlp.net", "infer").source


@needs_nvcc
def test_compile_target_gpu_builds_with_nvcc(tmp_path, capsys):
    code, out, _ = compile_gpu(capsys, "--stage", "infer", "--emit", str(tmp_path), "--arch", "sm_90")
    assert code == 0 and "nvcc -cubin -arch=sm_90: built in" in out
    assert (tmp_path / "digits_mlp_infer.cubin").stat().st_size > 0


@needs_nvcc
def test_an_nvcc_failure_is_reported_with_its_messages(tmp_path, capsys):
    code, _, err = compile_gpu(capsys, "--stage", "infer", "--emit", str(tmp_path), "--arch", "sm_bogus")
    assert code == 1 and "nvcc -arch=sm_bogus failed" in err and "Traceback" not in err


# ---- --device gpu without a GPU -----------------------------------------------------------------

no_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A two-step run of a small digits_mlp, trained by the NumPy reference (no compile)."""
    run = tmp_path_factory.mktemp("gpu") / "run"
    assert main(["train", DIGITS, "--device", "reference", "--set", "steps=2", "--set", "hidden=8",
                 "--out", str(run), "--quiet"]) == 0
    return run


@no_cupy
@pytest.mark.parametrize("verb", ["train", "eval", "predict"])
def test_device_gpu_without_a_gpu_is_a_clear_error(verb, small_run, tmp_path, capsys):
    capsys.readouterr()
    args = {"train": ["--out", str(tmp_path / "run")],
            "eval": ["--checkpoint", str(small_run)],
            "predict": ["--checkpoint", str(small_run), "--input", str(tmp_path / "x.npy")]}[verb]
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    code = main([verb, DIGITS, "--set", "hidden=8", "--device", "gpu", *args])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("dslc: error: device gpu: no usable CUDA GPU") and "cupy-cuda12x" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # train stops before it makes a run directory


@no_cupy
def test_device_auto_without_a_gpu_is_the_cpu():
    from dslc.runtime.executor import executor_for
    assert executor_for("auto").name == "numba"


@no_cupy
def test_the_gpu_benchmark_without_a_gpu_exits_1(capsys):
    from benchmarks.train_step import main as bench
    assert bench(["--device", "gpu", "--models", "mlp", "--steps", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("benchmarks.train_step: device gpu: no usable CUDA GPU")


def test_to_host_leaves_numpy_arrays_alone_and_copies_device_arrays():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    view = a[:, 1]
    assert to_host(a) is a and to_host(view) is view  # no copy: the CPU path allocates nothing
    assert to_host(np.float32(2.0)) == 2.0

    class Device:  # what to_host relies on in a cupy.ndarray: the CUDA array interface and get()
        __cuda_array_interface__ = {}

        def get(self):
            return a.copy()
    got = to_host(Device())
    assert isinstance(got, np.ndarray) and got is not a and np.array_equal(got, a)
    assert isinstance(to_host([1.0, 2.0]), np.ndarray)


# ---- what failed on the first GPU run, checked here without one ----------------------------

@pytest.mark.parametrize("value,shape", [(np.float32(0.5), ()), (3, ()), (np.ones((2, 3)).T, (3, 2)),
                                         (np.arange(4.0), (2, 2))])
def test_host_block_keeps_the_buffers_shape_even_for_scalars(value, shape):
    """The runner copies feeds, constants and parameters to the GPU through host_block: a 0-d
    learning rate stays 0-d (np.ascontiguousarray made it (1,), and CuPy refused the copy)."""
    from dslc.runtime.host import host_block
    got = host_block(value, np.float32, shape)
    assert got.shape == shape and got.dtype == np.float32 and got.flags.c_contiguous


def test_labelled_library_kernels_are_named_from_a_label_array():
    """The accuracy and cross-entropy kernels take a label array: its dtype names the kernel
    (an array's truth value, `label and ...`, raised on the GPU for every labelled launch)."""
    from dslc.runtime.cuda.ops import Library

    class Module:
        names: list = []

        def get_function(self, name):
            self.names.append(name)
            return lambda grid, block, args: None
    lib = Library(np, Module(), None)
    lib._launch("accuracy", np.zeros((4, 3), np.float32), 4, (), label=np.array([0, 1, 2, 1]))
    lib._launch("softmax", np.zeros((4, 3), np.float32), 4, ())
    assert Module.names == ["dslc_accuracy_f32_i64", "dslc_softmax_f32"]
