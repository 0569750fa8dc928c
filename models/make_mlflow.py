#!/usr/bin/env python3
"""Writes MLflow model directories with the real MLflow, for Drover's `drover bundle --mlflow`.

- models/mlflow/iris_logreg/: the committed iris ONNX model saved with mlflow.onnx, with the
  signature MLflow infers from the reference inputs and onnxruntime's outputs.
- models/mlflow/iris_sklearn_pickle/: the same classifier saved with mlflow.sklearn in pickle
  format. Drover must refuse it without ever loading it (a pickle runs code when loaded).
- models/mlflow/iris_sklearn_skops/: the same classifier saved with mlflow.sklearn's default
  serialization, which is skops since MLflow 3 (Python objects too, restored by the skops
  library): what a user who never picked a format hands over. Drover must refuse it and say how
  to convert it to ONNX.

Run: pip install -r models/requirements.txt && python3 models/make_mlflow.py
"""
import os
import shutil

import mlflow
import mlflow.onnx
import mlflow.sklearn
import numpy as np
import onnx
import onnxruntime as ort
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "mlflow")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)

    model_path = os.path.join(HERE, "iris_logreg.onnx")
    x = np.load(os.path.join(HERE, "reference", "iris_logreg.input.npy"))
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"float_input": x})
    signature = infer_signature({"float_input": x}, {"label": label, "probabilities": probabilities})
    mlflow.onnx.save_model(
        onnx.load(model_path),
        os.path.join(OUT, "iris_logreg"),
        signature=signature,
        input_example={"float_input": x[:2]},
    )

    features, target = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(features, target)
    mlflow.sklearn.save_model(clf, os.path.join(OUT, "iris_sklearn_pickle"), serialization_format="pickle")
    # No serialization_format: MLflow's default (skops outside Databricks, needs `pip install skops`).
    mlflow.sklearn.save_model(clf, os.path.join(OUT, "iris_sklearn_skops"))

    for root, _, files in sorted(os.walk(OUT)):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"{os.path.relpath(p, HERE)}  {os.path.getsize(p)} bytes")
    print(f"mlflow {mlflow.__version__}")


if __name__ == "__main__":
    main()
