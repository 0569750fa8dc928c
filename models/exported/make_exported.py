#!/usr/bin/env python3
"""Small models as the real exporters write them by default, with onnxruntime's answers.

Drover's reference models (models/make_models.py) were built to fit; these are what users
bring, written by the tools' own default calls, untouched:

- skl2onnx `to_onnx(model, X[:1])`: the batch axis as a dimension with neither a size nor a
  name (`[?, 4]`), classifiers' probabilities behind an ai.onnx.ml ZipMap (a map per sample).
- MLflow 3 `mlflow.onnx.save_model` (its default `save_as_external_data=True`): the weights in
  a side file named by a UUID, beside model.onnx.
- torch.onnx.export with the dynamo exporter (torch 2.x's default path), batch axis dynamic.
- torch.onnx.export (TorchScript, dynamo=False) of torchvision's detector ending (score filter,
  `batched_nms`, cap): an `If` whose branches' shapes differ (`numel() == 0` → an empty tensor,
  else NonMaxSuppression's run-time count) and a slice past a run-time length. Its outputs have
  no batch axis, so it is kept out of the manifest's sample-wise entries: whole input and output
  tensors per case (`tv_batched_nms.<case>.input.npy`, `...output.<name>.npy`).
- The same exporter's `torchvision.ops.batched_nms` and `torchvision.ops.nms` over a few hundred
  clustered boxes (`tv_nms_stress`): two NonMaxSuppression nodes with thousands of box pairs to
  compare, distinct and tied scores, flipped corners; whole tensors per case, as above.
- torch.onnx.export(dynamo=False) of nn.RNN(nonlinearity='relu'), which writes an ONNX RNN with
  activations=["Relu"]: tract's RNN always applies Tanh, so Drover must refuse it (`refused`,
  `refused_attributes`); onnxruntime's answers are kept to measure the wrong answer prevented.

Every file is small (KBs) and committed with its inputs and onnxruntime's outputs, so the Rust
tests never need Python. Writes models/exported/ and models/exported/manifest.json (the
schema of models/reference/manifest.json, paths relative to models/, plus `class_labels` for
outputs that were a ZipMap: onnxruntime's list of maps is stored as a [N, classes] tensor in
the order of the labels).

Run: pip install -r models/exported/requirements.txt && python3 models/exported/make_exported.py
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
SAMPLES = 16


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def json_array(a: np.ndarray) -> str:
    if a.ndim == 0:
        v = a.item()
        return repr(float(v)) if isinstance(v, float) else str(v)
    return "[" + ",".join(json_array(a[i]) for i in range(a.shape[0])) + "]"


def run(path: Path, x: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """onnxruntime's outputs for all samples at once; ZipMap outputs (lists of dicts) become
    [N, classes] float32 tensors, with their class labels."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, x)
    outputs, labels = {}, {}
    for name, r in zip(names, results):
        if isinstance(r, list):
            keys = list(r[0].keys())
            outputs[name] = np.array([[row[k] for k in keys] for row in r], dtype=np.float32)
            labels[name] = [str(k) for k in keys]
        else:
            outputs[name] = np.asarray(r)
    return outputs, labels


