#!/usr/bin/env python3
"""Generate Drover's reference ONNX models and onnxruntime reference data.

Run from anywhere:  python3 models/make_models.py
Everything is written next to this script (models/ and models/reference/).
The script is deterministic: fixed seeds, fixed node names, single-threaded
onnxruntime sessions. See models/README.md for what each file is.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
REF = HERE / "reference"

OPSET = 13
IR_VERSION = 8  # the IR version that goes with opset 13; accepted by every ORT >= 1.10
SAMPLES = 16
CALIB_SAMPLES = 64
FLOAT_TOL = 1e-4
PRODUCER = "drover-make_models"

# Seeds. Every random draw has its own generator so that adding a model never
# changes the data of another one.
SEED_CNN_W = 1001
SEED_MLP_W = 1002
SEED_CNN_REF = 2001
SEED_MLP_REF = 2002
SEED_IRIS_REF = 2003
SEED_DTYPES_REF = 2004
SEED_CNN_CAL = 3001
SEED_MLP_CAL = 3002
SEED_SENSOR_TRAIN = 4001
SEED_SENSOR_REF = 4002

# The sensor model's input: firmware-shim's FeatureLayout(["ax", "ay", "az"], TIME + 4 bands) over
# windows of 128 samples at 100 Hz (firmware-shim/example-firmware/src/app.rs). The features
# below are computed exactly as firmware-shim/src/features.rs and fft.rs compute them.
SENSOR_WINDOW = 128
SENSOR_RATE_HZ = 100.0
SENSOR_BANDS = 4
SENSOR_CHANNELS = ["ax", "ay", "az"]
SENSOR_CLASSES = ["idle", "walking", "vibration"]

# Op types handed to the quantizer for the "standard ops only" QOperator models.
# Gemm (-> com.microsoft::QGemm) and Add (-> com.microsoft::QLinearAdd) are
# deliberately absent.
STD_QOP_OP_TYPES = ["Conv", "MatMul", "Relu", "MaxPool", "Flatten"]

STD_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def he(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """He (Kaiming) normal initialisation."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-0.1, 0.1, size=(n,)).astype(np.float32)


def init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name=name)


def finish_model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
        ir_version=IR_VERSION,
        doc_string=doc,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, name: str) -> Path:
    path = HERE / name
    onnx.save_model(model, str(path))
    return path


def node_domains(model: onnx.ModelProto):
    """(domain, op_type) for every node, recursing into subgraphs."""

    def walk(graph):
        for n in graph.node:
            yield (n.domain or "ai.onnx", n.op_type)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)
                for g in a.graphs:
                    yield from walk(g)

    return list(walk(model.graph))


def op_list(model: onnx.ModelProto) -> list[str]:
    seen = []
    for dom, op in node_domains(model):
        key = op if dom in STD_DOMAINS else f"{dom}::{op}"
        if key not in seen:
            seen.append(key)
    return seen


def nonstandard_ops(model: onnx.ModelProto) -> list[dict]:
    """Count nodes outside ai.onnx / ai.onnx.ml, sorted by (domain, op)."""
    counts: dict[tuple[str, str], int] = {}
    for dom, op in node_domains(model):
        if dom in STD_DOMAINS or dom == "ai.onnx.ml":
            continue
        counts[(dom, op)] = counts.get((dom, op), 0) + 1
    return [{"domain": d, "op": o, "count": c} for (d, o), c in sorted(counts.items())]


