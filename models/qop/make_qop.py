#!/usr/bin/env python3
"""onnxruntime's QOperator int8 models as its quantizer writes them by default, with its answers.

`quantize_static(..., quant_format=QuantFormat.QOperator)` with its defaults (the format most
int8 files in public model zoos have) writes Microsoft-only operators next to the standard
QLinearConv/QLinearMatMul: com.microsoft QLinearAdd, QLinearGlobalAveragePool, QGemm, and for
the MLP's LeakyRelu/Sigmoid/Mul/Concat/Softmax QLinearLeakyRelu, QLinearSigmoid, QLinearMul,
QLinearConcat, QLinearSoftmax. Drover rewrites them at load time into their definition in
standard operators (runtime/src/engine/qdq/qop_ms.rs); these files are what the parity test
(tests/parity.rs) checks that against.

`quantize_dynamic(model_in, model_out)` with its defaults writes com.microsoft::DynamicQuantizeLSTM
for an LSTM; Drover runs it as a standard LSTM over the dequantized weights
(runtime/src/engine/qdq/dynamic_lstm.rs). qd_lstm is that file with onnxruntime's answers;
qd_lstm_clip_refused is the same LSTM given a cell clip (an ONNX LSTM attribute tract does not
implement) before quantize_dynamic, which Drover must go on refusing, naming the operator.

Pipeline, per model: torch module -> torch.onnx.export (TorchScript exporter, opset 17, dynamic
batch) -> onnxruntime.quantization.shape_inference.quant_pre_process -> quantize_static with a
seeded CalibrationDataReader and QuantFormat.QOperator; everything else at its default
(per-tensor, QUInt8 activations, QInt8 weights), plus a per_channel=True and a QInt8-activation
variant.

Writes models/qop/*.onnx, *.input.jsonl (16 seeded samples), *.output.<name>.npy
(onnxruntime's outputs, CPU provider, one thread) and manifest.json (the schema of
models/exported/manifest.json). Tolerance: the graph outputs are DequantizeLinear of an 8-bit
tensor, so one quantization step of that tensor (its scale) is the bound for "the same integer
but for one rounding": onnxruntime's kernels (MLAS fixed-point/float requantization, lookup
tables) and the float definitions round a few values to the neighbouring integer.

qd_lstm's output is float, and onnxruntime's kernel quantizes each step's input on the fly (uint8,
over the whole batch), so its answers depend on the batch: one sample alone differs from the same
sample in the batch of 16 by more than the dynamic int8 rule max|ref|/127 on this small LSTM. Its
tolerance is therefore the larger of that rule and onnxruntime's own spread (batch of 16 against
one sample at a time). The output also carries a strict reference, `definition`: onnxruntime on
the operator's float definition, the standard LSTM over the dequantized weights (built here with
numpy from the file's integers, scales and zero points, transposed to ONNX LSTM's layout), which
Drover must match within float rounding.

Run: pip install -r models/qop/requirements.txt && python3 models/qop/make_qop.py
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
SAMPLES = 16
CALIBRATION = 32


class Cnn(torch.nn.Module):
    """A small CNN: conv stem, a residual block (Add), global average pool, Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.down = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.a(x)))
        x = torch.relu(x + y)
        x = torch.relu(self.down(x))
        x = torch.flatten(self.pool(x), 1)
        return self.head(x)


class Mlp(torch.nn.Module):
    """An MLP with a gated branch: LeakyRelu, Sigmoid gate (Mul), Concat, Softmax."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(24, 32)
        self.gate = torch.nn.Linear(24, 32)
        self.fc2 = torch.nn.Linear(32 + 24, 16)
        self.out = torch.nn.Linear(16, 5)

    def forward(self, x):
        h = torch.nn.functional.leaky_relu(self.fc1(x), 0.1)
        h = h * torch.sigmoid(self.gate(x))
        h = torch.cat([h, x], dim=1)
        h = torch.relu(self.fc2(h))
        return torch.softmax(self.out(h), dim=1)


class Lstm(torch.nn.Module):
    """A one-layer LSTM: quantize_dynamic writes com.microsoft::DynamicQuantizeLSTM."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


class Reader(CalibrationDataReader):
    def __init__(self, name: str, data: np.ndarray):
        self.items = iter([{name: data[i : i + 1]} for i in range(len(data))])

    def get_next(self):
        return next(self.items, None)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def json_array(a: np.ndarray) -> str:
    if a.ndim == 0:
        return repr(float(a.item()))
    return "[" + ",".join(json_array(a[i]) for i in range(a.shape[0])) + "]"


def export(net: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str):
    torch.onnx.export(net.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=[input_name],
                      output_names=[output_name], dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}})


