"""The verbs that trade models with other tools: export (to ONNX) and import (from ONNX).

Their bodies live in dslc.interop; each verb here parses its flags and prints the result.
"""
from __future__ import annotations

from pathlib import Path

from dslc.cli.common import add_model_args, checkpoint_dir, checkpoint_files, count, load_model, positive, verb
from dslc.diagnostics import CliError
from dslc.files import output_is_not


def cmd_export(args) -> int:
    from dslc.interop import onnx_check, onnx_export
    from dslc.runtime import transfer
    from dslc.runtime.predict import fit_model

    onnx_export.require_onnx()
    model = load_model(args)
    output = Path(args.output or f"{model.name}.onnx")
    # the weights are read before the ONNX file is written: -o naming one of them (or the
    # .net files) would replace what the run saved
    output_is_not(output, args.file, *model.program.modules, *checkpoint_files(args.checkpoint))
    if not output.parent.is_dir():  # before minutes of work, not after
        raise CliError(f"cannot write {output}: no directory {output.parent}")
    if args.checkpoint:
        ckpt = transfer.load(args.checkpoint)  # only its weights are written: no state.json keys needed
        fit_model(ckpt, model)  # every parameter with its shape, saved from this graph
        weights = dict(ckpt.weights)
    else:
        weights = model.init(seed=0)
        print(f"note: no --checkpoint: the weights are {model.name}'s fresh initialisation (seed 0)")
    proto = onnx_export.export(model, weights, args.O, args.checkpoint)
    if args.check:  # before writing: a file that fails its check does not replace a good one
        rows = onnx_check.check(model, weights, proto, batch=args.batch)
        print(f"onnxruntime against dslc's inference, batch {args.batch}:\n"
              f"{onnx_check.format_rows(rows, args.tolerance)}")
        worst = max(r.error for r in rows)
        if worst > args.tolerance:
            raise CliError(f"the exported model differs from dslc by {worst:.2e}, more than --tolerance "
                           f"{args.tolerance:g}; {output} was not written")
    size = onnx_export.save(proto, output)
    print(f"wrote {output}: {len(proto.graph.node)} ONNX nodes, {size / 1e6:.1f} MB, opset "
          f"{proto.opset_import[0].version}, -O{args.O}")
    return 0


def cmd_import(args) -> int:
    from dslc.interop import onnx_import

    written = onnx_import.import_model(args.file, args.output, args.name)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def register(verbs) -> None:
    """Add export and import to the CLI's subparsers."""
    p = verb(verbs, "export", "write a model's inference graph as ONNX (needs the onnx extra)",
             "Write the inference graph (no loss, no dropout) with a checkpoint's weights as an ONNX "
             "model: layer names, symbolic batch dimension N, the model's name, hyper-parameters and "
             "the sha256 of its .net source as metadata. -O2 (the default) folds batchnorm into the "
             "layer before it; -O0 writes it as BatchNormalization. --check runs the file in "
             "onnxruntime on random inputs and reports the largest difference from dslc's inference "
             "(above --tolerance: exit status 1, nothing written). Needs `pip install -e '.[onnx]'`.",
             "  dslc export models/digits_mlp.net --checkpoint runs/digits_mlp -o digits_mlp.onnx\n"
             "  dslc export models/resnet20.net -O0 --check -o resnet20.onnx")
    add_model_args(p)
    p.add_argument("--checkpoint", metavar="DIR", type=checkpoint_dir,
                   help="a checkpoint or run directory, used with the run's own --set hyper-parameters "
                        "(default: the fresh initialisation, seed 0)")
    p.add_argument("-o", "--output", metavar="FILE", help="the .onnx file to write (default: MODEL.onnx)")
    p.add_argument("-O", type=int, choices=(0, 1, 2), default=2,
                   help="optimisation level: 2 folds batchnorm (default), 0 exports the graph as written")
    p.add_argument("--check", action="store_true",
                   help="run the exported model in onnxruntime and compare it with dslc's inference")
    p.add_argument("--batch", type=count, default=2, help="batch size of --check (default: 2)")
    # positive: a NaN tolerance passed every check (no difference is > NaN)
    p.add_argument("--tolerance", type=positive, default=1e-4,
                   help="largest difference --check accepts, absolute or relative to outputs above 1 "
                        "(default: 1e-4)")
    p.set_defaults(run=cmd_export)

    p = verb(verbs, "import", "write a .net model (and its weights) from an ONNX file",
             "Translate an ONNX graph of supported ops (convolutions, pooling, Gemm/MatMul, normalisations, "
             "LRN, Resize, activations with Clip and GELU, reductions, reshapes) into a .net model you can "
             "read, change and retrain, and its weights into a safetensors file beside it that "
             "`init = torch_weights(...)` loads. Shapes an exporter computes (x.view(x.size(0), -1)) are "
             "folded from the static sizes. An op dslc does not know is reported by node name and op type "
             "(exit status 1).",
             "  dslc import resnet.onnx -o resnet.net")
    p.add_argument("file", help="an .onnx file")
    p.add_argument("-o", "--output", required=True, metavar="FILE.net",
                   help="the .net file to write; its weights go beside it, to FILE.safetensors")
    p.add_argument("--name", help="name of the model in the .net file (default: from the ONNX graph)")
    p.set_defaults(run=cmd_import)