def session(path: Path | onnx.ModelProto) -> ort.InferenceSession:
    """Single-threaded CPU session on a file, or on an in-memory model."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    src = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


# ---- JSON writing ----------------------------------------------------------- #


def f32_token(v: np.float32) -> str:
    """Shortest decimal that, parsed as f64 and cast to f32, gives v exactly."""
    v = np.float32(v)
    s = np.format_float_positional(v, unique=True, trim="-")
    if np.float32(float(s)).tobytes() != v.tobytes():
        s = repr(float(v))  # exact f64 value of the f32; always round-trips
    assert np.float32(float(s)).tobytes() == v.tobytes()
    return s


def f64_token(v: np.float64) -> str:
    s = repr(float(v))
    assert np.float64(float(s)).tobytes() == np.float64(v).tobytes()
    return s


def json_array(a: np.ndarray) -> str:
    if a.dtype == np.float32:
        tok = f32_token
    elif a.dtype == np.float64:
        tok = f64_token
    elif np.issubdtype(a.dtype, np.integer):
        tok = lambda v: str(int(v))  # noqa: E731
    else:
        raise TypeError(a.dtype)

    def rec(x):
        if x.ndim == 0:
            return tok(x[()])
        return "[" + ",".join(rec(x[i]) for i in range(x.shape[0])) + "]"

    return rec(a)


def write_reference(
    name: str,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    tolerances: dict[str, float],
) -> dict:
    """inputs/outputs: arrays with the sample axis first (batch dim removed)."""
    lines = []
    for i in range(SAMPLES):
        if len(inputs) == 1:
            (arr,) = inputs.values()
            lines.append(json_array(arr[i]))
        else:
            lines.append("{" + ",".join(f"{json.dumps(k)}:{json_array(v[i])}" for k, v in inputs.items()) + "}")
    jsonl = REF / f"{name}.input.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    # self-check: parse as f64 / int, cast to the input dtype, must be bit-identical
    for i, line in enumerate(jsonl.read_text().splitlines()):
        parsed = json.loads(line)
        if len(inputs) == 1:
            parsed = {next(iter(inputs)): parsed}
        for k, arr in inputs.items():
            back = np.array(parsed[k], dtype=np.float64 if arr.dtype.kind == "f" else np.int64).astype(arr.dtype)
            assert back.shape == arr[i].shape and back.tobytes() == arr[i].tobytes(), (name, k, i)

    input_npy = None
    if len(inputs) == 1:
        (arr,) = inputs.values()
        input_npy = f"reference/{name}.input.npy"
        np.save(HERE / input_npy, arr)

    outs = []
    for oname, arr in outputs.items():
        assert arr.shape[0] == SAMPLES, (name, oname, arr.shape)
        rel = f"reference/{name}.output.{oname}.npy"
        np.save(HERE / rel, arr)
        outs.append({"name": oname, "dtype": str(arr.dtype), "npy": rel, "tolerance": tolerances[oname]})
    return {
        "samples": SAMPLES,
        "input_jsonl": f"reference/{name}.input.jsonl",
        "input_npy": input_npy,
        "outputs": outs,
    }


def run_per_sample(sess: ort.InferenceSession, input_name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Fixed batch-1 model: one sample at a time; returns outputs with batch dim removed."""
    names = [o.name for o in sess.get_outputs()]
    per = {n: [] for n in names}
    for i in range(x.shape[0]):
        res = sess.run(names, {input_name: x[i : i + 1]})
        for n, r in zip(names, res):
            assert r.shape[0] == 1
            per[n].append(r[0])
    return {n: np.stack(v) for n, v in per.items()}


