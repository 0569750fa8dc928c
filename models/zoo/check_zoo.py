#!/usr/bin/env python3
"""Run every model of the zoo (make_zoo.py) through Drover's agent and report parity with onnxruntime.

    python3 models/zoo/check_zoo.py --agent target/release/drover-agent [--zoo DIR]
        [--runner 'qemu-aarch64-static'] [--drover PATH] [--json results.json] [--only REGEX]

For each manifest entry it runs `<runner> <agent> infer --model M --input X --output OUT.jsonl`
(X is the entry's input.npy, or a .jsonl written from it for a model with several inputs), reads
one `{"outputs": {...}}` line per sample, and compares each output with onnxruntime's under the
entry's tolerance (|agent - ort| <= atol + rtol * |ort|; integer outputs exactly). With --drover
(the host's `drover` tools binary; --runner is not applied to it) every model also goes through
`drover bundle M` -- what deploying it takes -- and the MLflow directories through
`drover bundle --mlflow DIR`: the ONNX ones must import, the scikit-learn one must be refused.

It prints one row per model -- loads? runs? parity (max |diff| / that over max |ref|), the agent's
load time, the agent's and onnxruntime's (1 thread) time per sample, the first line of the error --
then the failures grouped by cause. Time per sample: more agent runs, on 8 samples and on 1 (three
of each, the least of each kept), and the difference of the agent's own inference figures over 7;
onnxruntime the best of three passes over the same 8 samples (--no-timing skips all this).
The whole table is always printed; the exit code is 1 if any model failed (a model the exporter
could not write is reported but does not count), 0 otherwise.
Needs numpy; onnxruntime only for the timing column (--no-ort-timing skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

SHORT_TOOL = {
    "torch.onnx TorchScript exporter": "torch TS",
    "torch.onnx dynamo exporter": "torch dynamo",
    "onnxruntime.quantization.quantize_static (QDQ)": "ort static QDQ",
    "onnxruntime.quantization.quantize_static (QOperator)": "ort static QOp",
    "onnxruntime.quantization.quantize_dynamic": "ort dynamic",
    "onnxmltools.convert_xgboost": "onnxmltools xgb",
    "onnxmltools.convert_lightgbm": "onnxmltools lgbm",
    "mlflow.onnx.save_model": "mlflow.onnx",
    "mlflow.sklearn.save_model": "mlflow.sklearn",
}

TIMING_SAMPLES = 8
TIMING_REPEATS = 3
SUMMARY_RE = re.compile(r"(\d+) samples in ([\d.]+) ms \(load ([\d.]+) ms, inference ([\d.]+) ms, ([\d.]+) µs/sample")


def first_error_line(stderr: str, model: Path, inp: Path) -> str:
    """The agent's error, first line, without the repeated `infer M on X: M:` context."""
    lines = [l for l in stderr.splitlines() if l.strip()]
    line = next((l for l in lines if l.startswith("error:")), lines[-1] if lines else "")
    line = line.removeprefix("error: ")
    line = line.replace(f"infer {model} on {inp}: ", "")
    line = line.replace(f"{model}: ", "").replace(str(model), model.name).replace(str(inp), inp.name)
    return line.strip()


def classify(stderr: str, model: Path, inp: Path) -> str:
    """'load' if the model did not load, 'input' if the samples were refused, else 'run'."""
    line = next((l for l in stderr.splitlines() if l.startswith("error:")), "")
    inner = line.removeprefix("error: ").replace(f"infer {model} on {inp}: ", "", 1)
    if inner.startswith(f"{model}:"):
        return "load"
    if inner.startswith("sample "):
        return "run"
    if inner.startswith(str(inp)):
        return "input"
    return "load"


def cause_of(error: str) -> str:
    """A short key to group failures by."""
    m = re.search(r"unsupported operators: (.*)", error)
    if m:
        ops = re.findall(r"([A-Za-z.]+::)?([A-Z][A-Za-z0-9]+)", m.group(1))
        names = sorted({(d or "") + o for d, o in ops if o not in ("Drover",)})
        return "unsupported operators: " + ", ".join(names[:8])
    m = re.search(r"has element type (\S+)", error)
    if m:
        return f"non-tensor/unsupported element type ({m.group(1)})"
    text = re.sub(r"'[^']*'", "'…'", error)
    text = re.sub(r"\d+", "N", text)
    return text[:110]


