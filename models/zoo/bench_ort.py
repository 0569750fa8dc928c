#!/usr/bin/env python3
"""onnxruntime's side of the zoo bench (tests/benches/zoo.rs): times one model on request.

    python3 models/zoo/bench_ort.py

Reads one JSON request per line on stdin and answers each with one JSON line on stdout, so the
bench can time Drover and onnxruntime on the same model one right after the other (the machines
are shared: figures taken minutes apart are not comparable). A request:

    {"file": "/…/model.onnx", "input": "/…/input.npy", "batch": 1, "budget_s": 1.0, "min_runs": 10}

runs the model in one session (CPUExecutionProvider, 1 intra-op and 1 inter-op thread,
sequential, default graph optimisations -- onnxruntime as users run it) on the first `batch`
samples of the input (repeated when it holds fewer), `min_runs` untimed, then timed `sess.run`
calls until both `min_runs` calls and `budget_s` seconds have passed. The answer:

    {"median_us": x, "runs": n, "onnxruntime": "1.32.0"}   or   {"error": "..."}

`median_us` is per call (divide by `batch` for per sample). The session is built once per file.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort

SESSIONS: dict[str, ort.InferenceSession] = {}


def session(path: str) -> ort.InferenceSession:
    if path not in SESSIONS:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        SESSIONS.clear()  # one model's memory at a time
        SESSIONS[path] = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    return SESSIONS[path]


def batch_of(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // x.shape[0])
    return np.concatenate([x] * reps)[:n] if reps > 1 else x[:n]


def answer(req: dict[str, Any]) -> dict[str, Any]:
    sess = session(req["file"])
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        return {"error": f"{len(inputs)} inputs: the bench feeds one"}
    feeds = {inputs[0].name: batch_of(np.load(req["input"]), int(req["batch"]))}
    run = sess.run
    min_runs = int(req.get("min_runs", 10))
    for _ in range(min_runs):
        run(None, feeds)
    budget_ns = float(req.get("budget_s", 1.0)) * 1e9
    clock = time.perf_counter_ns
    times: list[int] = []
    start = clock()
    while len(times) < min_runs or clock() - start < budget_ns:
        t0 = clock()
        run(None, feeds)
        times.append(clock() - t0)
    return {"median_us": float(np.median(np.array(times, dtype=np.float64))) / 1000.0, "runs": len(times), "onnxruntime": ort.__version__}


def main() -> int:
    ort.set_default_logger_severity(3)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = answer(json.loads(line))
        except Exception as e:  # noqa: BLE001 -- the bench prints the reason in its table
            reply = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
