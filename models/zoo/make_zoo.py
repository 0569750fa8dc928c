#!/usr/bin/env python3
"""Generate Drover's model zoo: ONNX files written by the real exporters' current releases.

Issue 33: Drover's reference models (models/make_models.py) are its own, built to fit. This
script makes models the way users make them -- torch.onnx (TorchScript and dynamo exporters),
skl2onnx, onnxmltools, onnxruntime's quantizers, MLflow -- with their default calls, and records
onnxruntime's outputs for them, so that `check_zoo.py` can run every file through Drover's agent
and report what loads, what runs and what agrees.

    pip install -r models/zoo/requirements.txt
    python3 models/zoo/make_zoo.py [--out DIR] [--force] [--only REGEX]

Output: DIR (default $DROVER_ZOO_DIR, else <repo>/target/zoo) holds one folder per model with
the model file(s) exactly as the tool wrote them, `input.npy` (seeded samples, first axis =
samples), `ref.<output>.npy` (onnxruntime's outputs, first axis = samples), and DIR/manifest.json
describing every model. Nothing is downloaded: every weight is random (seeded) or trained here on
synthetic or bundled data.

Determinism: fixed seeds everywhere, torch and onnxruntime on one thread. A second run with the
same script and requirements.txt finds the manifest's cache key and does nothing (--force to
rebuild).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

# String hashing decides set and dict-of-set orders inside the converters (onnxmltools writes its
# opset_import in set order): fix it, or two runs write the same model with different bytes.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

# Modest CPU use and determinism: one thread for every numeric library, set before their import.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCRIPT_VERSION = 4

# Samples per model: small models get 8, 224x224 image models 2, the detector 1.
N_SMALL = 8
N_IMAGE = 2
N_CALIB_IMAGE = 8
N_CALIB_SMALL = 32

FP32_RTOL = 1e-4
TREE_ATOL = 1e-5


# --------------------------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------------------------- #


def log(msg: str) -> None:
    print(msg, flush=True)


def cache_key() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(b"\0")
    h.update((HERE / "requirements.txt").read_bytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in (
        "numpy", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "torch", "torchvision", "scikit-learn",
        "skl2onnx", "onnxmltools", "xgboost", "lightgbm", "mlflow-skinny", "mlflow", "skops", "scipy", "protobuf",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:400]
    return type(e).__name__


def ort_session(path: Path | str | bytes, optimize: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


# Integer weights of onnxruntime's quantizers: (domain, op type) -> (weight inputs, their zero
# point inputs), positions from the operator schemas. A DequantizeLinear counts when its input
# is a constant (a QDQ model's weights). onnxruntime has no uint8-weight QLinearConv on the CPU,
# so QOperator convolutions keep their int8 weights (and onnxruntime's answer).
INTEGER_WEIGHTS = {
    ("", "MatMulInteger"): ([1], [3]),
    ("", "ConvInteger"): ([1], [3]),
    ("", "DequantizeLinear"): ([0], [2]),
    ("com.microsoft", "QGemm"): ([3], [5]),
    ("com.microsoft", "DynamicQuantizeMatMul"): ([1], [3]),
    ("com.microsoft", "DynamicQuantizeLSTM"): ([1, 2], [9, 11]),
}


def uint8_twin(path: Path) -> bytes | None:
    """The same model with its int8 integer weights written as uint8 (w + 128, zero point + 128):
    the same real values, so the same function. onnxruntime's u8s8 kernels on x86 CPUs without
    VNNI (AVX2: vpmaddubsw) saturate pairwise products to int16 and answer up to ~1e-2 off the
    definition, a figure that then depends on the machine the zoo was made on; its u8u8 kernels
    are exact everywhere. `None` when the model has no int8 integer weights."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    changed = False
    for node in model.graph.node:
        slots = INTEGER_WEIGHTS.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        if slots is None:
            continue
        weights, zero_points = slots
        names = [node.input[i] if i < len(node.input) else "" for i in weights + zero_points]
        if any(n not in inits for n in names[: len(weights)]) or any(
            inits[n].data_type != onnx.TensorProto.INT8 for n in names[: len(weights)]
        ):
            continue
        for k, zp_slot in enumerate(zero_points):
            zp = names[len(weights) + k]
            if zp == "":  # the schema's default zero point, 0 of the weight's type
                w = numpy_helper.to_array(inits[names[k]])
                zp_name = f"{names[k]}_uint8_twin_zero_point"
                scale_init = inits.get(node.input[1]) if node.op_type == "DequantizeLinear" else None
                scale = numpy_helper.to_array(scale_init) if scale_init is not None else None
                if node.op_type == "DynamicQuantizeLSTM":
                    shape = [w.shape[0]]
                elif scale is not None and scale.ndim == 1:
                    shape = [scale.shape[0]]
                else:
                    shape = []
                model.graph.initializer.append(numpy_helper.from_array(np.full(shape, 128, dtype=np.uint8), zp_name))
                while len(node.input) <= zp_slot:
                    node.input.append("")
                node.input[zp_slot] = zp_name
            elif zp not in inits:
                break
        for n in names:
            t = inits.get(n)
            if t is None or t.data_type != onnx.TensorProto.INT8:
                continue
            twin = numpy_helper.from_array((numpy_helper.to_array(t).astype(np.int16) + 128).astype(np.uint8), n)
            t.CopyFrom(twin)
            changed = True
    return model.SerializeToString() if changed else None


def conditioned(path: Path, feeds: dict[str, np.ndarray]) -> None:
    """Raise unless onnxruntime gives the same answer with and without its graph optimisations
    (fp32 tolerance, integers exact). A model whose outputs hang on float rounding (a detector
    whose scores tie, so NMS may keep either box) has no reference any engine could be held to."""
    a = ort_session(path).run(None, feeds)
    b = ort_session(path, optimize=False).run(None, feeds)
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise RuntimeError(f"ill-conditioned: output {i} is {x.shape} optimised and {y.shape} not")
        if x.dtype.kind in "iub":
            bad = not np.array_equal(x, y)
        else:
            bad = bool(np.any(np.abs(x - y) > 1e-4 * np.abs(y) + 1e-4 * float(np.max(np.abs(y), initial=0))))
        if bad:
            raise RuntimeError(f"ill-conditioned: output {i} differs between onnxruntime optimised and not")


ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.STRING: "string", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.FLOAT16: "float16",
}


