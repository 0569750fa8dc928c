#!/usr/bin/env python3
"""Write the calibration sets `drover quantize` is run on for the reference CNN and MLP.

Run from anywhere:  python3 models/make_calibration.py
Writes models/data/cnn.calibration.npy (float32 [64,1,28,28]) and
models/data/mlp.calibration.npy (float32 [64,64]).

The samples are the very ones make_models.py feeds onnxruntime's quantize_static
(standard normal clipped to [-3, 3], rounded to 4 decimals, seeds 3001 and 3002),
so that Drover's quantizer and onnxruntime's calibrate on the same data. Only numpy
is needed; the output is byte-identical from run to run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CALIB_SAMPLES = 64
SEED_CNN_CAL = 3001  # as in make_models.py
SEED_MLP_CAL = 3002


def std_normal_inputs(seed: int, shape) -> np.ndarray:
    """Standard normal, clipped to [-3, 3], rounded to 4 decimals, float32 (as make_models.py)."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal(shape), -3.0, 3.0)
    return np.round(x, 4).astype(np.float32)


def main() -> None:
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    sets = {
        "cnn.calibration.npy": std_normal_inputs(SEED_CNN_CAL, (CALIB_SAMPLES, 1, 28, 28)),
        "mlp.calibration.npy": std_normal_inputs(SEED_MLP_CAL, (CALIB_SAMPLES, 64)),
    }
    for name, array in sets.items():
        np.save(out / name, np.ascontiguousarray(array))
        print(f"{name}: {array.dtype} {list(array.shape)}, {(out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