def run_batch(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def std_normal_inputs(seed: int, shape) -> np.ndarray:
    """Standard normal, clipped to [-3, 3], rounded to 4 decimals (short JSON), float32."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal(shape), -3.0, 3.0)
    return np.round(x, 4).astype(np.float32)


# --------------------------------------------------------------------------- #
# quantisation
# --------------------------------------------------------------------------- #


class ArrayReader(CalibrationDataReader):
    def __init__(self, input_name: str, data: np.ndarray):
        # each calibration sample is fed as a batch of one
        self._feeds = [{input_name: data[i : i + 1]} for i in range(data.shape[0])]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def quantize(
    src: Path | onnx.ModelProto, dst_name: str, input_name: str, calib: np.ndarray, fmt, op_types
) -> onnx.ModelProto:
    """src: path of the fp32 model, or an in-memory fp32 ModelProto (never written to models/)."""
    dst = HERE / dst_name
    quantize_static(
        src if isinstance(src, onnx.ModelProto) else str(src),
        str(dst),
        ArrayReader(input_name, calib),
        quant_format=fmt,
        op_types_to_quantize=op_types,
        per_channel=False,
        reduce_range=False,
        activation_type=QuantType.QInt8,  # ORT default
        weight_type=QuantType.QInt8,  # ORT default
        calibrate_method=CalibrationMethod.MinMax,  # ORT default
    )
    model = onnx.load(str(dst))
    # Drop opset imports that no node uses (keeps the std-op files free of any
    # mention of com.microsoft), then save again.
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save_model(model, str(dst))
    return model


def quant_tolerance(model: onnx.ModelProto, output: str) -> float:
    """One quantisation step of `output`, propagated through trailing fp32 layers.

    Walk back from the graph output to the nearest DequantizeLinear. Its scale is
    one step. Every fp32 layer met on the way multiplies the bound: MatMul/Gemm by
    the max over output units of the L1 norm of that unit's weights (times alpha
    for Gemm); bias Add, Relu, Flatten, Reshape, MaxPool, Identity by 1.
    Result = max(step * product, 1e-4).
    """
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}

    def const(name: str):
        if name in inits:
            return inits[name].astype(np.float64)
        n = producers.get(name)
        if n is not None and n.op_type == "DequantizeLinear" and n.input[0] in inits:
            q = inits[n.input[0]].astype(np.float64)
            s = inits[n.input[1]].astype(np.float64)
            zp = inits[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else 0.0
            return (q - zp) * s  # per-tensor only (per_channel=False)
        return None

    factor = 1.0
    t = output
    for _ in range(1000):
        n = producers[t]
        op = n.op_type
        if op == "DequantizeLinear":
            step = float(np.max(np.abs(inits[n.input[1]])))
            return max(FLOAT_TOL, step * factor)
        if op in ("Relu", "Flatten", "Reshape", "MaxPool", "Identity"):
            t = n.input[0]
        elif op == "Add":
            a, b = n.input
            if const(b) is not None:
                t = a
            elif const(a) is not None:
                t = b
            else:
                raise ValueError(f"Add with two activations before {output}")
        elif op == "MatMul":
            w = const(n.input[1])
            assert w is not None and w.ndim == 2
            factor *= float(np.max(np.abs(w).sum(axis=0)))  # y_j = sum_k x_k W[k, j]
            t = n.input[0]
        elif op == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            assert not attrs.get("transA", 0)
            w = const(n.input[1])
            assert w is not None and w.ndim == 2
            rows = w if attrs.get("transB", 0) else w.T  # rows = one output unit each
            factor *= float(attrs.get("alpha", 1.0)) * float(np.max(np.abs(rows).sum(axis=1)))
            t = n.input[0]
        else:
            raise ValueError(f"cannot propagate quantisation step through {op} ({n.name})")
    raise RuntimeError("graph walk did not terminate")


# --------------------------------------------------------------------------- #
# models
# --------------------------------------------------------------------------- #


def make_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED_CNN_W)
    inits = [
        init("conv1.w", he(rng, (8, 1, 3, 3), 1 * 9)),
        init("conv1.b", bias(rng, 8)),
        init("conv2.w", he(rng, (16, 8, 3, 3), 8 * 9)),
        init("conv2.b", bias(rng, 16)),
        init("conv3.w", he(rng, (16, 16, 3, 3), 16 * 9)),
        init("conv3.b", bias(rng, 16)),
        init("fc1.w", he(rng, (64, 784), 784)),  # PyTorch layout, transB=1
        init("fc1.b", bias(rng, 64)),
        init("fc2.w", he(rng, (10, 64), 64)),
        init("fc2.b", bias(rng, 10)),
    ]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["image", "conv1.w", "conv1.b"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", **pool),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", **pool),
        helper.make_node("Conv", ["p2", "conv3.w", "conv3.b"], ["c3"], name="conv3", **conv),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Flatten", ["r3"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["g1"], name="fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["r4"], name="relu4"),
        helper.make_node("Gemm", ["r4", "fc2.w", "fc2.b"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    return finish_model(graph, "Drover reference CNN: 3x(Conv3x3+Relu), 2 MaxPool, 2 Gemm; He-random weights")


def gemm_to_matmul_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """Same fp32 function with every Gemm rewritten as MatMul + Add(bias).

    Only the plain form is accepted: transA=0, alpha=1, beta=1, B and C constant
    initializers, C of shape [N]. B is transposed into a new initializer
    "<B>_t" when transB=1. For a Gemm named X with output Y the rewrite is
    MatMul "X" -> "Y_mm", then Add "X_bias" -> "Y". Used only as the quantizer's
    input for cnn_int8_qop: the quantizer turns MatMul into the standard
    QLinearMatMul, whereas Gemm would become com.microsoft::QGemm.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes, new_inits, dropped = [], [], set()
    for n in g.node:
        if n.op_type != "Gemm":
            keep = onnx.NodeProto()
            keep.CopyFrom(n)  # copies: g.node is cleared below
            new_nodes.append(keep)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert set(attrs) <= {"alpha", "beta", "transA", "transB"}, attrs
        assert attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0, attrs
        a, b, c = n.input
        assert b in inits and c in inits, n.name
        w = numpy_helper.to_array(inits[b])
        cb = numpy_helper.to_array(inits[c])
        assert w.ndim == 2 and cb.ndim == 1
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)  # [K, N], as MatMul wants it
            w_name = f"{b}_t"
            new_inits.append(init(w_name, w))
            dropped.add(b)
        else:
            w_name = b
        assert cb.shape == (w.shape[1],), (n.name, cb.shape, w.shape)
        (y,) = n.output
        new_nodes.append(helper.make_node("MatMul", [a, w_name], [f"{y}_mm"], name=n.name))
        new_nodes.append(helper.make_node("Add", [f"{y}_mm", c], [y], name=f"{n.name}_bias"))
    still_used = {i for n in new_nodes for i in n.input}
    kept = []
    for i in g.initializer:
        if not (i.name in dropped and i.name not in still_used):
            t = onnx.TensorProto()
            t.CopyFrom(i)
            kept.append(t)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    m.doc_string = model.doc_string + " (Gemm rewritten as MatMul+Add for standard-op QOperator quantization)"
    onnx.checker.check_model(m, full_check=True)
    return m