def type_text(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({ONNX_DTYPES.get(t.tensor_type.elem_type, t.tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({type_text(t.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({ONNX_DTYPES.get(t.map_type.key_type, t.map_type.key_type)},{type_text(t.map_type.value_type)})"
    return str(kind)


def describe_value(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    """Name, element type and shape as written: int for a value, str for a name, None for neither."""
    t = vi.type
    d: dict[str, Any] = {"name": vi.name, "type": type_text(t)}
    if t.WhichOneof("value") == "tensor_type":
        d["dtype"] = ONNX_DTYPES.get(t.tensor_type.elem_type, str(t.tensor_type.elem_type))
        if t.tensor_type.HasField("shape"):
            dims = []
            for dim in t.tensor_type.shape.dim:
                if dim.HasField("dim_value"):
                    dims.append(int(dim.dim_value))
                elif dim.HasField("dim_param"):
                    dims.append(dim.dim_param)
                else:
                    dims.append(None)
            d["shape"] = dims
        else:
            d["shape"] = "unranked"
    return d


def onnx_facts(path: Path) -> dict[str, Any]:
    m = onnx.load(str(path), load_external_data=False)
    ops: Counter[str] = Counter()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            ops[f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type] += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)

    walk(m.graph)
    ext = sorted(
        {e.value for init in m.graph.initializer for e in init.external_data if e.key == "location"}
    )
    return {
        "ir_version": m.ir_version,
        "opset_import": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer_name": m.producer_name,
        "producer_version": m.producer_version,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "external_data_files": ext,
        "inputs": [describe_value(v) for v in m.graph.input if v.name not in {i.name for i in m.graph.initializer}],
        "outputs": [describe_value(v) for v in m.graph.output],
    }


def quant_step(path: Path, output: str) -> float | None:
    """The scale of the DequantizeLinear that produces `output` (max over channels), if any."""
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    consts = {
        n.output[0]: a.t for n in m.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    }
    for n in m.graph.node:
        if output in n.output and n.op_type == "DequantizeLinear":
            src = inits.get(n.input[1]) or consts.get(n.input[1])
            if src is not None:
                return float(np.max(np.abs(onnx.numpy_helper.to_array(src))))
    return None


# --------------------------------------------------------------------------------------------- #
# the zoo
# --------------------------------------------------------------------------------------------- #


class Zoo:
    def __init__(self, out: Path, only: re.Pattern[str] | None) -> None:
        self.out = out
        self.only = only
        self.entries: list[dict[str, Any]] = []
        self.paths: dict[str, Path] = {}  # model name -> its ONNX file (for quantization sources)

    def wanted(self, name: str) -> bool:
        return self.only is None or bool(self.only.search(name))

    def dir(self, name: str) -> Path:
        d = self.out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def failed(self, name: str, producer: dict[str, Any], family: str, precision: str, e: BaseException) -> None:
        log(f"  !! {name}: build failed: {first_line(e)}")
        tb = traceback.format_exception(e)
        self.entries.append(
            {
                "name": name,
                "producer": producer,
                "family": family,
                "precision": precision,
                "build_error": first_line(e),
                "build_traceback_tail": "".join(tb[-3:])[-2000:],
            }
        )

    def build(self, name: str, producer: dict[str, Any], family: str, precision: str, make: Callable[[Path], Any], **kw: Any) -> None:
        """Runs `make(dir)`, which writes the model and returns (model path, inputs), then records it."""
        if not self.wanted(name):
            return
        log(f"- {name}")
        t0 = time.perf_counter()
        try:
            d = self.dir(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model_path, x = make(d)
            self.record(name, d, model_path, x, producer, family, precision, **kw)
            self.paths[name] = model_path
        except Exception as e:  # noqa: BLE001 -- an exporter crash is a result, not a reason to stop
            self.failed(name, producer, family, precision, e)
        log(f"  {time.perf_counter() - t0:.1f} s")

    def record(
        self,
        name: str,
        d: Path,
        model_path: Path,
        x: np.ndarray,
        producer: dict[str, Any],
        family: str,
        precision: str,
        outputs_batched: bool = True,
        notes: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        facts = onnx_facts(model_path)
        files = sorted(p for p in d.rglob("*") if p.is_file())
        model_files = [p for p in files if not (p.parent == d and p.name.startswith(("input.", "ref.")))]
        inputs = facts["inputs"]
        if len(inputs) != 1:
            raise RuntimeError(f"zoo models have one input; {model_path.name} has {len(inputs)}")
        inp = inputs[0]
        np.save(d / "input.npy", x)

        # onnxruntime, one sample per run (what the agent does by default, and what makes the
        # dynamic quantizer's per-run scales comparable).
        entry: dict[str, Any] = {
            "name": name,
            "file": model_path.relative_to(self.out).as_posix(),
            "model_files": [p.relative_to(self.out).as_posix() for p in model_files],
            "bytes": sum(p.stat().st_size for p in model_files),
            "producer": producer,
            "family": family,
            "precision": precision,
            "onnx": {k: facts[k] for k in ("ir_version", "opset_import", "producer_name", "producer_version", "ops", "external_data_files")},
            "inputs": inputs,
            "outputs": facts["outputs"],
            "samples": int(x.shape[0]),
            "input_file": (d / "input.npy").relative_to(self.out).as_posix(),
            "allows_batch_gt1": isinstance(inp.get("shape"), list) and bool(inp["shape"]) and not isinstance(inp["shape"][0], int),
            "notes": list(notes or []),
        }
        if source:
            entry["source_model"] = source
        if extra:
            entry.update(extra)
        if "mlflow_dir" in entry:
            import yaml

            mlmodel = yaml.safe_load((self.out / entry["mlflow_dir"] / "MLmodel").read_text())
            entry["mlflow_flavors"] = sorted(mlmodel.get("flavors", {}))
            entry["mlflow_onnx_data"] = mlmodel.get("flavors", {}).get("onnx", {}).get("data")
            entry["mlflow_signature"] = mlmodel.get("signature")

        twin = uint8_twin(model_path) if precision.startswith("int8") else None
        sess = None
        if twin is not None:
            try:
                sess = ort_session(twin)
                entry["notes"].append(
                    "reference: onnxruntime on the model's uint8-weight twin (same values; its s8-weight kernels saturate on x86 without VNNI)"
                )
            except Exception as e:  # noqa: BLE001 -- an operator without a uint8-weight kernel
                entry["notes"].append(f"reference: onnxruntime on the model as written (its uint8-weight twin does not run: {first_line(e)})")
        if sess is None:
            sess = ort_session(model_path)
        out_names = [o.name for o in sess.get_outputs()]
        per_out: dict[str, list[Any]] = {n: [] for n in out_names}
        for i in range(x.shape[0]):
            res = sess.run(None, {inp["name"]: x[i : i + 1]})
            for n, v in zip(out_names, res):
                per_out[n].append(v)
        refs: dict[str, Any] = {}
        for o in facts["outputs"]:
            n = o["name"]
            vals = per_out[n]
            r: dict[str, Any] = {}
            if isinstance(vals[0], list):  # ZipMap: a sequence of {class: probability} maps
                classes = list(vals[0][0].keys())
                arr = np.array([[m[c] for c in classes] for v in vals for m in v], dtype=np.float32)
                r["converted_from"] = o["type"]
                r["zipmap_classes"] = [c.item() if hasattr(c, "item") else c for c in classes]
                r["note"] = "onnxruntime returns a list of {class: probability} dicts; stored as [N, classes] float32 in zipmap_classes order"
            else:
                vals = [np.asarray(v) for v in vals]
                if outputs_batched and all(v.ndim >= 1 and v.shape[0] == 1 for v in vals):
                    arr = np.concatenate(vals, axis=0)
                else:
                    arr = np.stack(vals, axis=0)
                    r["stacked"] = "the output has no batch axis; the sample axis was added"
            f = d / f"ref.{safe(n)}.npy"
            np.save(f, arr)
            r.update({"file": f.relative_to(self.out).as_posix(), "shape": list(arr.shape), "dtype": str(arr.dtype)})
            r["tolerance"] = self.tolerance(family, precision, o, arr, model_path, bool(r.get("zipmap_classes")))
            refs[n] = r
        entry["reference"] = refs

        # Does onnxruntime take the whole batch in one run? (Only meaningful with a free first axis.)
        if entry["allows_batch_gt1"] and x.shape[0] > 1:
            try:
                sess.run(None, {inp["name"]: x})
                entry["ort_batch_run"] = "ok"
            except Exception as e:  # noqa: BLE001
                entry["ort_batch_run"] = first_line(e)
        self.entries.append(entry)
        log(f"  {entry['bytes']} bytes, ops {facts['ops']}")

    @staticmethod
    def tolerance(family: str, precision: str, o: dict[str, Any], ref: np.ndarray, path: Path, zipmap: bool) -> dict[str, Any]:
        dtype = str(ref.dtype)
        scale = float(np.max(np.abs(ref))) if ref.size and ref.dtype.kind == "f" else 0.0
        if ref.dtype.kind in "iub" or ref.dtype.kind in "OU":
            return {"class": "exact", "rtol": 0.0, "atol": 0.0}
        if precision in ("int8-qdq", "int8-qop"):
            step = quant_step(path, o["name"])
            if step is not None:
                return {"class": "int8: one quantization step (output scale)", "rtol": 0.0, "atol": step}
            return {"class": "int8: one step of the output range /255 (no DequantizeLinear scale found)", "rtol": 0.0, "atol": scale / 127.5}
        if precision == "int8-dynamic":
            return {"class": "int8-dynamic: max|ref|/127", "rtol": 0.0, "atol": scale / 127.0}
        if family == "tree":
            return {"class": "tree: 1e-5", "rtol": TREE_ATOL, "atol": TREE_ATOL * max(1.0, scale)}
        return {"class": f"{dtype}: 1e-4 relative", "rtol": FP32_RTOL, "atol": FP32_RTOL * max(scale, 1e-6)}


# --------------------------------------------------------------------------------------------- #
# torch models
# --------------------------------------------------------------------------------------------- #


def torch_models():  # noqa: ANN201 -- torch is imported lazily
    import torch
    from torch import nn

    class KwsDsCnn(nn.Module):
        """Depthwise-separable keyword-spotting CNN (Hello Edge DS-CNN-S) on 49x10 MFCC, 12 classes."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(1, 64, (10, 4), stride=(2, 2), padding=(5, 1), bias=False), nn.BatchNorm2d(64), nn.ReLU()]
            for _ in range(4):
                layers += [
                    nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                    nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                ]
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    class KwsGru(nn.Module):
        """GRU keyword spotter: 49 frames of 10 MFCC -> last hidden state -> 12 classes."""

        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(10, 64, batch_first=True)
            self.fc = nn.Linear(64, 12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(x)
            return self.fc(out[:, -1, :])

    class LstmAutoencoder(nn.Module):
        """Encoder LSTM -> last hidden state repeated over time -> decoder LSTM -> per-step Linear."""

        def __init__(self, steps: int = 32, features: int = 3, hidden: int = 32) -> None:
            super().__init__()
            self.steps = steps
            self.enc = nn.LSTM(features, hidden, batch_first=True)
            self.dec = nn.LSTM(hidden, hidden, batch_first=True)
            self.out = nn.Linear(hidden, features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, (h, _) = self.enc(x)
            z = h[-1].unsqueeze(1).repeat(1, self.steps, 1)
            y, _ = self.dec(z)
            return self.out(y)

    class DenseAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    class SensorCnn1d(nn.Module):
        """1-D CNN on accelerometer windows: 3 axes x 128 samples -> 6 activities."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv1d(3, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
                nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
                nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 6),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return {
        "kws_cnn": (KwsDsCnn, (1, 49, 10)),
        "kws_gru": (KwsGru, (49, 10)),
        "lstm_ae": (LstmAutoencoder, (32, 3)),
        "dense_ae": (DenseAutoencoder, (64,)),
        "sensor_cnn1d": (SensorCnn1d, (3, 128)),
    }


def randomize_bn(model: Any, seed: int) -> None:
    """Random BatchNorm statistics and affine parameters, so that exporters cannot fold an identity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


TS_CALL = (
    "torch.onnx.export(model.eval(), (x,), f, dynamo=False, opset_version=17, input_names=['input'], "
    "output_names=['output'], dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}})"
)
DYNAMO_CALL = (
    "torch.onnx.export(model.eval(), (x,), f, dynamo=True, input_names=['input'], output_names=['output'], "
    "dynamic_shapes=({0: 'batch'},))  # defaults: external_data=True, optimize=True, opset = exporter's default"
)


def export_torch(model: Any, x: Any, path: Path, dynamo: bool) -> None:
    import torch

    model.eval()
    if dynamo:
        torch.onnx.export(
            model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["output"], dynamic_shapes=({0: "batch"},)
        )
    else:
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )


def add_torch(zoo: Zoo, v: dict[str, str]) -> None:
    import torch
    import torchvision

    torch.set_num_threads(1)
    tv_versions = {"torch": v.get("torch"), "torchvision": v.get("torchvision"), "onnxscript": v.get("onnxscript")}
    exporters = [("ts", False, "torch.onnx TorchScript exporter", TS_CALL), ("dynamo", True, "torch.onnx dynamo exporter", DYNAMO_CALL)]

    classifiers = [
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
        ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small),
        ("resnet18", torchvision.models.resnet18),
        ("efficientnet_b0", torchvision.models.efficientnet_b0),
        ("shufflenet_v2_x1_0", torchvision.models.shufflenet_v2_x1_0),
        ("squeezenet1_1", torchvision.models.squeezenet1_1),
    ]
    for i, (arch, ctor) in enumerate(classifiers):
        for tag, dynamo, tool, call in exporters:
            name = f"tv_{arch}_{tag}"

            def make(d: Path, arch: str = arch, ctor: Any = ctor, dynamo: bool = dynamo, i: int = i) -> tuple[Path, np.ndarray]:
                torch.manual_seed(100 + i)
                model = ctor(weights=None).eval()
                randomize_bn(model, 200 + i)
                ex = torch.from_numpy(np.random.default_rng(300 + i).standard_normal((2, 3, 224, 224), dtype=np.float32))
                p = d / f"{arch}.onnx"
                export_torch(model, ex, p, dynamo)
                x = np.random.default_rng(400 + i).standard_normal((N_IMAGE, 3, 224, 224), dtype=np.float32)
                return p, x

            zoo.build(
                name,
                {"tool": tool, "versions": tv_versions, "call": f"torchvision.models.{arch}(weights=None); " + call},
                "cnn", "fp32", make,
                notes=["random weights (torch.manual_seed), BatchNorm statistics randomized (seeded)", "example input for export: batch 2"],
            )

    # MobileNetV2 at width 0.35 (the narrow MobileNetV2 edge users deploy), TorchScript exporter:
    # the MobileNetV2-class network of the ARM instruction counts (issue 35), small enough to run
    # under qemu on every board run, quantized below like the full-width one.
    def make_035(d: Path) -> tuple[Path, np.ndarray]:
        torch.manual_seed(160)
        model = torchvision.models.mobilenet_v2(weights=None, width_mult=0.35).eval()
        randomize_bn(model, 260)
        ex = torch.from_numpy(np.random.default_rng(360).standard_normal((2, 3, 224, 224), dtype=np.float32))
        p = d / "mobilenet_v2_035.onnx"
        export_torch(model, ex, p, False)
        x = np.random.default_rng(460).standard_normal((N_IMAGE, 3, 224, 224), dtype=np.float32)
        return p, x

    zoo.build(
        "tv_mobilenet_v2_035_ts",
        {"tool": exporters[0][2], "versions": tv_versions, "call": "torchvision.models.mobilenet_v2(weights=None, width_mult=0.35); " + TS_CALL},
        "cnn", "fp32", make_035,
        notes=["random weights (torch.manual_seed), BatchNorm statistics randomized (seeded)", "example input for export: batch 2"],
    )

    # The detector: torchvision's SSDlite, random weights, TorchScript exporter, fixed 1x3x320x320.
    # With raw random weights its features saturate, every class score ties to float precision
    # (0.0145028 three hundred times) and which of the tied boxes NMS keeps is arbitrary:
    # onnxruntime with and without its graph optimisations disagreed by 280 px. A trained detector
    # is not like that, so the weights are made to behave like one's: BatchNorm statistics
    # measured on synthetic scenes (as training leaves them) and the class logits scaled x10
    # (confident, well-separated scores). `conditioned()` checks the result below.
    def scene(r: np.random.Generator) -> np.ndarray:
        """A synthetic 3x320x320 scene in [0, 1]: a noisy grey background and 12 flat rectangles."""
        x = np.full((3, 320, 320), 0.5, np.float32) + r.normal(0, 0.05, (3, 320, 320)).astype(np.float32)
        for _ in range(12):
            x0, y0 = r.integers(0, 280, 2)
            w, h = r.integers(20, 160, 2)
            x[:, y0:y0 + h, x0:x0 + w] = r.random(3)[:, None, None]
        return np.clip(x, 0, 1).astype(np.float32)

    def make_ssd(d: Path) -> tuple[Path, np.ndarray]:
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        torch.manual_seed(150)
        det = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
        with torch.no_grad():
            bns = [m for m in det.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batches
            det.train()
            r = np.random.default_rng(250)
            for _ in range(4):
                images = list(torch.from_numpy(np.stack([scene(r) for _ in range(4)])))
                features = det.backbone(det.transform(images)[0].tensors)
                det.head(list(features.values()))
            for branch in det.head.classification_head.module_list:
                [c for c in branch.modules() if isinstance(c, torch.nn.Conv2d)][-1].weight.mul_(10.0)
        det.eval()

        class Wrapped(torch.nn.Module):
            """Tensor in, tensors out: torchvision's detectors take a list of images and return dicts."""

            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, x: torch.Tensor):  # noqa: ANN202
                o = self.m([x[0]])[0]
                return o["boxes"], o["scores"], o["labels"]

        ex = torch.from_numpy(scene(np.random.default_rng(350))[None])
        p = d / "ssdlite320_mobilenet_v3_large.onnx"
        torch.onnx.export(
            Wrapped(det).eval(), (ex,), str(p), dynamo=False, opset_version=17, input_names=["images"],
            output_names=["boxes", "scores", "labels"],
        )
        x = scene(np.random.default_rng(450))[None]
        conditioned(p, {"images": x})
        return p, x

    zoo.build(
        "tv_ssdlite320_ts",
        {
            "tool": "torch.onnx TorchScript exporter",
            "versions": tv_versions,
            "call": "ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval(), wrapped as "
            "x[1,3,320,320] -> (boxes, scores, labels) of model([x[0]])[0]; torch.onnx.export(w, (x,), f, dynamo=False, "
            "opset_version=17, input_names=['images'], output_names=['boxes','scores','labels']) -- fixed input, no dynamic axes",
        },
        "detector", "fp32", make_ssd, outputs_batched=False,
        notes=[
            "random weights; BatchNorm statistics measured on 16 synthetic scenes (train mode, cumulative average); "
            "class logits scaled x10 so scores are spread as a trained detector's (raw random weights tie every score)",
            "input: a synthetic scene (grey noise and 12 flat rectangles) 1x3x320x320; outputs have no batch axis (K detections)",
            "well-conditioned: onnxruntime with and without graph optimisations gives the same detections",
        ],
    )

    # Small custom modules, both exporters.
    for i, (base, (cls, shape)) in enumerate(torch_models().items()):
        family = {"kws_cnn": "cnn", "sensor_cnn1d": "cnn", "kws_gru": "recurrent", "lstm_ae": "recurrent", "dense_ae": "dense"}[base]
        for tag, dynamo, tool, call in exporters:

            def make(d: Path, base: str = base, cls: Any = cls, shape: tuple[int, ...] = shape, dynamo: bool = dynamo, i: int = i) -> tuple[Path, np.ndarray]:
                torch.manual_seed(500 + i)
                model = cls().eval()
                randomize_bn(model, 600 + i)
                ex = torch.from_numpy(np.random.default_rng(700 + i).standard_normal((2, *shape), dtype=np.float32))
                p = d / f"{base}.onnx"
                export_torch(model, ex, p, dynamo)
                x = np.random.default_rng(800 + i).standard_normal((N_SMALL, *shape), dtype=np.float32)
                return p, x

            zoo.build(
                f"{base}_{tag}",
                {"tool": tool, "versions": tv_versions, "call": f"{cls.__name__}() (models/zoo/make_zoo.py); " + call},
                family, "fp32", make,
                notes=[(cls.__doc__ or "").strip() or cls.__name__, "random weights (torch.manual_seed)"],
            )


# --------------------------------------------------------------------------------------------- #
# onnxruntime quantization
# --------------------------------------------------------------------------------------------- #


def add_quantized(zoo: Zoo, v: dict[str, str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str, data: np.ndarray) -> None:
            self.name, self.data, self.i = name, data, 0

        def get_next(self):  # noqa: ANN201
            if self.i >= len(self.data):
                return None
            self.i += 1
            return {self.name: self.data[self.i - 1 : self.i]}

        def rewind(self) -> None:
            self.i = 0

    qv = {"onnxruntime": v.get("onnxruntime"), "onnx": v.get("onnx")}
    sources = [("tv_mobilenet_v2_ts", (3, 224, 224), N_CALIB_IMAGE, N_IMAGE), ("tv_mobilenet_v2_035_ts", (3, 224, 224), N_CALIB_IMAGE, N_IMAGE), ("kws_cnn_ts", (1, 49, 10), N_CALIB_SMALL, N_SMALL), ("sensor_cnn1d_ts", (3, 128), N_CALIB_SMALL, N_SMALL)]
    combos = [
        ("qdq_u8s8_pt", QuantType.QUInt8, QuantType.QInt8, False),
        ("qdq_u8s8_pc", QuantType.QUInt8, QuantType.QInt8, True),
        ("qdq_s8s8_pt", QuantType.QInt8, QuantType.QInt8, False),
        ("qdq_s8s8_pc", QuantType.QInt8, QuantType.QInt8, True),
        ("qdq_u8u8_pt", QuantType.QUInt8, QuantType.QUInt8, False),
    ]

    def pre(src: Path, d: Path) -> Path:
        p = d / f"{src.stem}.pre.onnx"
        quant_pre_process(str(src), str(p))
        return p

    for k, (src_name, shape, n_cal, n_ref) in enumerate(sources):
        src = zoo.paths.get(src_name)
        base = src_name.removesuffix("_ts")
        family = "cnn"
        if src is None:
            for tag, *_ in combos + [("qop",)]:
                if zoo.wanted(f"q_{base}_{tag}"):
                    zoo.failed(f"q_{base}_{tag}", {"tool": "onnxruntime.quantization"}, family, "int8", RuntimeError(f"source {src_name} was not built"))
            continue
        calib = np.random.default_rng(900 + k).standard_normal((n_cal, *shape), dtype=np.float32)
        ref_x = np.random.default_rng(950 + k).standard_normal((n_ref, *shape), dtype=np.float32)
        for tag, act, wt, pc in combos:

            def make(d: Path, act: Any = act, wt: Any = wt, pc: bool = pc, src: Path = src, calib: np.ndarray = calib, ref_x: np.ndarray = ref_x, base: str = base, tag: str = tag) -> tuple[Path, np.ndarray]:
                pp = pre(src, d)
                p = d / f"{base}_{tag}.onnx"
                quantize_static(str(pp), str(p), Reader("input", calib), quant_format=QuantFormat.QDQ, per_channel=pc, activation_type=act, weight_type=wt)
                pp.unlink()
                return p, ref_x

            zoo.build(
                f"q_{base}_{tag}",
                {
                    "tool": "onnxruntime.quantization.quantize_static (QDQ)",
                    "versions": qv,
                    "call": f"quant_pre_process(src, pre); quantize_static(pre, f, reader, quant_format=QuantFormat.QDQ, per_channel={pc}, "
                    f"activation_type=QuantType.{act.name}, weight_type=QuantType.{wt.name})  # MinMax, {n_cal} N(0,1) samples seed {900 + k}",
                },
                family, "int8-qdq", make, source=src_name,
            )

        def make_qop(d: Path, src: Path = src, calib: np.ndarray = calib, ref_x: np.ndarray = ref_x, base: str = base) -> tuple[Path, np.ndarray]:
            pp = pre(src, d)
            p = d / f"{base}_qop.onnx"
            quantize_static(str(pp), str(p), Reader("input", calib), quant_format=QuantFormat.QOperator)
            pp.unlink()
            return p, ref_x

        zoo.build(
            f"q_{base}_qop",
            {
                "tool": "onnxruntime.quantization.quantize_static (QOperator)",
                "versions": qv,
                "call": f"quant_pre_process(src, pre); quantize_static(pre, f, reader, quant_format=QuantFormat.QOperator)  # other options default; {n_cal} N(0,1) samples seed {900 + k}",
            },
            family, "int8-qop", make_qop, source=src_name,
        )

    for k, (src_name, shape) in enumerate([("kws_gru_ts", (49, 10)), ("lstm_ae_ts", (32, 3)), ("dense_ae_ts", (64,))]):
        base = src_name.removesuffix("_ts")
        name = f"qd_{base}"
        src = zoo.paths.get(src_name)
        if src is None:
            if zoo.wanted(name):
                zoo.failed(name, {"tool": "onnxruntime.quantization.quantize_dynamic"}, "recurrent", "int8-dynamic", RuntimeError(f"source {src_name} was not built"))
            continue

        def make_dyn(d: Path, src: Path = src, shape: tuple[int, ...] = shape, base: str = base, k: int = k) -> tuple[Path, np.ndarray]:
            pp = pre(src, d)
            p = d / f"{base}_dynamic.onnx"
            quantize_dynamic(str(pp), str(p))
            pp.unlink()
            return p, np.random.default_rng(980 + k).standard_normal((N_SMALL, *shape), dtype=np.float32)

        zoo.build(
            name,
            {"tool": "onnxruntime.quantization.quantize_dynamic", "versions": qv, "call": "quant_pre_process(src, pre); quantize_dynamic(pre, f)  # defaults (weight_type=QInt8)"},
            "dense" if base == "dense_ae" else "recurrent", "int8-dynamic", make_dyn, source=src_name,
        )


# --------------------------------------------------------------------------------------------- #
# scikit-learn (skl2onnx), XGBoost and LightGBM (onnxmltools)
# --------------------------------------------------------------------------------------------- #


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(X_train, y_train, X_samples) per task, float32 features, fixed random_state."""
    from sklearn.datasets import load_iris, make_classification, make_regression

    out = {}
    X, y = make_classification(n_samples=600, n_features=10, n_informative=6, n_redundant=2, n_classes=3, random_state=0)
    out["multi"] = (X[:500].astype(np.float32), y[:500], X[500 : 500 + N_SMALL].astype(np.float32))
    X, y = make_classification(n_samples=600, n_features=10, n_informative=5, n_classes=2, random_state=1)
    out["binary"] = (X[:500].astype(np.float32), y[:500], X[500 : 500 + N_SMALL].astype(np.float32))
    X, y = make_regression(n_samples=600, n_features=8, n_informative=6, noise=0.5, random_state=2)
    out["reg"] = (X[:500].astype(np.float32), y[:500].astype(np.float32), X[500 : 500 + N_SMALL].astype(np.float32))
    iris = load_iris()
    rng = np.random.default_rng(3)
    idx = rng.permutation(len(iris.target))
    X, y = iris.data[idx].astype(np.float32), iris.target[idx]
    out["iris"] = (X[:142], y[:142], X[142 : 142 + N_SMALL])
    return out


def add_sklearn(zoo: Zoo, v: dict[str, str]) -> dict[str, Any]:
    from skl2onnx import get_latest_tested_opset_version, to_onnx
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, IsolationForest, RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR

    data = datasets()
    sv = {"scikit-learn": v.get("scikit-learn"), "skl2onnx": v.get("skl2onnx"), "onnx": v.get("onnx")}
    fitted: dict[str, Any] = {}

    classifiers = [
        ("rf_multi", "tree", "multi", lambda: RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0, n_jobs=1)),
        ("rf_binary", "tree", "binary", lambda: RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0, n_jobs=1)),
        ("gb_multi", "tree", "multi", lambda: GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)),
        ("svc_multi", "svm", "multi", lambda: SVC(probability=True, random_state=0)),
        ("knn_multi", "knn", "multi", lambda: KNeighborsClassifier(n_neighbors=5)),
        ("pipe_scaler_logreg_iris", "linear", "iris", lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
    ]
    for tag, family, ds, ctor in classifiers:
        X, y, Xs = data[ds]
        model = ctor().fit(X, y)
        fitted[tag] = (model, X, Xs)
        est = model.steps[-1][1] if hasattr(model, "steps") else model
        for zipmap in (True, False):
            name = f"sk_{tag}" + ("" if zipmap else "_nozipmap")

            def make(d: Path, model: Any = model, est: Any = est, X: np.ndarray = X, Xs: np.ndarray = Xs, zipmap: bool = zipmap, tag: str = tag) -> tuple[Path, np.ndarray]:
                onx = to_onnx(model, X[:1]) if zipmap else to_onnx(model, X[:1], options={id(est): {"zipmap": False}})
                p = d / f"{tag}.onnx"
                p.write_bytes(onx.SerializeToString())
                return p, Xs

            call = "to_onnx(model, X[:1])" if zipmap else "to_onnx(model, X[:1], options={id(clf): {'zipmap': False}})"
            zoo.build(
                name,
                {"tool": "skl2onnx", "versions": sv, "call": f"{type(model).__name__ if not hasattr(model, 'steps') else 'make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))'}; {call}  # X float32"},
                family, "fp32", make,
                notes=[f"trained on {ds} ({'load_iris' if ds == 'iris' else 'make_classification'}), samples are held-out rows", repr(model)]
                + (["scikit-learn 1.9 deprecates SVC(probability=True) (FutureWarning; removal in 1.11)"] if tag.startswith("svc") else []),
            )

    regressors = [
        ("rf_reg", "tree", lambda: RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0, n_jobs=1)),
        ("gb_reg", "tree", lambda: GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0)),
        ("svr", "svm", lambda: SVR()),
        ("knn_reg", "knn", lambda: KNeighborsRegressor(n_neighbors=5)),
        ("linreg", "linear", lambda: LinearRegression()),
    ]
    for tag, family, ctor in regressors:
        X, y, Xs = data["reg"]
        model = ctor().fit(X, y)

        def make_r(d: Path, model: Any = model, X: np.ndarray = X, Xs: np.ndarray = Xs, tag: str = tag) -> tuple[Path, np.ndarray]:
            p = d / f"{tag}.onnx"
            p.write_bytes(to_onnx(model, X[:1]).SerializeToString())
            return p, Xs

        zoo.build(f"sk_{tag}", {"tool": "skl2onnx", "versions": sv, "call": f"{model!r}; to_onnx(model, X[:1])  # X float32"}, family, "fp32", make_r, notes=["trained on make_regression (random_state=2)"])

    X, _, Xs = data["multi"]
    iso = IsolationForest(n_estimators=20, random_state=0).fit(X)

    iso_notes: list[str] = []

    def make_iso(d: Path) -> tuple[Path, np.ndarray]:
        # The call as usually quoted names only the ML opset; skl2onnx 1.20 then raises
        # "op_version must be specified." The documented call adds the default-domain opset.
        try:
            to_onnx(iso, X[:1], target_opset={"ai.onnx.ml": 3})
            iso_notes.append("to_onnx(model, X[:1], target_opset={'ai.onnx.ml': 3}) also works")
        except Exception as e:  # noqa: BLE001
            iso_notes.append(f"to_onnx(model, X[:1], target_opset={{'ai.onnx.ml': 3}}) raises {first_line(e)}; the default-domain opset is given as skl2onnx's documentation does")
        p = d / "isolation_forest.onnx"
        p.write_bytes(to_onnx(iso, X[:1], target_opset={"": get_latest_tested_opset_version(), "ai.onnx.ml": 3}).SerializeToString())
        return p, Xs

    zoo.build(
        "sk_isolation_forest",
        {
            "tool": "skl2onnx",
            "versions": sv,
            "call": f"IsolationForest(n_estimators=20, random_state=0); to_onnx(model, X[:1], target_opset={{'': {get_latest_tested_opset_version()}, 'ai.onnx.ml': 3}})  # get_latest_tested_opset_version()",
        },
        "tree", "fp32", make_iso, notes=iso_notes,
    )
    return {"data": data, "fitted": fitted}


def add_boosters(zoo: Zoo, v: dict[str, str], data: dict[str, Any]) -> None:
    import lightgbm
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    bv = {"onnxmltools": v.get("onnxmltools"), "xgboost": v.get("xgboost"), "lightgbm": v.get("lightgbm"), "onnx": v.get("onnx")}
    jobs = [
        ("xgb_binary", "binary", lambda: xgboost.XGBClassifier(n_estimators=20, max_depth=4, random_state=0, n_jobs=1), "xgb"),
        ("xgb_multi", "multi", lambda: xgboost.XGBClassifier(n_estimators=20, max_depth=4, random_state=0, n_jobs=1), "xgb"),
        ("xgb_reg", "reg", lambda: xgboost.XGBRegressor(n_estimators=20, max_depth=4, random_state=0, n_jobs=1), "xgb"),
        ("lgbm_binary", "binary", lambda: lightgbm.LGBMClassifier(n_estimators=20, random_state=0, n_jobs=1, verbose=-1), "lgbm"),
        ("lgbm_multi", "multi", lambda: lightgbm.LGBMClassifier(n_estimators=20, random_state=0, n_jobs=1, verbose=-1), "lgbm"),
        ("lgbm_reg", "reg", lambda: lightgbm.LGBMRegressor(n_estimators=20, random_state=0, n_jobs=1, verbose=-1), "lgbm"),
    ]
    for tag, ds, ctor, kind in jobs:
        X, y, Xs = data[ds]

        def make(d: Path, ctor: Any = ctor, X: np.ndarray = X, y: np.ndarray = y, Xs: np.ndarray = Xs, tag: str = tag, kind: str = kind) -> tuple[Path, np.ndarray]:
            model = ctor().fit(X, y)
            types = [("input", FloatTensorType([None, X.shape[1]]))]
            # name=: without it onnxmltools names the graph with a random uuid4, the only byte that differs between runs.
            conv = onnxmltools.convert_xgboost if kind == "xgb" else onnxmltools.convert_lightgbm
            onx = conv(model, name=tag, initial_types=types)
            p = d / f"{tag}.onnx"
            onnxmltools.utils.save_model(onx, str(p))
            return p, Xs

        fn = "convert_xgboost" if kind == "xgb" else "convert_lightgbm"
        zoo.build(
            tag,
            {"tool": f"onnxmltools.{fn}", "versions": bv, "call": f"{ctor().__class__.__name__}(n_estimators=20, ...).fit(X, y); onnxmltools.{fn}(model, name='{tag}', initial_types=[('input', FloatTensorType([None, {X.shape[1]}]))])  # other options default"},
            "tree", "fp32", make, notes=[f"trained on {ds} synthetic data"],
        )


# --------------------------------------------------------------------------------------------- #
# MLflow model directories
# --------------------------------------------------------------------------------------------- #


def add_mlflow(zoo: Zoo, v: dict[str, str], sk: dict[str, Any]) -> None:
    mv = {"mlflow-skinny": v.get("mlflow-skinny") or v.get("mlflow"), "onnx": v.get("onnx")}

    def mlflow_dir(d: Path) -> Path:
        return d / "mlflow_model"  # save_model wants a path that does not exist yet

    # torch exports through mlflow.onnx.save_model: a large dynamo export (external data from the
    # exporter), a small TorchScript export with MLflow's defaults, and the same without external data.
    torch_sources = [
        ("mlflow_onnx_torch_dynamo", "tv_mobilenet_v2_dynamo", (N_IMAGE, 3, 224, 224), 1100, {}, "cnn"),
        ("mlflow_onnx_torch_ts_small", "kws_cnn_ts", (N_SMALL, 1, 49, 10), 1101, {}, "cnn"),
        ("mlflow_onnx_torch_ts_inline", "kws_cnn_ts", (N_SMALL, 1, 49, 10), 1101, {"save_as_external_data": False}, "cnn"),
    ]
    for name, src_name, shape, seed, kwargs, family in torch_sources:
        src = zoo.paths.get(src_name)

        def make_torch(d: Path, src: Path | None = src, src_name: str = src_name, shape: tuple[int, ...] = shape, seed: int = seed, kwargs: dict[str, Any] = kwargs) -> tuple[Path, np.ndarray]:
            import mlflow.onnx
            from mlflow.models import infer_signature

            if src is None:
                raise RuntimeError(f"source {src_name} was not built")
            model = onnx.load(str(src))  # pulls any external data of the exporter into memory
            md = mlflow_dir(d)
            x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
            mlflow.onnx.save_model(model, str(md), signature=infer_signature(x), **kwargs)
            return md / "model.onnx", x

        extra_args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        zoo.build(
            name,
            {
                "tool": "mlflow.onnx.save_model",
                "versions": mv,
                "call": f"mlflow.onnx.save_model(onnx.load('{src.relative_to(zoo.out).as_posix() if src else src_name}'), path, signature=infer_signature(x){extra_args})"
                + ("" if kwargs else "  # defaults otherwise: save_as_external_data=True"),
            },
            family, "fp32", make_torch, source=src_name, extra={"mlflow_dir": f"{name}/mlflow_model"},
        )

    model, X, Xs = sk["fitted"]["pipe_scaler_logreg_iris"]

    def make_skl(d: Path) -> tuple[Path, np.ndarray]:
        import mlflow.onnx
        from skl2onnx import to_onnx

        from mlflow.models import infer_signature

        md = mlflow_dir(d)
        mlflow.onnx.save_model(to_onnx(model, X[:1]), str(md), input_example=X[:2], signature=infer_signature(X[:2]))
        return md / "model.onnx", Xs

    zoo.build(
        "mlflow_onnx_skl2onnx",
        {"tool": "mlflow.onnx.save_model", "versions": {**mv, "skl2onnx": v.get("skl2onnx")}, "call": "mlflow.onnx.save_model(to_onnx(pipe, X[:1]), path, input_example=X[:2], signature=infer_signature(X[:2]))  # save_model infers no signature itself"},
        "linear", "fp32", make_skl, extra={"mlflow_dir": "mlflow_onnx_skl2onnx/mlflow_model"},
        notes=["the skl2onnx default conversion (ZipMap, unnamed batch dim) of make_pipeline(StandardScaler(), LogisticRegression()) on iris"],
    )

    name = "mlflow_sklearn_default"
    if zoo.wanted(name):
        log(f"- {name}")
        producer = {"tool": "mlflow.sklearn.save_model", "versions": {**mv, "scikit-learn": v.get("scikit-learn"), "skops": v.get("skops")}, "call": "mlflow.sklearn.save_model(pipe, path)  # default serialization_format (skops outside Databricks)"}
        try:
            import mlflow.sklearn
            import yaml

            d = zoo.dir(name)
            md = mlflow_dir(d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mlflow.sklearn.save_model(model, str(md))
            mlmodel = yaml.safe_load((md / "MLmodel").read_text())
            files = sorted(p for p in md.rglob("*") if p.is_file())
            zoo.entries.append(
                {
                    "name": name,
                    "file": None,
                    "mlflow_dir": md.relative_to(zoo.out).as_posix(),
                    "model_files": [p.relative_to(zoo.out).as_posix() for p in files],
                    "bytes": sum(p.stat().st_size for p in files),
                    "producer": producer,
                    "family": "linear",
                    "precision": "fp32",
                    "expect": "refuse",
                    "mlflow_flavors": {k: {kk: vv for kk, vv in f.items() if kk in ("serialization_format", "pickled_model", "model_path", "loader_module", "code")} for k, f in mlmodel.get("flavors", {}).items()},
                    "notes": ["not ONNX: Drover must refuse it (drover bundle --mlflow) without loading it"],
                }
            )
            log(f"  flavors: {zoo.entries[-1]['mlflow_flavors']}")
        except Exception as e:  # noqa: BLE001
            zoo.failed(name, producer, "linear", "fp32", e)


# --------------------------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------------------------- #


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = os.environ.get("DROVER_ZOO_DIR") or str(REPO / "target" / "zoo")
    ap.add_argument("--out", default=default_out, help=f"output directory (default: $DROVER_ZOO_DIR or {REPO / 'target' / 'zoo'})")
    ap.add_argument("--force", action="store_true", help="rebuild even when the manifest's cache key matches")
    ap.add_argument("--only", help="regex: build only the models whose name matches (the manifest is then marked partial and never cached)")
    args = ap.parse_args()

    out = Path(args.out).resolve()
    key = cache_key()
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not args.force and not args.only:
        try:
            old = json.loads(manifest_path.read_text())
            complete = all(
                (out / f).exists() for e in old.get("entries", []) for f in e.get("model_files", []) + [e.get("input_file") or "manifest.json"]
            )
            if old.get("cache_key") == key and not old.get("partial") and complete:
                log(f"{manifest_path}: up to date (cache key {key[:12]}), {len(old['entries'])} models; nothing to do (--force rebuilds)")
                return 0
        except (OSError, ValueError):
            pass

    if out.exists() and any(out.iterdir()):
        if not manifest_path.exists() and not (out / ".drover-zoo").exists():
            log(f"{out} is not empty and holds no zoo manifest: refusing to clear it")
            return 2
        if not args.only:
            for p in out.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / ".drover-zoo").write_text("written by models/zoo/make_zoo.py\n")
    if manifest_path.exists():
        manifest_path.unlink()

    t0 = time.perf_counter()
    v = versions()
    log(f"zoo -> {out}\nversions: {v}")
    zoo = Zoo(out, re.compile(args.only) if args.only else None)
    add_torch(zoo, v)
    add_quantized(zoo, v)
    sk = add_sklearn(zoo, v)
    add_boosters(zoo, v, sk["data"])
    add_mlflow(zoo, v, sk)

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    manifest = {
        "generator": "models/zoo/make_zoo.py",
        "script_version": SCRIPT_VERSION,
        "cache_key": key,
        "cache_key_of": "sha256(make_zoo.py + NUL + requirements.txt)",
        "partial": bool(args.only),
        "versions": v,
        "platform": {"machine": platform.machine(), "system": platform.system()},
        "generation_seconds": round(time.perf_counter() - t0, 1),
        "total_bytes": total,
        "tolerance_rule": "|agent - ort| <= atol + rtol * |ort| elementwise, per output; exact for integer outputs",
        "entries": zoo.entries,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    failed = [e["name"] for e in zoo.entries if "build_error" in e]
    log(
        f"\n{len(zoo.entries)} models ({len(failed)} failed to build{': ' + ', '.join(failed) if failed else ''}), "
        f"{total / 1e6:.1f} MB in {out}, {manifest['generation_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
