"""A deliberately bad iris model, for rollout tests: the same inputs and outputs as
iris_logreg.onnx (a scikit-learn LogisticRegression through skl2onnx), trained on labels
rotated by one class, so it runs, passes a self-test of its own outputs, and disagrees with the
good model on almost every sample. A staged rollout must halt it at its first shadow stage.

    python3 models/make_iris_wrong.py    (same pinned versions as make_models.py)
"""

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import make_models as mm


def main() -> None:
    X, y = load_iris(return_X_y=True)
    good, _, good_clf = mm.make_iris()
    clf = LogisticRegression(max_iter=1000)
    clf.fit(X, (y + 1) % 3)
    onx = mm.convert_sklearn(
        clf,
        name="iris_logreg",
        initial_types=[("float_input", mm.FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": mm.OPSET, "ai.onnx.ml": 1},
    )
    # The same clean-ups as the good model (one opset entry per domain, batch dim "N").
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
    onx.doc_string = "BAD ON PURPOSE: LogisticRegression on load_iris() with labels rotated by one, for rollout tests"
    onnx.checker.check_model(onx, full_check=True)
    path = mm.save(onx, "iris_wrong.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrong = sess.run(["label"], {"float_input": X.astype(np.float32)})[0]
    agree = float(np.mean(wrong == good_clf.predict(X)))
    print(f"iris_wrong.onnx agrees with iris_logreg on {agree:.1%} of the iris rows")
    assert agree < 0.2


if __name__ == "__main__":
    main()
