#!/usr/bin/env python3
"""Small scikit-learn / XGBoost / LightGBM models as their exporters write them, with
onnxruntime's outputs, for Drover's ai.onnx.ml parity test (tests/parity.rs).

Every model is converted with the exporter's ordinary call (classifiers with zipmap=False: Drover
has no maps) and saved exactly as written, the unnamed batch axis included (Drover names it at
load time). Each gets seeded held-out inputs (.npy) and onnxruntime's outputs on them (.npy per
output); manifest.json says what made each file and how close Drover must come. Trees are few
and shallow and the SVMs are trained on small sets so the files stay a few KB.

    pip install -r models/ml/requirements.txt && python3 models/ml/make_ml_models.py

Reruns give identical inputs and outputs; the onnxmltools files differ only in the random UUID
that onnxmltools names each graph with (left as written).

Writes models/ml/*.onnx, models/ml/data/ and models/ml/manifest.json (paths relative to this
script, so it runs from any directory).
"""

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
import skl2onnx
import sklearn
import xgboost
from onnxmltools import convert_lightgbm, convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType
from skl2onnx import to_onnx
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, NuSVC, NuSVR, OneClassSVM
from sklearn.tree import DecisionTreeRegressor

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 20261207
# Labels must match exactly; floats within 1e-5 absolute or relative (the larger allowance).
FLOAT_TOLERANCE = {"abs": 1e-5, "rel": 1e-5}

warnings.filterwarnings("ignore")


def split(X, y, n_test=40):
    return X[:-n_test], y[:-n_test], X[-n_test:]


def with_missing(X, rng, fraction=0.1):
    """A copy of X with about `fraction` of its values NaN (XGBoost/LightGBM learn where they go)."""
    X = X.copy()
    X[rng.random(X.shape) < fraction] = np.nan
    return X


def regression(n_targets=1, seed=SEED):
    X, y = make_regression(n_samples=240, n_features=6, n_informative=4, n_targets=n_targets, noise=5.0,
                           random_state=seed)
    return X.astype(np.float32), y.astype(np.float32)


def classification(n_classes, weights=None, seed=SEED):
    X, y = make_classification(n_samples=300, n_features=6, n_informative=4, n_redundant=1,
                               n_classes=n_classes, weights=weights, random_state=seed)
    return X.astype(np.float32), y


def skl(model, X_train, options=None, target_opset=None):
    """skl2onnx's default call, as its docs show it."""
    call = "skl2onnx.to_onnx(model, X_train[:1]" + (f", options={options!r}" if options else "")
    call += (f", target_opset={target_opset!r}" if target_opset else "") + ")"
    onx = to_onnx(model, X_train[:1], options=options, target_opset=target_opset)
    return onx, ("skl2onnx", skl2onnx.__version__, call)


def xgb(model, n_features):
    call = f"onnxmltools.convert_xgboost(model, initial_types=[('input', FloatTensorType([None, {n_features}]))])"
    onx = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, n_features]))])
    return onx, ("onnxmltools", onnxmltools.__version__, call)


def lgbm(model, n_features, zipmap=None):
    extra = "" if zipmap is None else f", zipmap={zipmap}"
    call = f"onnxmltools.convert_lightgbm(model, initial_types=[('input', FloatTensorType([None, {n_features}]))]{extra})"
    kwargs = {} if zipmap is None else {"zipmap": zipmap}
    onx = convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, n_features]))], **kwargs)
    return onx, ("onnxmltools", onnxmltools.__version__, call)