def write(name: str, file: str, kind: str, x: dict[str, np.ndarray], tolerance: dict[str, float], producer: str):
    outputs, labels = run(MODELS / file, x)
    lines = []
    for i in range(SAMPLES):
        if len(x) == 1:
            lines.append(json_array(next(iter(x.values()))[i]))
        else:
            lines.append("{" + ",".join(f"{json.dumps(k)}:{json_array(v[i])}" for k, v in x.items()) + "}")
    jsonl = HERE / f"{name}.input.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    for i, line in enumerate(jsonl.read_text().splitlines()):
        parsed = json.loads(line)
        if len(x) == 1:
            parsed = {next(iter(x)): parsed}
        for k, arr in x.items():
            back = np.array(parsed[k], dtype=np.float64 if arr.dtype.kind == "f" else np.int64).astype(arr.dtype)
            assert back.tobytes() == arr[i].tobytes(), (name, k, i)
    outs = []
    for oname, arr in outputs.items():
        rel = f"exported/{name}.output.{oname}.npy"
        np.save(MODELS / rel, arr)
        out = {"name": oname, "dtype": str(arr.dtype), "npy": rel, "tolerance": tolerance[oname]}
        if oname in labels:
            out["class_labels"] = labels[oname]
        outs.append(out)
    dims = [d for i in onnx.load(str(MODELS / file), load_external_data=False).graph.input for d in i.type.tensor_type.shape.dim]
    first = dims[0] if dims else None
    batch = "unnamed" if first is not None and not first.HasField("dim_value") and not first.dim_param else "symbolic"
    return {
        "name": name,
        "file": file,
        "kind": kind,
        "batch": batch,
        "refused": False,
        "unsupported": [],
        "producer": producer,
        "reference": {"samples": SAMPLES, "input_jsonl": f"exported/{name}.input.jsonl", "input_npy": None, "outputs": outs},
    }


def sklearn_models(entries: list, versions: dict):
    import skl2onnx
    import sklearn
    from sklearn.datasets import load_iris, make_regression
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression

    versions["scikit-learn"] = sklearn.__version__
    versions["skl2onnx"] = skl2onnx.__version__
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    rng = np.random.default_rng(33)
    idx = rng.choice(len(X), SAMPLES, replace=False)
    probe = {"X": X[idx]}

    clf = LogisticRegression(max_iter=1000).fit(X, y)
    (HERE / "skl_logreg_zipmap.onnx").write_bytes(skl2onnx.to_onnx(clf, X[:1]).SerializeToString())
    entries.append(write("skl_logreg_zipmap", "exported/skl_logreg_zipmap.onnx", "sklearn", probe,
                         {"output_label": 0, "output_probability": 1e-5},
                         "skl2onnx to_onnx(LogisticRegression(max_iter=1000), X[:1]) (defaults: ZipMap, [?, 4])"))

    rf = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(X, y)
    (HERE / "skl_forest_zipmap.onnx").write_bytes(skl2onnx.to_onnx(rf, X[:1]).SerializeToString())
    entries.append(write("skl_forest_zipmap", "exported/skl_forest_zipmap.onnx", "sklearn", probe,
                         {"output_label": 0, "output_probability": 1e-5},
                         "skl2onnx to_onnx(RandomForestClassifier(n_estimators=4, max_depth=3), X[:1]) (defaults)"))

    # k-NN: skl2onnx computes the distances with a Scan whose state is the query, a stateful
    # operator in tract.
    from sklearn.neighbors import KNeighborsRegressor

    Xk, yk = make_regression(n_samples=60, n_features=5, noise=0.1, random_state=6)
    Xk = Xk.astype(np.float32)
    knn = KNeighborsRegressor(n_neighbors=3).fit(Xk, yk)
    (HERE / "skl_knn_regressor.onnx").write_bytes(skl2onnx.to_onnx(knn, Xk[:1]).SerializeToString())
    entries.append(write("skl_knn_regressor", "exported/skl_knn_regressor.onnx", "sklearn",
                         {"X": rng.standard_normal((SAMPLES, 5)).astype(np.float32)}, {"variable": 1e-4},
                         "skl2onnx to_onnx(KNeighborsRegressor(n_neighbors=3), X[:1]) (defaults: a Scan, [?, 5])"))

    Xr, yr = make_regression(n_samples=200, n_features=6, noise=0.1, random_state=5)
    Xr = Xr.astype(np.float32)
    lin = LinearRegression().fit(Xr, yr)
    (HERE / "skl_linreg.onnx").write_bytes(skl2onnx.to_onnx(lin, Xr[:1]).SerializeToString())
    entries.append(write("skl_linreg", "exported/skl_linreg.onnx", "sklearn", {"X": Xr[:SAMPLES]},
                         {"variable": 1e-4}, "skl2onnx to_onnx(LinearRegression(), X[:1]) (defaults: [?, 6])"))


