#!/usr/bin/env python3
"""onnxruntime's outputs on the int8 models that `drover quantize` wrote.

Run from anywhere, after the models below exist:
    pip install -r models/requirements.txt && python3 models/make_quantize_reference.py

The int8 models are made by Drover itself, not by this script (from the repository root,
with models/data/*.calibration.npy from make_calibration.py):

    drover quantize models/cnn.onnx --calibration models/data/cnn.calibration.npy \
        --holdout models/reference/cnn.input.npy --out models/cnn_int8_drover_qdq.onnx
    drover quantize models/cnn.onnx --calibration models/data/cnn.calibration.npy \
        --holdout models/reference/cnn.input.npy --per-channel --out models/cnn_int8_drover_qdq_pc.onnx
    drover quantize models/cnn.onnx --calibration models/data/cnn.calibration.npy \
        --holdout models/reference/cnn.input.npy --format qoperator --out models/cnn_int8_drover_qop.onnx
    drover quantize models/cnn.onnx --calibration models/data/cnn.calibration.npy \
        --holdout models/reference/cnn.input.npy --format qoperator --per-channel \
        --out models/cnn_int8_drover_qop_pc.onnx
    drover quantize models/mlp.onnx --calibration models/data/mlp.calibration.npy \
        --holdout models/reference/mlp.input.npy --out models/mlp_int8_drover_qdq.onnx
    drover quantize models/mlp.onnx --calibration models/data/mlp.calibration.npy \
        --holdout models/reference/mlp.input.npy --format qoperator --out models/mlp_int8_drover_qop.onnx

(`MODELS` below holds the same list; reference/quantize.json records it for the Rust tests,
which re-run each command in-process and require the committed model byte for byte.)

For each model this script asserts that it holds default-domain operators only (no
com.microsoft contrib op), runs onnxruntime 1.32.0 (CPUExecutionProvider, 1 intra-op
thread) on the 16 reference inputs of the fp32 model, and writes
reference/<name>.output.logits.npy (axis 0 = sample, batch axis removed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
REF = HERE / "reference"

# name, fp32 source, extra `drover quantize` arguments
MODELS = [
    ("cnn_int8_drover_qdq", "cnn", []),
    ("cnn_int8_drover_qdq_pc", "cnn", ["--per-channel"]),
    ("cnn_int8_drover_qop", "cnn", ["--format", "qoperator"]),
    ("cnn_int8_drover_qop_pc", "cnn", ["--format", "qoperator", "--per-channel"]),
    ("mlp_int8_drover_qdq", "mlp", []),
    ("mlp_int8_drover_qop", "mlp", ["--format", "qoperator"]),
]


def output_step(model: onnx.ModelProto) -> float:
    """One quantization step of the output: the scale of the DequantizeLinear it comes from,
    through a bias Add, Relu, Flatten or Identity (the tolerance of the parity tests)."""
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    tensor = g.output[0].name
    while True:
        node = next(n for n in g.node if tensor in n.output)
        if node.op_type == "DequantizeLinear":
            return float(onnx.numpy_helper.to_array(consts[node.input[1]]).reshape(-1)[0])
        assert node.op_type in ("Add", "Relu", "Flatten", "Identity"), node.op_type
        tensor = next(i for i in node.input if i not in consts)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    entries = []
    for name, source, args in MODELS:
        path = HERE / f"{name}.onnx"
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        domains = {n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}
        assert domains <= {"", "ai.onnx"}, f"{name}: non-standard domains {domains}"
        ops = sorted({n.op_type for n in model.graph.node})
        inputs = np.load(REF / f"{source}.input.npy")
        sess = session(path)
        feed_name = sess.get_inputs()[0].name
        fixed_batch = sess.get_inputs()[0].shape[0] == 1
        if fixed_batch:
            logits = np.stack([sess.run(["logits"], {feed_name: x[None]})[0][0] for x in inputs])
        else:
            logits = sess.run(["logits"], {feed_name: inputs})[0]
        out = REF / f"{name}.output.logits.npy"
        np.save(out, np.ascontiguousarray(logits.astype(np.float32)))
        fp32 = np.load(REF / f"{source}.output.logits.npy")
        agree = int((fp32.argmax(axis=1) == logits.argmax(axis=1)).sum())
        print(
            f"{name}: {path.stat().st_size} bytes, ops {ops}, "
            f"max |ort int8 - ort fp32| {np.abs(logits - fp32).max():.4f}, top-1 {agree}/{len(fp32)}"
        )
        entries.append(
            {
                "name": name,
                "file": f"{name}.onnx",
                "fp32": f"{source}.onnx",
                "calibration": f"data/{source}.calibration.npy",
                "holdout": f"reference/{source}.input.npy",
                "args": args,
                "output_npy": f"reference/{name}.output.logits.npy",
                "output_step": output_step(model),
            }
        )
    manifest = {
        "generator": "make_quantize_reference.py",
        "onnxruntime": ort.__version__,
        "models": entries,
    }
    (REF / "quantize.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