def make_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED_MLP_W)
    dims = [64, 256, 256, 10]
    inits, nodes = [], []
    x = "features"
    for i in range(3):
        w, b = f"fc{i + 1}.w", f"fc{i + 1}.b"
        inits += [init(w, he(rng, (dims[i], dims[i + 1]), dims[i])), init(b, bias(rng, dims[i + 1]))]
        mm, out = f"mm{i + 1}", ("logits" if i == 2 else f"a{i + 1}")
        nodes.append(helper.make_node("MatMul", [x, w], [mm], name=f"matmul{i + 1}"))
        nodes.append(helper.make_node("Add", [mm, b], [out], name=f"add{i + 1}"))
        x = out
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i + 1}"], name=f"relu{i + 1}"))
            x = f"r{i + 1}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    return finish_model(graph, "Drover reference MLP: 64-256-256-10, MatMul+Add, Relu; He-random weights")


def make_dtypes() -> onnx.ModelProto:
    ins = [
        ("x_f32", TensorProto.FLOAT),
        ("x_f64", TensorProto.DOUBLE),
        ("x_i64", TensorProto.INT64),
        ("x_i32", TensorProto.INT32),
        ("x_u8", TensorProto.UINT8),
        ("x_i8", TensorProto.INT8),
    ]
    nodes = []
    casted = ["x_f32"]
    for name, _ in ins[1:]:
        nodes.append(helper.make_node("Cast", [name], [f"{name}_as_f32"], name=f"cast_{name}", to=TensorProto.FLOAT))
        casted.append(f"{name}_as_f32")
    nodes += [
        helper.make_node("Sum", casted, ["sum"], name="sum_all"),
        helper.make_node("Mul", ["x_f64", "two_f64"], ["y_f64"], name="mul_f64"),
        helper.make_node("Add", ["x_i64", "one_i64"], ["y_i64"], name="add_i64"),
        helper.make_node("Mul", ["x_i32", "three_i32"], ["y_i32"], name="mul_i32"),
        helper.make_node("Identity", ["x_u8"], ["y_u8"], name="identity_u8"),
        helper.make_node("Neg", ["x_i8"], ["y_i8"], name="neg_i8"),
    ]
    inits = [
        init("two_f64", np.array(2.0, dtype=np.float64)),
        init("one_i64", np.array(1, dtype=np.int64)),
        init("three_i32", np.array(3, dtype=np.int32)),
    ]
    outs = [
        ("sum", TensorProto.FLOAT),
        ("y_f64", TensorProto.DOUBLE),
        ("y_i64", TensorProto.INT64),
        ("y_i32", TensorProto.INT32),
        ("y_u8", TensorProto.UINT8),
        ("y_i8", TensorProto.INT8),
    ]
    graph = helper.make_graph(
        nodes,
        "dtypes",
        [helper.make_tensor_value_info(n, t, ["N", 3]) for n, t in ins],
        [helper.make_tensor_value_info(n, t, ["N", 3]) for n, t in outs],
        initializer=inits,
    )
    return finish_model(graph, "Drover dtype coverage model: f32/f64/i64/i32/u8/i8 inputs and outputs")


