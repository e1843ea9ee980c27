"""dslc and the rest of the ecosystem: ONNX export (checked in onnxruntime) and ONNX import.

    onnx_ops.py      how each registry op is written in ONNX, or why it cannot be
    onnx_export.py   the inference graph of a model as an ONNX ModelProto, written atomically
    onnx_check.py    run an exported model in onnxruntime against dslc's own inference
    onnx_import.py   an ONNX graph of supported ops as a .net model and its weights, using
      onnx_shapes.py     constants and shape arithmetic computed at import
      onnx_patterns.py   node chains that are one dslc op (GELU written with Erf, Floor of a Div)
      onnx_readers.py    one reader per ONNX op with more to translate than a name

Reading PyTorch state_dicts (`init = torch_weights(...)`) is a training-time job, so it
lives with the trainer in dslc.runtime.torch_weights. This package sits above the
runtime and below the CLI: only dslc.cli imports it, and `onnx`/`onnxruntime` (the
optional extra `pip install -e '.[onnx]'`) are imported only when a verb needs them.
"""