def models():
    """(name, what, trainer library + version, (onnx, producer), test inputs)."""
    rng = np.random.default_rng(SEED)
    out = []

    X, y = regression()
    Xt, yt, Xh = split(X, y)
    m = RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0).fit(Xt, yt)
    out.append(("skl_random_forest_regressor", "RandomForestRegressor(n_estimators=3, max_depth=3)", skl(m, Xt), Xh))
    m = GradientBoostingRegressor(n_estimators=5, max_depth=2, random_state=0).fit(Xt, yt)
    out.append(("skl_gradient_boosting_regressor", "GradientBoostingRegressor(n_estimators=5, max_depth=2)",
                skl(m, Xt), Xh))
    m = DecisionTreeRegressor(max_depth=4, random_state=0).fit(Xt, yt)
    out.append(("skl_decision_tree_regressor", "DecisionTreeRegressor(max_depth=4)", skl(m, Xt), Xh))

    X2, y2 = regression(n_targets=2)
    Xt2, yt2, Xh2 = split(X2, y2)
    m = RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0).fit(Xt2, yt2)
    out.append(("skl_random_forest_regressor_2_targets", "RandomForestRegressor(n_estimators=2, max_depth=3), 2 targets",
                skl(m, Xt2), Xh2))

    Xm = with_missing(X, rng)
    Xtm, ytm, Xhm = split(Xm, y)
    m = xgboost.XGBRegressor(n_estimators=4, max_depth=3, random_state=0).fit(Xtm, ytm)
    out.append(("xgb_regressor", "XGBRegressor(n_estimators=4, max_depth=3), 10% NaN", xgb(m, 6), Xhm))
    m = lightgbm.LGBMRegressor(n_estimators=4, num_leaves=7, min_child_samples=5, random_state=0, verbose=-1)
    m.fit(Xtm, ytm)
    out.append(("lgbm_regressor", "LGBMRegressor(n_estimators=4, num_leaves=7), 10% NaN", lgbm(m, 6), Xhm))

    # Binary: imbalanced, so XGBoost's base_score is not 0.5 and onnxmltools writes one base value.
    Xb, yb = classification(2, weights=[0.7, 0.3])
    Xbm = with_missing(Xb, rng)
    Xtb, ytb, Xhb = split(Xbm, yb)
    m = xgboost.XGBClassifier(n_estimators=4, max_depth=3, random_state=0).fit(Xtb, ytb)
    out.append(("xgb_binary_classifier", "XGBClassifier(n_estimators=4, max_depth=3), 70/30 classes, 10% NaN",
                xgb(m, 6), Xhb))
    m = lightgbm.LGBMClassifier(n_estimators=4, num_leaves=7, min_child_samples=5, random_state=0, verbose=-1)
    m.fit(Xtb, ytb)
    out.append(("lgbm_binary_classifier", "LGBMClassifier(n_estimators=4, num_leaves=7), 70/30 classes, 10% NaN",
                lgbm(m, 6, zipmap=False), Xhb))

    Xc, yc = classification(3)
    Xcm = with_missing(Xc, rng)
    Xtc, ytc, Xhc = split(Xcm, yc)
    m = xgboost.XGBClassifier(n_estimators=3, max_depth=2, random_state=0).fit(Xtc, ytc)
    out.append(("xgb_multiclass_classifier", "XGBClassifier(n_estimators=3, max_depth=2), 3 classes, 10% NaN",
                xgb(m, 6), Xhc))
    m = lightgbm.LGBMClassifier(n_estimators=3, num_leaves=5, min_child_samples=5, random_state=0, verbose=-1)
    m.fit(Xtc, ytc)
    out.append(("lgbm_multiclass_classifier", "LGBMClassifier(n_estimators=3, num_leaves=5), 3 classes, 10% NaN",
                lgbm(m, 6, zipmap=False), Xhc))

    Xs, ys = classification(2)
    Xts, yts, Xhs = split(Xs, ys)
    m = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(Xts, yts)
    out.append(("skl_random_forest_binary_classifier", "RandomForestClassifier(n_estimators=3, max_depth=3)",
                skl(m, Xts, {"zipmap": False}), Xhs))
    m = GradientBoostingClassifier(n_estimators=4, max_depth=2, random_state=0).fit(Xts, yts)
    out.append(("skl_gradient_boosting_binary_classifier", "GradientBoostingClassifier(n_estimators=4, max_depth=2)",
                skl(m, Xts, {"zipmap": False}), Xhs))

    iris = load_iris()
    order = np.random.default_rng(SEED).permutation(len(iris.target))
    Xi, yi = iris.data[order].astype(np.float32), iris.target[order]
    Xti, yti, Xhi = split(Xi, yi, n_test=30)
    m = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(Xti, yti)
    out.append(("skl_random_forest_iris_classifier", "RandomForestClassifier(n_estimators=3, max_depth=3) on iris",
                skl(m, Xti, {"zipmap": False}), Xhi))
    m = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(Xti, yti)
    out.append(("skl_gradient_boosting_iris_classifier", "GradientBoostingClassifier(n_estimators=3, max_depth=2) on iris",
                skl(m, Xti, {"zipmap": False}), Xhi))

    m = StandardScaler().fit(Xt)
    out.append(("skl_standard_scaler", "StandardScaler()", skl(m, Xt), Xh))

    # SVMs: small training sets keep the support vectors (stored in full) to a few KB.
    Xc3, yc3 = classification(3)
    Xt3, yt3, Xh3 = Xc3[:100], yc3[:100], Xc3[-40:]
    for kernel in ["rbf", "linear", "poly", "sigmoid"]:
        m = SVC(kernel=kernel, probability=True, random_state=0).fit(Xt3, yt3)
        out.append((f"skl_svc_{kernel}_proba", f"SVC(kernel='{kernel}', probability=True), 3 classes",
                    skl(m, Xt3, {"zipmap": False}), Xh3))
    m = SVC().fit(Xt3, yt3)
    out.append(("skl_svc_rbf_ovr", "SVC() (decision_function_shape='ovr'), 3 classes",
                skl(m, Xt3, {"zipmap": False}), Xh3))
    m = NuSVC(nu=0.3, probability=True, random_state=0).fit(Xt3, yt3)
    out.append(("skl_nusvc_proba", "NuSVC(nu=0.3, probability=True), 3 classes",
                skl(m, Xt3, {"zipmap": False}), Xh3))
    Xtb2, ytb2, Xhb2 = Xs[:100], ys[:100], Xs[-40:]
    m = SVC(probability=True, random_state=0).fit(Xtb2, ytb2)
    out.append(("skl_svc_binary_proba", "SVC(probability=True), 2 classes",
                skl(m, Xtb2, {"zipmap": False}), Xhb2))
    m = SVC(kernel="poly").fit(Xtb2, ytb2)
    out.append(("skl_svc_binary", "SVC(kernel='poly'), 2 classes", skl(m, Xtb2, {"zipmap": False}), Xhb2))
    Xtr, ytr = Xt[:100], yt[:100]
    m = SVR().fit(Xtr, ytr / 100)
    out.append(("skl_svr", "SVR() on y/100", skl(m, Xtr), Xh))
    m = NuSVR(kernel="linear").fit(Xtr, ytr / 100)
    out.append(("skl_nusvr_linear", "NuSVR(kernel='linear') on y/100", skl(m, Xtr), Xh))
    m = OneClassSVM(nu=0.2).fit(Xtr)
    out.append(("skl_one_class_svm", "OneClassSVM(nu=0.2)", skl(m, Xtr), Xh))

    # skl2onnx 1.20 needs ai.onnx.ml opset 3 for it: LabelEncoder (int64 -> float) per tree.
    m = IsolationForest(n_estimators=3, max_samples=64, random_state=0).fit(Xt)
    out.append(("skl_isolation_forest", "IsolationForest(n_estimators=3, max_samples=64)",
                skl(m, Xt, target_opset={"": 22, "ai.onnx.ml": 3}), Xh))
    return out