def make_iris() -> tuple[onnx.ModelProto, np.ndarray, LogisticRegression]:
    X, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000)
    clf.fit(X, y)
    onx = convert_sklearn(
        clf,
        name="iris_logreg",
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 1},
    )
    # skl2onnx (1.20) lists the default domain twice in opset_import; keep one entry per domain.
    seen, imports = set(), []
    for o in onx.opset_import:
        if (o.domain or "") not in seen:
            seen.add(o.domain or "")
            imports.append(helper.make_opsetid(o.domain, o.version))
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
    # skl2onnx leaves the batch dimension anonymous (no dim_value, no dim_param); name it
    # "N" like the other symbolic-batch models so every runtime sees one shared symbol.
    for vi in list(onx.graph.input) + list(onx.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        assert not d0.HasField("dim_value") and not d0.dim_param
        d0.dim_param = "N"
    onx.producer_name = PRODUCER + " (skl2onnx " + skl2onnx.__version__ + ")"
    onx.doc_string = "scikit-learn LogisticRegression(max_iter=1000) on load_iris(), skl2onnx, zipmap=False"
    onnx.checker.check_model(onx, full_check=True)
    return onx, X, clf


def sensor_features(window: np.ndarray) -> np.ndarray:
    """[3, N] accelerometer window (g) -> the 24 features of the shim's layout, in its order:
    per channel mean, rms, p2p, zero crossings of the mean-removed signal (exact zeros skipped),
    then the one-sided power of bins 1..N/2 in 4 equal bands, scaled to add up to the variance."""
    out = []
    n = window.shape[1]
    half = n // 2
    for x in window.astype(np.float32).astype(np.float64):
        mean = x.mean()
        c = x - mean
        signs = np.sign(c[c != 0])
        zc = int(np.count_nonzero(signs[1:] != signs[:-1]))
        spec = np.fft.fft(c)
        power = (spec.real**2 + spec.imag**2) / (n * n)
        weight = np.where(np.arange(n) == half, 1.0, 2.0)
        bands = [
            float(np.sum((power * weight)[1 + b * half // SENSOR_BANDS : 1 + (b + 1) * half // SENSOR_BANDS]))
            for b in range(SENSOR_BANDS)
        ]
        out += [mean, np.sqrt(np.mean(x * x)), x.max() - x.min(), zc, *bands]
    return np.array(out, dtype=np.float32)


def sensor_window(rng: np.random.Generator, cls: int) -> np.ndarray:
    """One synthetic MPU-6050 window (g; gravity on z) of class `cls`: 0 idle (sensor noise),
    1 walking (1.5-2.5 Hz sway), 2 vibration (15-30 Hz, a motor). tests/sensor_input.rs plays the
    same recipe through the shim."""
    t = np.arange(SENSOR_WINDOW) / SENSOR_RATE_HZ
    w = rng.normal(0.0, 0.01, size=(3, SENSOR_WINDOW))
    w[2] += 1.0
    if cls == 1:
        f = rng.uniform(1.5, 2.5)
        w[2] += rng.uniform(0.2, 0.4) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        w[0] += rng.uniform(0.1, 0.2) * np.sin(np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif cls == 2:
        f = rng.uniform(15.0, 30.0)
        for axis in range(3):
            w[axis] += rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return w


def make_sensor() -> tuple[onnx.ModelProto, np.ndarray, LogisticRegression]:
    rng = np.random.default_rng(SEED_SENSOR_TRAIN)
    y = np.repeat(np.arange(len(SENSOR_CLASSES)), 200)
    X = np.stack([sensor_features(sensor_window(rng, int(c))) for c in y])
    clf = LogisticRegression(max_iter=5000)
    clf.fit(X.astype(np.float64), y)
    held_y = np.repeat(np.arange(len(SENSOR_CLASSES)), 50)
    held_X = np.stack([sensor_features(sensor_window(rng, int(c))) for c in held_y])
    accuracy = float(np.mean(clf.predict(held_X.astype(np.float64)) == held_y))
    assert accuracy >= 0.98, accuracy
    onx = convert_sklearn(
        clf,
        name="sensor_logreg",
        initial_types=[("features", FloatTensorType([None, X.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 1},
    )
    seen, imports = set(), []
    for o in onx.opset_import:
        if (o.domain or "") not in seen:
            seen.add(o.domain or "")
            imports.append(helper.make_opsetid(o.domain, o.version))
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
    for vi in list(onx.graph.input) + list(onx.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        assert not d0.HasField("dim_value") and not d0.dim_param
        d0.dim_param = "N"
    onx.producer_name = PRODUCER + " (skl2onnx " + skl2onnx.__version__ + ")"
    onx.doc_string = (
        "scikit-learn LogisticRegression(max_iter=5000) on synthetic MPU-6050 windows "
        f"({', '.join(SENSOR_CLASSES)}): drover-shim's 24 features, skl2onnx, zipmap=False "
        f"(held-out accuracy {accuracy:.3f})"
    )
    onnx.checker.check_model(onx, full_check=True)
    return onx, X, clf


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def main() -> int:
    logging.getLogger().setLevel(logging.ERROR)  # quantizer's "consider pre-processing" warning
    ort.set_default_logger_severity(3)
    if REF.exists():
        shutil.rmtree(REF)
    REF.mkdir(parents=True)
    for old in HERE.glob("*.onnx"):
        old.unlink()

    manifest_models = []

    def entry(name, kind, batch, reference, refused=False, unsupported=None):
        manifest_models.append(
            {
                "name": name,
                "file": f"{name}.onnx",
                "kind": kind,
                "batch": batch,
                "refused": refused,
                "unsupported": unsupported or [],
                "reference": reference,
            }
        )

    # ---------------- CNN family (fixed batch 1) ----------------
    cnn_path = save(make_cnn(), "cnn.onnx")
    cnn_x = std_normal_inputs(SEED_CNN_REF, (SAMPLES, 1, 28, 28))
    cnn_cal = std_normal_inputs(SEED_CNN_CAL, (CALIB_SAMPLES, 1, 28, 28))

    out = run_per_sample(session(cnn_path), "image", cnn_x)
    entry("cnn", "fp32", "fixed1", write_reference("cnn", {"image": cnn_x}, out, {"logits": FLOAT_TOL}))

    # cnn_int8_qop is quantized from an equivalent graph in which each Gemm is
    # MatMul + Add(bias), so that the fully connected layers become standard
    # QLinearMatMul instead of staying fp32 (Gemm -> com.microsoft::QGemm only).
    # The rewritten graph exists only in memory; it must compute the same logits.
    cnn_mm = gemm_to_matmul_add(onnx.load(str(cnn_path)))
    assert [n.op_type for n in cnn_mm.graph.node if n.op_type in ("Gemm", "MatMul", "Add")] == ["MatMul", "Add"] * 2
    mm_out = run_per_sample(session(cnn_mm), "image", cnn_x)
    assert np.allclose(mm_out["logits"], out["logits"], rtol=0, atol=1e-5), "Gemm->MatMul+Add rewrite changed the CNN"

    cnn_variants = [
        ("cnn_int8_qdq", QuantFormat.QDQ, None, "qdq", cnn_path),
        ("cnn_int8_qop", QuantFormat.QOperator, STD_QOP_OP_TYPES, "qoperator", cnn_mm),
        ("cnn_int8_qop_msft", QuantFormat.QOperator, None, "qoperator", cnn_path),
    ]

    # ---------------- MLP family (symbolic batch N) ----------------
    mlp_path = save(make_mlp(), "mlp.onnx")
    mlp_x = std_normal_inputs(SEED_MLP_REF, (SAMPLES, 64))
    mlp_cal = std_normal_inputs(SEED_MLP_CAL, (CALIB_SAMPLES, 64))

    mlp_variants = [
        ("mlp_int8_qdq", QuantFormat.QDQ, None, "qdq", mlp_path),
        ("mlp_int8_qop", QuantFormat.QOperator, STD_QOP_OP_TYPES, "qoperator", mlp_path),
        ("mlp_int8_qop_msft", QuantFormat.QOperator, None, "qoperator", mlp_path),
    ]

    def quant_family(variants, input_name, calib, x, fixed_batch):
        for name, fmt, op_types, kind, src in variants:
            model = quantize(src, f"{name}.onnx", input_name, calib, fmt, op_types)
            bad = nonstandard_ops(model)
            if name.endswith("_msft"):
                assert bad and all(b["domain"] == "com.microsoft" for b in bad), (name, bad)
                expected = {"cnn_int8_qop_msft": "QGemm", "mlp_int8_qop_msft": "QLinearAdd"}[name]
                assert any(b["op"] == expected for b in bad), (name, expected, bad)
                entry(name, kind, "fixed1" if fixed_batch else "symbolic", None, refused=True, unsupported=bad)
                continue
            assert not bad, f"{name} must contain only ai.onnx ops, found {bad}"
            assert all(o.domain in STD_DOMAINS for o in model.opset_import), (name, model.opset_import)
            if name == "cnn_int8_qop":
                ops = [n.op_type for n in model.graph.node]
                assert "QLinearConv" in ops and "QLinearMatMul" in ops, (name, ops)
                assert "Gemm" not in ops, (name, ops)
            onnx.checker.check_model(model, full_check=True)
            sess = session(HERE / f"{name}.onnx")
            out = run_per_sample(sess, input_name, x) if fixed_batch else run_batch(sess, {input_name: x})
            tol = {o: quant_tolerance(model, o) for o in out}
            entry(name, kind, "fixed1" if fixed_batch else "symbolic", write_reference(name, {input_name: x}, out, tol))

    quant_family(cnn_variants, "image", cnn_cal, cnn_x, True)

    out = run_batch(session(mlp_path), {"features": mlp_x})
    # keep manifest order: mlp, then its int8 variants
    mlp_entry_ref = write_reference("mlp", {"features": mlp_x}, out, {"logits": FLOAT_TOL})
    entry("mlp", "fp32", "symbolic", mlp_entry_ref)
    quant_family(mlp_variants, "features", mlp_cal, mlp_x, False)

    # ---------------- iris (sklearn) ----------------
    iris_model, iris_X, iris_clf = make_iris()
    iris_path = save(iris_model, "iris_logreg.onnx")
    iris_sess = session(iris_path)
    rng = np.random.default_rng(SEED_IRIS_REF)
    chosen = []
    # real iris rows + N(0, 0.05) noise; keep only samples whose top-2 probability
    # margin is >= 0.02 so that `label` is robust to float noise in other runtimes.
    while len(chosen) < SAMPLES:
        row = iris_X[rng.integers(0, iris_X.shape[0])]
        cand = np.round(row + rng.normal(0.0, 0.05, size=4), 3).astype(np.float32)
        probs = run_batch(iris_sess, {"float_input": cand[None]})["probabilities"][0]
        top2 = np.sort(probs)[-2:]
        if top2[1] - top2[0] >= 0.02:
            chosen.append(cand)
    iris_x = np.stack(chosen)
    out = run_batch(iris_sess, {"float_input": iris_x})
    assert out["label"].dtype == np.int64 and out["label"].shape == (SAMPLES,)
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (SAMPLES, 3)
    # the converted model must agree with scikit-learn itself
    assert np.array_equal(out["label"], iris_clf.predict(iris_x.astype(np.float64)))
    assert np.allclose(out["probabilities"], iris_clf.predict_proba(iris_x.astype(np.float64)), atol=1e-5)
    entry(
        "iris_logreg",
        "sklearn",
        "symbolic",
        write_reference("iris_logreg", {"float_input": iris_x}, out, {"label": 0, "probabilities": FLOAT_TOL}),
    )

    # ---------------- sensor (sklearn on drover-shim's features) ----------------
    sensor_model, sensor_X, sensor_clf = make_sensor()
    sensor_sess = session(save(sensor_model, "sensor_logreg.onnx"))
    data = HERE / "data"
    with open(data / "sensor.train.jsonl", "w") as f:
        for row in sensor_X:
            f.write(json_array(row) + "\n")
    names = [f"{c}.{k}" for c in SENSOR_CHANNELS for k in ["mean", "rms", "p2p", "zc", "band0", "band1", "band2", "band3"]]
    (data / "sensor.features.txt").write_text(",".join(names) + "\n")
    rng = np.random.default_rng(SEED_SENSOR_REF)
    chosen = []
    # fresh windows, each class in turn, kept only with a clear top-2 margin (as for iris)
    while len(chosen) < SAMPLES:
        cand = sensor_features(sensor_window(rng, len(chosen) % len(SENSOR_CLASSES)))
        probs = run_batch(sensor_sess, {"features": cand[None]})["probabilities"][0]
        top2 = np.sort(probs)[-2:]
        if top2[1] - top2[0] >= 0.02:
            chosen.append(cand)
    sensor_x = np.stack(chosen)
    out = run_batch(sensor_sess, {"features": sensor_x})
    assert np.array_equal(out["label"], sensor_clf.predict(sensor_x.astype(np.float64)))
    assert np.allclose(out["probabilities"], sensor_clf.predict_proba(sensor_x.astype(np.float64)), atol=1e-5)
    entry(
        "sensor_logreg",
        "sklearn",
        "symbolic",
        write_reference("sensor_logreg", {"features": sensor_x}, out, {"label": 0, "probabilities": FLOAT_TOL}),
    )

    # ---------------- dtypes ----------------
    dt_path = save(make_dtypes(), "dtypes.onnx")
    rng = np.random.default_rng(SEED_DTYPES_REF)
    shape = (SAMPLES, 3)
    dt_x = {
        "x_f32": np.round(rng.uniform(-4.0, 4.0, shape), 3).astype(np.float32),
        "x_f64": rng.uniform(-4.0, 4.0, shape).astype(np.float64),  # full double precision
        "x_i64": rng.integers(-50, 51, shape).astype(np.int64),
        "x_i32": rng.integers(-50, 51, shape).astype(np.int32),
        "x_u8": rng.integers(0, 256, shape).astype(np.uint8),  # whole range: catches i8/u8 mix-ups
        "x_i8": rng.integers(-100, 101, shape).astype(np.int8),  # no -128: Neg(-128) overflows
    }
    # make sure the type extremes that are safe appear at least once
    dt_x["x_u8"][0] = [0, 128, 255]
    dt_x["x_i8"][0] = [-100, 0, 100]
    out = run_batch(session(dt_path), dt_x)
    # |sum| < 512 keeps every f32 partial sum's ulp <= 3.1e-5, so summation order cannot break 1e-4
    assert np.max(np.abs(out["sum"])) < 512
    expect = {
        "sum": sum(v.astype(np.float64) for v in dt_x.values()),
        "y_f64": dt_x["x_f64"] * 2,
        "y_i64": dt_x["x_i64"] + 1,
        "y_i32": dt_x["x_i32"] * 3,
        "y_u8": dt_x["x_u8"],
        "y_i8": -dt_x["x_i8"],
    }
    for k, v in expect.items():
        assert out[k].dtype == v.dtype or k == "sum", (k, out[k].dtype, v.dtype)
        assert np.allclose(out[k], v, atol=1e-4, rtol=0), k
    tol = {k: (FLOAT_TOL if np.issubdtype(v.dtype, np.floating) else 0) for k, v in out.items()}
    entry("dtypes", "dtypes", "symbolic", write_reference("dtypes", dt_x, out, tol))

    # ---------------- manifest ----------------
    order = [
        "cnn", "cnn_int8_qdq", "cnn_int8_qop", "cnn_int8_qop_msft",
        "mlp", "mlp_int8_qdq", "mlp_int8_qop", "mlp_int8_qop_msft",
        "iris_logreg", "sensor_logreg", "dtypes",
    ]  # fmt: skip
    by_name = {m["name"]: m for m in manifest_models}
    assert sorted(by_name) == sorted(order)
    manifest = {
        "generator": "make_models.py",
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
        },
        "models": [by_name[n] for n in order],
    }
    (REF / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # ---------------- summary ----------------
    for m in manifest["models"]:
        model = onnx.load(str(HERE / m["file"]))
        size = (HERE / m["file"]).stat().st_size
        print(f"{m['file']:<26} {size:>8} B  {m['kind']:<9} refused={m['refused']!s:<5} ops={op_list(model)}")
        if m["reference"]:
            for o in m["reference"]["outputs"]:
                print(f"    {o['name']:<14} {o['dtype']:<8} tol={o['tolerance']}")
        for u in m["unsupported"]:
            print(f"    UNSUPPORTED {u['domain']}::{u['op']} x{u['count']}")
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and p.suffix in (".onnx", ".npy", ".jsonl", ".json"))
    print(f"total generated bytes: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
