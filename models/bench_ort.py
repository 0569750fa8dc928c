#!/usr/bin/env python3
"""Baseline latency of onnxruntime on Drover's reference models.

For every non-refused model in models/reference/manifest.json: one session
(CPUExecutionProvider, 1 intra-op thread, sequential), one reference sample
(batch 1), `--warmup` untimed then `--runs` timed `sess.run` calls, each timed
with time.perf_counter_ns. Also times a one-Relu model on a 1-element tensor
("call_overhead_us": median per-call cost of onnxruntime itself).

Prints one JSON object to stdout:
  {"onnxruntime": "<version>", "runs": N, "warmup": N, "call_overhead_us": x,
   "models": {"cnn": {"median_us": x, "p99_us": x}, ...}}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def make_session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def first_sample_feeds(sess: ort.InferenceSession, jsonl: Path) -> dict[str, np.ndarray]:
    """First reference sample as a batch of one, typed from the session's inputs."""
    sample = json.loads(jsonl.read_text().splitlines()[0])
    inputs = sess.get_inputs()
    if not isinstance(sample, dict):
        assert len(inputs) == 1
        sample = {inputs[0].name: sample}
    return {i.name: np.asarray(sample[i.name], dtype=ORT_TYPES[i.type])[None] for i in inputs}


def time_runs(sess: ort.InferenceSession, feeds, warmup: int, runs: int) -> tuple[float, float]:
    run = sess.run
    for _ in range(warmup):
        run(None, feeds)
    samples = np.empty(runs, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(runs):
        t0 = clock()
        run(None, feeds)
        samples[i] = clock() - t0
    us = samples.astype(np.float64) / 1000.0
    return float(np.median(us)), float(np.percentile(us, 99))


def relu_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "one_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--manifest", type=Path, default=HERE / "reference" / "manifest.json")
    args = ap.parse_args()
    ort.set_default_logger_severity(3)

    manifest = json.loads(args.manifest.read_text())
    base = args.manifest.resolve().parent.parent  # paths in the manifest are relative to models/

    sess = make_session(relu_model())
    overhead, _ = time_runs(sess, {"x": np.zeros(1, dtype=np.float32)}, args.warmup, args.runs)

    results = {}
    for m in manifest["models"]:
        if m["refused"] or m["reference"] is None:
            continue
        sess = make_session(str(base / m["file"]))
        feeds = first_sample_feeds(sess, base / m["reference"]["input_jsonl"])
        median, p99 = time_runs(sess, feeds, args.warmup, args.runs)
        results[m["name"]] = {"median_us": round(median, 2), "p99_us": round(p99, 2)}

    print(
        json.dumps(
            {
                "onnxruntime": ort.__version__,
                "runs": args.runs,
                "warmup": args.warmup,
                "call_overhead_us": round(overhead, 2),
                "models": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