def torch_models(entries: list, versions: dict):
    import mlflow
    import mlflow.onnx
    import torch

    versions["torch"] = torch.__version__
    versions["mlflow"] = mlflow.__version__
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)).eval()
    example = torch.randn(2, 16)
    x = np.random.default_rng(8).standard_normal((SAMPLES, 16)).astype(np.float32)

    # An LSTM autoencoder (encoder → last state repeated over time → decoder), as for anomaly
    # detection on sensor windows; tract's optimiser fails on the decoder fed the repeated state.
    class LstmAutoencoder(torch.nn.Module):
        def __init__(self, features=3, hidden=8, steps=6):
            super().__init__()
            self.steps = steps
            self.enc = torch.nn.LSTM(features, hidden, batch_first=True)
            self.dec = torch.nn.LSTM(hidden, hidden, batch_first=True)
            self.out = torch.nn.Linear(hidden, features)

        def forward(self, x):
            _, (h, _) = self.enc(x)
            z = h[-1].unsqueeze(1).repeat(1, self.steps, 1)
            y, _ = self.dec(z)
            return self.out(y)

    ae = LstmAutoencoder().eval()
    lstm_ae = HERE / "torch_lstm_ae.onnx"
    torch.onnx.export(ae, (torch.randn(2, 6, 3),), str(lstm_ae), dynamo=False, opset_version=17,
                      input_names=["window"], output_names=["reconstruction"],
                      dynamic_axes={"window": {0: "batch"}, "reconstruction": {0: "batch"}})
    windows = np.random.default_rng(9).standard_normal((SAMPLES, 6, 3)).astype(np.float32)
    entries.append(write("torch_lstm_ae", "exported/torch_lstm_ae.onnx", "fp32", {"window": windows},
                         {"reconstruction": 1e-4},
                         "torch.onnx.export(LSTM autoencoder 3->8->8->3 over 6 steps, dynamo=False, opset 17, "
                         "dynamic batch)"))

    dynamo = HERE / "torch_mlp_dynamo.onnx"
    torch.onnx.export(net, (example,), str(dynamo), dynamo=True, input_names=["x"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    entries.append(write("torch_mlp_dynamo", "exported/torch_mlp_dynamo.onnx", "fp32", {"x": x}, {"logits": 1e-4},
                         "torch.onnx.export(nn.Sequential(Linear(16,64), ReLU, Linear(64,3)), dynamo=True, "
                         "dynamic_shapes=({0: Dim('batch')},))"))

    # MLflow 3's own ONNX directory: weights of 1 KiB and more go to a UUID-named side file.
    mlflow_dir = MODELS / "mlflow" / "torch_mlp_external"
    shutil.rmtree(mlflow_dir, ignore_errors=True)
    # The signature as most users make it: infer_signature on numpy arrays (unnamed tensors).
    from mlflow.models import infer_signature

    logits = session(dynamo).run(None, {"x": x})[0]
    mlflow.onnx.save_model(onnx.load(str(dynamo)), str(mlflow_dir), signature=infer_signature(x, logits))
    side = [f for f in os.listdir(mlflow_dir) if f.endswith(".data")]
    assert side, "mlflow.onnx.save_model wrote no external data"
    entries.append(write("mlflow_mlp_external", "mlflow/torch_mlp_external/model.onnx", "fp32", {"x": x},
                         {"logits": 1e-4}, "mlflow.onnx.save_model(onnx.load(torch_mlp_dynamo.onnx), DIR, signature=infer_signature(x, logits)) "
                         f"(defaults: save_as_external_data=True -> {side[0]})"))


def detector_ending(versions: dict):
    """torchvision's detectors' last step as the TorchScript exporter writes it, on three inputs:
    more detections than the cap, fewer, and none (the `If`'s other branch)."""
    import torch
    import torchvision

    versions["torchvision"] = torchvision.__version__

    class DetectorEnding(torch.nn.Module):
        """x[1, boxes, (x1, y1, x2, y2, score, label)]: keep scores > 0.5, batched NMS, at most 4."""

        def forward(self, x):
            boxes, scores, labels = x[0, :, :4], x[0, :, 4], x[0, :, 5].to(torch.int64)
            # One index for the three (torchvision's detectors filter with torch.where so).
            keep = torch.where(scores > 0.5)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)[:4]
            return boxes[keep], scores[keep], labels[keep]

    path = HERE / "tv_batched_nms.onnx"
    torch.manual_seed(0)
    torch.onnx.export(DetectorEnding().eval(), (torch.rand(1, 12, 6),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["boxes", "scores", "labels"])
    assert any(n.op_type == "If" for n in onnx.load(str(path)).graph.node), "the exporter wrote no If"

    def case(passing: int, seed: int) -> np.ndarray:
        # Distinct scores: no two detections tie, so the order of the answer is defined.
        r = np.random.default_rng(seed)
        xy, wh = r.uniform(0, 10, (12, 2)), r.uniform(2, 6, (12, 2))
        scores = np.empty(12)
        order = r.permutation(12)
        scores[order[:passing]] = np.linspace(0.9, 0.6, passing)
        scores[order[passing:]] = np.linspace(0.45, 0.05, 12 - passing)
        labels = r.integers(0, 2, 12)
        return np.concatenate([xy, xy + wh, scores[:, None], labels[:, None]], 1)[None].astype(np.float32)

    sess = session(path)
    for name, passing, seed in [("many", 9, 1), ("few", 3, 2), ("none", 0, 3)]:
        x = case(passing, seed)
        np.save(HERE / f"tv_batched_nms.{name}.input.npy", x)
        for oname, arr in zip(["boxes", "scores", "labels"], sess.run(None, {"x": x})):
            np.save(HERE / f"tv_batched_nms.{name}.output.{oname}.npy", arr)
        print(f"tv_batched_nms {name}: {len(arr)} detection(s)")


def nms_stress(versions: dict):
    """torchvision's NMS as the TorchScript exporter writes it, over enough boxes that the order
    of selection and every tie matter: `batched_nms` (one NonMaxSuppression over class-offset
    boxes, behind the `numel() == 0` If) and plain `nms` at another IoU threshold.

    Run alone: `python3 -c 'import make_exported as m; m.nms_stress({})'` from this directory
    (main() rewrites every committed file)."""
    import torch
    import torchvision

    versions["torchvision"] = torchvision.__version__

    class NmsStress(torch.nn.Module):
        """x[boxes, (x1, y1, x2, y2, score, label)] -> kept indices of batched_nms and of nms."""

        def forward(self, x):
            boxes, scores, labels = x[:, :4], x[:, 4], x[:, 5].to(torch.int64)
            return torchvision.ops.batched_nms(boxes, scores, labels, 0.5), torchvision.ops.nms(boxes, scores, 0.3)

    path = HERE / "tv_nms_stress.onnx"
    torch.onnx.export(NmsStress().eval(), (torch.rand(8, 6),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["batched_keep", "keep"], dynamic_axes={"x": {0: "n"}})
    nodes = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert nodes.count("NonMaxSuppression") >= 1, "the exporter wrote no NonMaxSuppression"

    def case(n: int, seed: int, tied: bool, flipped: bool) -> np.ndarray:
        # Boxes around a few centres, so that many pairs overlap by every amount; 3 labels.
        r = np.random.default_rng(seed)
        centres = r.uniform(0, 100, (12, 2))[r.integers(0, 12, n)]
        xy = centres + r.normal(0, 3, (n, 2))
        wh = r.uniform(4, 20, (n, 2))
        a, b = xy - wh / 2, xy + wh / 2
        if flipped:
            # Opposite corners in the other order (x2 < x1): onnxruntime puts them in order.
            swap = r.random(n) < 0.3
            a[swap], b[swap] = b[swap].copy(), a[swap].copy()
        # Distinct scores, or ten levels so that most boxes tie with others (the lower index wins).
        scores = r.integers(1, 11, n) / 10 if tied else r.permutation(n) / n + 0.5 / n
        labels = r.integers(0, 3, n)
        return np.concatenate([a, b, scores[:, None], labels[:, None]], 1).astype(np.float32)

    sess = session(path)
    for name, n, seed, tied, flipped in [("distinct", 300, 21, False, False), ("tied", 300, 22, True, False),
                                         ("flipped", 200, 23, False, True)]:
        x = case(n, seed, tied, flipped)
        np.save(HERE / f"tv_nms_stress.{name}.input.npy", x)
        outs = sess.run(None, {"x": x})
        for oname, arr in zip(["batched_keep", "keep"], outs):
            np.save(HERE / f"tv_nms_stress.{name}.output.{oname}.npy", arr)
        print(f"tv_nms_stress {name}: {n} boxes, kept {len(outs[0])} (batched) and {len(outs[1])}")


def torch_refused_models(entries: list, versions: dict):
    """Files torch writes that tract would load and answer wrongly, so Drover refuses them."""
    import torch

    versions["torch"] = torch.__version__
    torch.manual_seed(11)

    # A ReLU Elman RNN (sensor windows of 6 steps, 3 features -> 8 hidden), untouched as the
    # TorchScript exporter writes it: RNN with activations=["Relu"] (tract ignores the attribute
    # and computes Tanh). The dynamo exporter unrolls the same module into standard operators.
    class ReluRnn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(3, 8, batch_first=True, nonlinearity="relu")

        def forward(self, x):
            return self.rnn(x)[0]

    path = HERE / "torch_rnn_relu_refused.onnx"
    torch.onnx.export(ReluRnn().eval(), (torch.randn(2, 6, 3),), str(path), dynamo=False, opset_version=17,
                      input_names=["window"], output_names=["states"],
                      dynamic_axes={"window": {0: "batch"}, "states": {0: "batch"}})
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "RNN")
    activations = [a for a in node.attribute if a.name == "activations"]
    assert activations and list(activations[0].strings) == [b"Relu"], "torch no longer writes activations=[Relu]"
    windows = np.random.default_rng(12).standard_normal((SAMPLES, 6, 3)).astype(np.float32)
    entry = write("torch_rnn_relu_refused", "exported/torch_rnn_relu_refused.onnx", "fp32", {"window": windows},
                  {"states": 1e-4},
                  "torch.onnx.export(nn.RNN(3, 8, batch_first=True, nonlinearity='relu'), dynamo=False, "
                  "opset 17, dynamic batch): RNN with activations=['Relu']")
    entry["refused"] = True
    entry["refused_attributes"] = [{"op": "RNN", "node": node.name, "attribute": "activations"}]
    entries.append(entry)


def main():
    for f in HERE.iterdir():
        if f.suffix in (".onnx", ".npy", ".jsonl", ".data") or f.name == "manifest.json":
            f.unlink()
    versions = {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
    entries: list = []
    sklearn_models(entries, versions)
    torch_models(entries, versions)
    detector_ending(versions)
    nms_stress(versions)
    torch_refused_models(entries, versions)
    manifest = {"generator": "models/exported/make_exported.py", "versions": versions, "models": entries}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for e in entries:
        print(f"{e['name']:<22} {e['batch']:<9} {(MODELS / e['file']).stat().st_size:>7} B  {e['producer']}")
    print(versions)


if __name__ == "__main__":
    main()
