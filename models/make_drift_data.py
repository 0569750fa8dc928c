"""Reference data for drift monitoring of iris_logreg.onnx.

The iris model (make_models.py) was trained on scikit-learn's load_iris(); its training rows are
the natural drift baseline a bundle carries (`drover bundle --reference`). This writes them as
JSON Lines, one [sepal_length, sepal_width, petal_length, petal_width] sample per line, in
float32 like the model's input.

    pip install -r models/requirements.txt && python3 models/make_drift_data.py
"""

import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

OUT = Path(__file__).parent / "data"


def main() -> None:
    iris = load_iris()
    X = iris.data.astype(np.float32)
    OUT.mkdir(exist_ok=True)
    with open(OUT / "iris.train.jsonl", "w") as f:
        for row in X:
            f.write(json.dumps([float(v) for v in row]) + "\n")
    names = [n.replace(" (cm)", "").replace(" ", "_") for n in iris.feature_names]
    (OUT / "iris.features.txt").write_text(",".join(names) + "\n")
    print(f"{len(X)} rows, features {names}")


if __name__ == "__main__":
    main()