def main():
    # skl2onnx lists opset imports from a set: fix string hashing so reruns write the same bytes.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    if DATA.exists():
        shutil.rmtree(DATA)
    DATA.mkdir(parents=True)
    for old in HERE.glob("*.onnx"):
        old.unlink()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    entries = []
    for name, what, (onx, (producer, version, call)), X in models():
        path = HERE / f"{name}.onnx"
        path.write_bytes(onx.SerializeToString())
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        X = np.ascontiguousarray(X, dtype=np.float32)
        np.save(DATA / f"{name}.input.npy", X)
        results = session.run(None, {inp.name: X})
        outputs = []
        for o, value in zip(session.get_outputs(), results):
            value = np.ascontiguousarray(value)
            npy = f"data/{name}.{o.name}.npy"
            np.save(HERE / npy, value)
            exact = value.dtype.kind in "iu"
            outputs.append({"name": o.name, "dtype": str(value.dtype), "shape": list(value.shape), "npy": npy,
                            "tolerance": {"abs": 0.0, "rel": 0.0} if exact else FLOAT_TOLERANCE})
        ops = sorted({(n.domain or "ai.onnx") + "::" + n.op_type for n in onx.graph.node})
        entries.append({
            "name": name,
            "file": path.name,
            "model": what,
            "producer": {"name": producer, "version": version, "call": call},
            "edits": [],
            "ops": ops,
            "bytes": path.stat().st_size,
            "inputs": [{"name": inp.name, "dtype": "float32", "shape": list(X.shape),
                        "npy": f"data/{name}.input.npy", "nan": int(np.isnan(X).sum())}],
            "outputs": outputs,
        })
        print(f"{name:<42} {path.stat().st_size:>6} B  {', '.join(ops)}")
    manifest = {
        "generated_by": "models/ml/make_ml_models.py",
        "seed": SEED,
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnxmltools": onnxmltools.__version__,
            "xgboost": xgboost.__version__,
            "lightgbm": lightgbm.__version__,
        },
        "models": entries,
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
