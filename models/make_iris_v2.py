"""A second release of the iris classifier, for the demo's staged rollout: the same inputs and
outputs as iris_logreg.onnx (a scikit-learn LogisticRegression through skl2onnx), retrained with
stronger regularisation (C=0.3) on the same load_iris() rows. It agrees with v1 on nearly every
row, so a rollout's shadow gate (top-1 agreement) lets it through, while it is a different
model file with different probabilities.

    python3 models/make_iris_v2.py    (same pinned versions as make_models.py)
"""

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import make_models as mm


def main() -> None:
    X, y = load_iris(return_X_y=True)
    _, _, v1 = mm.make_iris()
    clf = LogisticRegression(C=0.3, max_iter=1000)
    clf.fit(X, y)
    onx = mm.convert_sklearn(
        clf,
        name="iris_logreg",
        initial_types=[("float_input", mm.FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": mm.OPSET, "ai.onnx.ml": 1},
    )
    # The same clean-ups as v1 (one opset entry per domain, batch dim "N").
    seen, imports = set(), []
    for o in onx.opset_import:
        if (o.domain or "") not in seen:
            seen.add(o.domain or "")
            imports.append(onnx.helper.make_opsetid(o.domain, o.version))
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
    for vi in list(onx.graph.input) + list(onx.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    onx.producer_name = mm.PRODUCER + " (skl2onnx " + mm.skl2onnx.__version__ + ")"
    onx.doc_string = "scikit-learn LogisticRegression(C=0.3, max_iter=1000) on load_iris(), skl2onnx, zipmap=False"
    onnx.checker.check_model(onx, full_check=True)
    path = mm.save(onx, "iris_v2.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["label", "probabilities"], {"float_input": X.astype(np.float32)})
    agree = float(np.mean(out[0] == v1.predict(X)))
    accuracy = float(np.mean(out[0] == y))
    moved = float(np.max(np.abs(out[1] - v1.predict_proba(X))))
    print(f"iris_v2.onnx: accuracy {accuracy:.1%}, agrees with v1 on {agree:.1%}, probabilities moved up to {moved:.3f}")
    assert agree >= 0.95 and moved > 0.01


if __name__ == "__main__":
    main()