def dynamic_lstm_definition(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each com.microsoft::DynamicQuantizeLSTM replaced by its float definition:
    ai.onnx LSTM with W, R = (q - zero_point) * scale (per direction, or per gate column),
    transposed from the contrib layout [D, K, 4H] to ONNX LSTM's [D, 4H, K]."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def dequantized(q: str, scale: str, zero_point: str) -> np.ndarray:
        s, z = inits[scale].astype(np.float32), inits[zero_point].astype(np.float32)
        s, z = (s[:, None, None], z[:, None, None]) if s.ndim == 1 else (s[:, None, :], z[:, None, :])
        return np.ascontiguousarray(np.transpose((inits[q].astype(np.float32) - z) * s, (0, 2, 1)))

    nodes = []
    for n in model.graph.node:
        if n.op_type != "DynamicQuantizeLSTM":
            nodes.append(n)
            continue
        w, r = f"{n.input[1]}_definition", f"{n.input[2]}_definition"
        model.graph.initializer.extend([numpy_helper.from_array(dequantized(*n.input[1:2], *n.input[8:10]), w),
                                        numpy_helper.from_array(dequantized(*n.input[2:3], *n.input[10:12]), r)])
        inputs = [n.input[0], w, r, *n.input[3:8]]
        while inputs[-1] == "":
            inputs.pop()
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        nodes.append(onnx.helper.make_node("LSTM", inputs, list(n.output), name=n.name, **attrs))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def final_scale(model: onnx.ModelProto, output: str) -> float:
    """The scale of the DequantizeLinear that writes `output` (one output quantization step)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if output in n.output)
    assert node.op_type == "DequantizeLinear", (output, node.op_type)
    return float(inits[node.input[1]])


def ops(model: onnx.ModelProto) -> dict:
    out: dict = {}
    for n in model.graph.node:
        key = f"{n.domain or 'ai.onnx'}::{n.op_type}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def quantize(name: str, fp32: Path, input_name: str, calib: np.ndarray, **options) -> Path:
    out = HERE / f"{name}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), Reader(input_name, calib), quant_format=QuantFormat.QOperator, **options)
    return out


def write(name: str, path: Path, input_name: str, x: np.ndarray, producer: str, dynamic: bool = False) -> dict:
    """Runs onnxruntime on `x` and writes the inputs and outputs. Tolerance: one step of the
    output's quantization, or for a dynamic model's float output max|ref|/127."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, {input_name: x})
    jsonl = HERE / f"{name}.input.jsonl"
    jsonl.write_text("\n".join(json_array(x[i]) for i in range(SAMPLES)) + "\n")
    for i, line in enumerate(jsonl.read_text().splitlines()):
        assert np.array(json.loads(line), dtype=np.float64).astype(np.float32).tobytes() == x[i].tobytes()
    model = onnx.load(str(path))
    outs = []
    for oname, arr in zip(names, results):
        rel = f"qop/{name}.output.{oname}.npy"
        np.save(MODELS / rel, arr)
        if dynamic:
            alone = np.concatenate([sess.run([oname], {input_name: x[i : i + 1]})[0] for i in range(len(x))])
            spread = float(np.abs(alone - arr).max())
            rule = float(np.abs(arr).max()) / 127
            definition = ort.InferenceSession(dynamic_lstm_definition(model).SerializeToString(),
                                              providers=["CPUExecutionProvider"]).run([oname], {input_name: x})[0]
            drel = f"qop/{name}.definition.{oname}.npy"
            np.save(MODELS / drel, definition)
            assert float(np.abs(definition - arr).max()) <= max(rule, spread), (name, "definition too far")
            outs.append({"name": oname, "dtype": str(arr.dtype), "npy": rel, "tolerance": max(rule, spread),
                         "tolerance_rule": "max(max|ref|/127, onnxruntime's spread: batch of 16 against one "
                                           "sample at a time)", "max_ref_over_127": rule, "onnxruntime_spread": spread,
                         "definition": {"npy": drel, "tolerance": 1e-5,
                                        "what": "onnxruntime on the standard LSTM over the dequantized weights"}})
            continue
        step = final_scale(model, oname)
        # One step of the output's quantization, with room for float rounding of (q - z) * s.
        outs.append({"name": oname, "dtype": str(arr.dtype), "npy": rel, "tolerance": step * (1 + 1e-5),
                     "quantization_step": step})
    microsoft = {k: v for k, v in ops(model).items() if k.startswith("com.microsoft")}
    assert microsoft, (name, "expected com.microsoft operators")
    return {
        "name": name,
        "file": f"qop/{name}.onnx",
        "kind": "int8-dynamic" if dynamic else "int8-qop",
        "batch": "symbolic",
        "refused": False,
        "unsupported": [],
        "producer": producer,
        "operators": ops(model),
        "reference": {"samples": SAMPLES, "input_jsonl": f"qop/{name}.input.jsonl", "input_npy": None, "outputs": outs},
    }


def main():
    for f in HERE.iterdir():
        if f.suffix in (".onnx", ".npy", ".jsonl") or f.name == "manifest.json":
            f.unlink()
    versions = {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                "torch": torch.__version__}
    torch.manual_seed(33)
    rng = np.random.default_rng(33)
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        cnn_fp32 = Path(tmp) / "cnn.onnx"
        export(Cnn(), torch.randn(2, 1, 16, 16), cnn_fp32, "image", "logits")
        cnn_calib = rng.standard_normal((CALIBRATION, 1, 16, 16)).astype(np.float32)
        cnn_x = rng.standard_normal((SAMPLES, 1, 16, 16)).astype(np.float32)
        mlp_fp32 = Path(tmp) / "mlp.onnx"
        export(Mlp(), torch.randn(2, 24), mlp_fp32, "features", "probabilities")
        mlp_calib = rng.standard_normal((CALIBRATION, 24)).astype(np.float32)
        mlp_x = rng.standard_normal((SAMPLES, 24)).astype(np.float32)
        call = "quant_pre_process, then quantize_static(pre, out, reader, quant_format=QuantFormat.QOperator"
        variants = [
            ("qop_cnn", cnn_fp32, "image", cnn_calib, cnn_x, {}, "CNN (residual Add, GAP, Linear)"),
            ("qop_cnn_pc", cnn_fp32, "image", cnn_calib, cnn_x, {"per_channel": True}, "CNN"),
            ("qop_cnn_s8", cnn_fp32, "image", cnn_calib, cnn_x, {"activation_type": QuantType.QInt8}, "CNN"),
            ("qop_mlp", mlp_fp32, "features", mlp_calib, mlp_x, {}, "MLP (LeakyRelu, Sigmoid*, Concat, Softmax)"),
            ("qop_mlp_pc", mlp_fp32, "features", mlp_calib, mlp_x, {"per_channel": True}, "MLP"),
        ]
        for name, fp32, input_name, calib, x, options, what in variants:
            path = quantize(name, fp32, input_name, calib, **options)
            extra = "".join(f", {k}={'QuantType.QInt8' if v is QuantType.QInt8 else v}" for k, v in options.items())
            producer = f"torch.onnx.export({what}, dynamo=False, opset 17); {call}{extra})"
            entries.append(write(name, path, input_name, x, producer))
        lstm_fp32 = Path(tmp) / "lstm.onnx"
        export(Lstm(), torch.randn(2, 5, 8), lstm_fp32, "sequence", "hidden")
        pre = Path(tmp) / "lstm_pre.onnx"
        quant_pre_process(str(lstm_fp32), str(pre))
        lstm = HERE / "qd_lstm.onnx"
        quantize_dynamic(str(pre), str(lstm))
        lstm_x = rng.standard_normal((SAMPLES, 5, 8)).astype(np.float32)
        dynamic = "torch.onnx.export(LSTM(8, 16, batch_first=True), dynamo=False, opset 17); quant_pre_process, " \
                  "then quantize_dynamic(pre, out) (defaults)"
        entries.append(write("qd_lstm", lstm, "sequence", lstm_x, dynamic, dynamic=True))
        assert "com.microsoft::DynamicQuantizeLSTM" in entries[-1]["operators"], entries[-1]["operators"]
        # The same LSTM with a cell clip: quantize_dynamic carries the attribute over to
        # DynamicQuantizeLSTM; tract's LSTM has no clip, so Drover refuses the file.
        clipped = onnx.load(str(lstm_fp32))
        next(n for n in clipped.graph.node if n.op_type == "LSTM").attribute.append(onnx.helper.make_attribute("clip", 0.5))
        clipped_fp32 = Path(tmp) / "lstm_clip.onnx"
        onnx.save(clipped, str(clipped_fp32))
        quant_pre_process(str(clipped_fp32), str(pre))
        refused = HERE / "qd_lstm_clip_refused.onnx"
        quantize_dynamic(str(pre), str(refused))
        session(refused).run(None, {"sequence": lstm_x})  # a file onnxruntime runs
        (HERE / "qd_lstm_clip_refused.input.jsonl").write_text("\n".join(json_array(v) for v in lstm_x) + "\n")
        unsupported = [{"domain": k.split("::")[0], "op": k.split("::")[1], "count": v}
                       for k, v in ops(onnx.load(str(refused))).items() if k.startswith("com.microsoft")]
        assert [u["op"] for u in unsupported] == ["DynamicQuantizeLSTM"], unsupported
        entries.append({"name": "qd_lstm_clip_refused", "file": "qop/qd_lstm_clip_refused.onnx",
                        "kind": "int8-dynamic", "batch": "symbolic", "refused": True, "unsupported": unsupported,
                        "producer": "torch.onnx.export(LSTM(8, 16, batch_first=True), dynamo=False, opset 17); "
                                    "onnx: the LSTM node given clip=0.5; quant_pre_process, then "
                                    "quantize_dynamic(pre, out) (defaults)",
                        "operators": ops(onnx.load(str(refused))), "reference": None})
    manifest = {"generator": "models/qop/make_qop.py", "versions": versions, "models": entries}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for e in entries:
        size = (MODELS / e["file"]).stat().st_size
        print(f"{e['name']:<12} {size:>7} B  {e['operators']}")
    print(versions)


if __name__ == "__main__":
    main()