def sample_count(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").shape[0])


def write_jsonl(entry: dict[str, Any], zoo: Path, out: Path) -> Path:
    """Several inputs: one JSON object per sample naming each input (no batch axis)."""
    arrays = {i["name"]: np.load(zoo / f) for i, f in zip(entry["inputs"], entry["input_files"])}
    n = min(a.shape[0] for a in arrays.values())
    p = out / "input.jsonl"
    with p.open("w") as f:
        for k in range(n):
            f.write(json.dumps({name: a[k].tolist() for name, a in arrays.items()}) + "\n")
    return p


def compare(agent: np.ndarray, ref: np.ndarray, tol: dict[str, Any]) -> dict[str, Any]:
    """ok, max |diff|, max |diff| / max |ref|, elements that differ, and a note on shapes."""
    note = ""
    if agent.shape != ref.shape:
        if agent.size == ref.size:
            note = f"shape {list(agent.shape)} vs onnxruntime {list(ref.shape)}, compared flat"
            agent = agent.reshape(ref.shape)
        else:
            return {"ok": False, "abs": None, "rel": None, "n_diff": None, "note": f"shape {list(agent.shape)} vs onnxruntime {list(ref.shape)}"}
    a, r = agent.astype(np.float64), ref.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(r)
    diff = np.where(both_nan, 0.0, np.abs(a - r))
    nan_mismatch = bool((np.isnan(a) != np.isnan(r)).any())
    if ref.dtype.kind in "iub":
        ok = not nan_mismatch and bool(np.all(diff == 0))
    else:
        # (1 + 1e-5): an int8 output one step off is exactly `atol` apart, give or take a rounding.
        ok = not nan_mismatch and bool(np.all(diff <= tol["atol"] * (1 + 1e-5) + tol["rtol"] * np.abs(r)))
    mabs = float(np.nanmax(diff, initial=0.0))
    scale = float(np.nanmax(np.abs(r), initial=0.0))
    return {"ok": ok, "abs": mabs, "rel": mabs / scale if scale > 0 else (0.0 if mabs == 0 else float("inf")), "n_diff": int(np.count_nonzero(diff)), "size": int(diff.size), "note": note}


def ort_us_per_sample(model: Path, x: np.ndarray, name: str) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        sess.run(None, {name: x[:1]})
        best = float("inf")
        for _ in range(TIMING_REPEATS):
            t = time.perf_counter()
            for i in range(x.shape[0]):
                sess.run(None, {name: x[i : i + 1]})
            best = min(best, (time.perf_counter() - t) * 1e6 / x.shape[0])
        return best
    except Exception:  # noqa: BLE001
        return None


def time_model(entry: dict[str, Any], zoo: Path, model: Path, mdir: Path, args: argparse.Namespace, runner: list[str]) -> dict[str, Any]:
    """Per-sample time: the agent's own inference figure on TIMING_SAMPLES samples minus that on
    one (so the first run's set-up is left out), and onnxruntime (1 thread) after one warm-up run."""
    x = np.load(zoo / entry["input_file"])
    xt = np.resize(x, (TIMING_SAMPLES, *x.shape[1:])).astype(x.dtype)
    t_n, t_1 = mdir / f"timing{TIMING_SAMPLES}.npy", mdir / "timing1.npy"
    np.save(t_n, xt)
    np.save(t_1, xt[:1])
    out: dict[str, Any] = {}
    figures: dict[Path, float] = {}
    for _ in range(TIMING_REPEATS):  # the least of each: the machine may be busy
        for f in (t_n, t_1):
            rc, _, se, _ = run([*runner, args.agent, "infer", "--model", str(model), "--input", str(f), "--output", str(mdir / "timing.out.jsonl")], args.timeout)
            m = SUMMARY_RE.search(se)
            if rc != 0 or not m:
                return out
            figures[f] = min(figures.get(f, float("inf")), float(m.group(4)))
    out["agent_us_per_sample"] = max(0.0, (figures[t_n] - figures[t_1]) * 1e3 / (TIMING_SAMPLES - 1))
    out["agent_first_sample_ms"] = figures[t_1]
    if not args.no_ort_timing:
        out["ort_us_per_sample"] = ort_us_per_sample(model, xt, entry["inputs"][0]["name"])
    return out


def run(cmd: list[str], timeout: float) -> tuple[int, str, str, float]:
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t
    except subprocess.TimeoutExpired:
        return -1, "", f"error: timed out after {timeout:.0f} s", time.perf_counter() - t


def drover_bundle(entry: dict[str, Any], zoo: Path, args: argparse.Namespace, runner: list[str], work: Path) -> dict[str, Any]:
    """`drover bundle M` (or `--mlflow DIR` for an MLflow directory), unsigned, to a temporary file:
    what a user runs to deploy the model."""
    if not args.drover:
        return {"status": "skipped", "error": "needs --drover"}
    if "mlflow_dir" in entry:
        target = zoo / entry["mlflow_dir"]
        source = ["--mlflow", str(target)]
    else:
        target = zoo / entry["file"]
        source = [str(target)]
    out = work / f"{entry['name']}.drv"
    cmd = [args.drover, "bundle", *source, "--name", "zoo", "--version", "1", "--targets", "x86_64", "--out", str(out)]
    rc, so, se, _ = run(cmd, args.timeout)
    out.unlink(missing_ok=True)
    line = next((l for l in se.splitlines() if l.startswith("error:")), next((l for l in reversed(se.splitlines()) if l.strip()), ""))
    line = line.removeprefix("error: ")
    # `bundle <file>: <file>: why` -> `why`; other paths relative to the zoo.
    line = re.sub(r"^bundle \S+: ", "", line)
    line = line.replace(f"{target}: ", "").replace(str(zoo) + "/", "")
    line = re.sub(r"^\S+\.onnx: ", "", line)
    return {"status": "ok" if rc == 0 else "refused", "error": "" if rc == 0 else line.strip(), "stdout": so.strip()[:300]}


def parity(entry: dict[str, Any], zoo: Path, out: Path) -> tuple[bool, float, float, list[str], list[str], dict[str, Any]]:
    """Compares the agent's output lines with onnxruntime's outputs, output by output."""
    lines = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
    n = entry["samples"]
    problems: list[str] = []
    notes: list[str] = []
    if len(lines) != n:
        problems.append(f"{len(lines)} output lines for {n} samples")
    worst_abs, worst_rel, ok_all = 0.0, 0.0, not problems
    per_output: dict[str, Any] = {}
    for name, ref_info in entry["reference"].items():
        ref = np.load(zoo / ref_info["file"])
        vals = [l.get("outputs", {}).get(name) for l in lines]
        if any(v is None for v in vals):
            ok_all = False
            problems.append(f"output '{name}' missing")
            continue
        try:
            agent = np.array(vals, dtype=ref.dtype if ref.dtype.kind in "iufb" else None)
        except (ValueError, TypeError) as e:
            ok_all = False
            problems.append(f"output '{name}': {e}")
            continue
        c = compare(agent, ref, ref_info["tolerance"])
        per_output[name] = c
        if c["note"]:
            notes.append(f"{name}: {c['note']}")
        if not c["ok"]:
            ok_all = False
            if c["abs"] is None:
                problems.append(f"output '{name}': {c['note']}")
            else:
                problems.append(
                    f"output '{name}' outside {ref_info['tolerance']['class']} (atol {ref_info['tolerance']['atol']:.3g}): "
                    f"max abs {c['abs']:.3g}, {c['n_diff']}/{c['size']} elements differ"
                )
        if c["abs"] is not None:
            worst_abs, worst_rel = max(worst_abs, c["abs"]), max(worst_rel, c["rel"])
    return ok_all, worst_abs, worst_rel, problems, notes, per_output


def batch_check(entry: dict[str, Any], zoo: Path, model: Path, inp: Path, mdir: Path, args: argparse.Namespace, runner: list[str]) -> str:
    """All samples in one run (`--batch N`), for models whose file declares a free batch axis."""
    n = entry["samples"]
    if not entry.get("allows_batch_gt1") or n < 2 or args.no_batch:
        return "-"
    if entry.get("precision") == "int8-dynamic":
        return "n/a"  # the activation scales are per run: a batch gives other numbers than onnxruntime's per-sample reference
    out = mdir / "batch.out.jsonl"
    rc, _, se, _ = run([*runner, args.agent, "infer", "--model", str(model), "--input", str(inp), "--output", str(out), "--batch", str(n)], args.timeout)
    if rc != 0:
        return "error: " + first_error_line(se, model, inp)
    ok, mabs, _, problems, _, _ = parity(entry, zoo, out)
    return f"ok (batch {n})" if ok else f"FAIL (batch {n}): " + "; ".join(problems)


def check_entry(entry: dict[str, Any], zoo: Path, args: argparse.Namespace, runner: list[str], work: Path) -> dict[str, Any]:
    res: dict[str, Any] = {
        "model": entry["name"],
        "producer": SHORT_TOOL.get(entry["producer"].get("tool", ""), entry["producer"].get("tool", "")),
        "precision": entry.get("precision", ""),
        "family": entry.get("family", ""),
        "loads": "-",
        "runs": "-",
        "parity": "-",
        "max_abs": None,
        "max_rel": None,
        "error": "",
        "status": "fail",
    }
    if "build_error" in entry:
        res.update(status="build-failed", error="exporter failed: " + entry["build_error"])
        return res
    if entry.get("expect") == "refuse":
        m = drover_bundle(entry, zoo, args, runner, work)
        res["bundle"] = m
        if m["status"] == "skipped":
            res.update(status="skipped", error="needs --drover (drover bundle --mlflow)")
        elif m["status"] == "refused":
            res.update(status="pass", error="refused as expected: " + m["error"])
        else:
            res.update(status="fail", error="expected a refusal, drover bundle --mlflow accepted it")
        return res

    model = zoo / entry["file"]
    mdir = work / entry["name"]
    mdir.mkdir(parents=True, exist_ok=True)
    if "input_files" in entry:
        inp = write_jsonl(entry, zoo, mdir)
    else:
        inp = zoo / entry["input_file"]
    out = mdir / "out.jsonl"
    cmd = [*runner, args.agent, "infer", "--model", str(model), "--input", str(inp), "--output", str(out)]
    rc, _, stderr, wall = run(cmd, args.timeout)
    res["wall_s"] = round(wall, 3)
    problems: list[str] = []

    b = drover_bundle(entry, zoo, args, runner, work)
    res["bundle"] = b
    if b["status"] == "refused":
        problems.append(f"drover bundle{' --mlflow' if 'mlflow_dir' in entry else ''}: {b['error']}")

    if rc != 0:
        where = classify(stderr, model, inp)
        res["loads"] = "no" if where == "load" else "yes"
        res["runs"] = "no"
        if where == "input":
            res["runs"] = "no (input)"
        res["error"] = first_error_line(stderr, model, inp)
        res["stderr"] = stderr[-4000:]
        if problems and not b["error"].startswith(res["error"][:40]):
            res["error"] += " | " + "; ".join(problems)
        return res
    res["loads"] = res["runs"] = "yes"
    m = SUMMARY_RE.search(stderr)
    if m:
        res["agent_load_ms"] = float(m.group(3))

    same, worst_abs, worst_rel, more, notes, per_output = parity(entry, zoo, out)
    res["outputs"] = per_output
    res["max_abs"], res["max_rel"] = worst_abs, worst_rel
    res["parity"] = ("ok" if same else "FAIL") + f" {worst_abs:.2g}/{worst_rel:.2g}"
    differ = sum(c["n_diff"] or 0 for c in per_output.values())
    if entry.get("precision", "").startswith("int8") and differ:
        res["parity"] += f" ({differ}/{sum(c.get('size', 0) for c in per_output.values())} differ)"
    res["status"] = "pass" if same and not problems else "fail"
    res["error"] = "; ".join(more + problems)
    if notes:
        res["notes"] = notes
    res["batch"] = batch_check(entry, zoo, model, inp, mdir, args, runner)
    if not args.no_timing and "input_file" in entry:
        res.update(time_model(entry, zoo, model, mdir, args, runner))
    return res


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


BUNDLE = {"ok": "yes", "refused": "no"}


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def table(results: list[dict[str, Any]]) -> str:
    head = "| model | producer | precision | bundle? | loads? | runs? | parity (max abs/rel) | --batch N | agent load | agent/sample | ort/sample | error (first line) |"
    rows = [head, "|" + "---|" * 12]
    for r in results:
        err = r["error"].replace("|", "\\|")
        if len(err) > 220:
            err = err[:217] + "..."
        rows.append(
            f"| {r['model']} | {r['producer']} | {r['precision']} | {BUNDLE.get(r.get('bundle', {}).get('status', ''), '-')} | {r['loads']} | {r['runs']} | {r['parity']} | {r.get('batch', '-')} | "
            f"{fmt_ms(r.get('agent_load_ms'))} | {fmt_us(r.get('agent_us_per_sample'))} | {fmt_us(r.get('ort_us_per_sample'))} | {err} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description="Run the zoo through drover-agent and compare with onnxruntime.")
    ap.add_argument("--agent", required=True, help="the drover-agent binary")
    ap.add_argument("--zoo", default=os.environ.get("DROVER_ZOO_DIR") or str(REPO / "target" / "zoo"), help="the zoo (make_zoo.py --out)")
    ap.add_argument("--runner", default="", help="command prefix for the binaries, e.g. 'qemu-aarch64-static'")
    ap.add_argument("--drover", help="the drover tools binary (host): also run drover bundle on every model (--mlflow for the MLflow directories)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", help="regex on model names")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    ap.add_argument("--no-batch", action="store_true", help="skip the --batch N run of models with a free batch axis")
    ap.add_argument("--no-timing", action="store_true", help="skip the timing runs (two more agent runs per model)")
    ap.add_argument("--no-ort-timing", action="store_true", help="skip timing onnxruntime")
    ap.add_argument("--keep", help="keep the agent's outputs in this directory")
    args = ap.parse_args()

    zoo = Path(args.zoo).resolve()
    manifest = json.loads((zoo / "manifest.json").read_text())
    runner = shlex.split(args.runner)
    entries = [e for e in manifest["entries"] if not args.only or re.search(args.only, e["name"])]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="drover-zoo-") as tmp:
        work = Path(args.keep).resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for e in entries:
            r = check_entry(e, zoo, args, runner, work)
            results.append(r)
            print(f"{r['status']:>12}  {r['model']:<40} {r['loads']:>7} {r['runs']:>10}  {r['parity']:<22} {r['error'][:150]}", file=sys.stderr, flush=True)

    print(table(results))
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("\n" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    groups: dict[str, list[str]] = {}
    for r in results:
        if r["status"] == "fail":
            key = ("load: " if r["loads"] == "no" else "run: " if r["runs"].startswith("no") else "parity: ") + cause_of(r["error"])
            if r["runs"] == "yes" and r["error"].startswith("drover bundle"):
                key = "bundle only: " + cause_of(r["error"].split(": ", 1)[1])
            elif r["runs"] == "yes":
                key = "parity: " + re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "N", r["error"])[:100]
            groups.setdefault(key, []).append(r["model"])
    if groups:
        print("\nFailures by cause:")
        for k, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"- {k} ({len(names)}): {', '.join(names)}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"zoo": str(zoo), "agent": args.agent, "runner": args.runner, "cache_key": manifest.get("cache_key"), "results": results}, indent=1) + "\n"
        )
    return 1 if counts.get("fail") else 0


if __name__ == "__main__":
    sys.exit(main())
