"""OIP v2 inference requests as a real client writes them, and what onnxruntime answers.

The request bodies come from tritonclient's own encoder
(`InferenceServerClient.generate_request_body`, JSON tensors, no binary extension): the exact
bytes a Triton/KServe user's client sends. The Rust conformance tests post them unchanged to the
agent's local API and compare the answers with onnxruntime's outputs, stored beside them.

    python3 models/make_oip_requests.py                  # (re)write models/oip/*.json
    python3 models/make_oip_requests.py --check URL      # call a running agent with tritonclient

`--check` drives a live agent (serving the case's model under its file name, e.g. `iris_logreg`)
through tritonclient's full client: liveness, model readiness, metadata, inference, and checks
the parsed outputs against onnxruntime.
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "oip"


def cases():
    """(case name, model, request id or None, inputs {name: array}, outputs wanted or None)."""
    rng = np.random.default_rng(20261201)
    iris = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
    yield "iris_batch", "iris_logreg", "iris-42", {"float_input": iris}, ["label", "probabilities"]
    yield "iris_one", "iris_logreg", None, {"float_input": iris[:1]}, None
    yield "iris_probabilities", "iris_logreg", "p-1", {"float_input": iris[1:]}, ["probabilities"]
    yield "mlp_batch", "mlp", "mlp-8", {"features": rng.normal(size=(8, 64)).astype(np.float32)}, None
    yield "cnn", "cnn", "img-1", {"image": rng.random(size=(1, 1, 28, 28)).astype(np.float32)}, None
    dtypes = {
        "x_f32": np.array([[0.5, -1.25, 3.0], [2.0, 0.0, -0.5]], dtype=np.float32),
        "x_f64": np.array([[1e-3, 2.5, -7.0], [0.1, 0.2, 0.3]], dtype=np.float64),
        "x_i64": np.array([[-9007199254740993, 2, 3], [4, 5, -6]], dtype=np.int64),
        "x_i32": np.array([[-2147483647, 2, 3], [4, 2147483646, 6]], dtype=np.int32),
        "x_u8": np.array([[0, 128, 255], [1, 2, 3]], dtype=np.uint8),
        "x_i8": np.array([[-127, 0, 126], [-1, 1, 2]], dtype=np.int8),
    }
    yield "dtypes", "dtypes", "all-types", dtypes, None


def triton_inputs(inputs):
    out = []
    for name, array in inputs.items():
        i = httpclient.InferInput(name, list(array.shape), triton_dtype(array.dtype))
        i.set_data_from_numpy(array, binary_data=False)
        out.append(i)
    return out


def triton_dtype(dtype):
    names = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "int8": "INT8"}
    return names[np.dtype(dtype).name]


def triton_outputs(wanted):
    if wanted is None:
        return None
    return [httpclient.InferRequestedOutput(name, binary_data=False) for name in wanted]


def expected(model, inputs, wanted):
    sess = ort.InferenceSession(str(HERE / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(None, inputs)
    keep = wanted if wanted is not None else names
    return {
        name: {"datatype": triton_dtype(r.dtype), "shape": list(r.shape), "data": r.flatten().tolist()}
        for name, r in zip(names, results)
        if name in keep
    }, keep


def write():
    OUT.mkdir(exist_ok=True)
    for case, model, rid, inputs, wanted in cases():
        body, json_size = httpclient.InferenceServerClient.generate_request_body(
            triton_inputs(inputs), outputs=triton_outputs(wanted), request_id=rid or ""
        )
        assert json_size is None, "JSON only: no binary extension"
        if isinstance(body, str):
            body = body.encode()
        (OUT / f"{case}.request.json").write_bytes(body)
        outputs, order = expected(model, inputs, wanted)
        doc = {"model": model, "id": rid, "outputs": outputs, "order": order}
        (OUT / f"{case}.expected.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{case}: {len(body)} bytes")


def check(url):
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    failures = 0
    for case, model, rid, inputs, wanted in cases():
        try:
            if not client.is_model_ready(model):
                print(f"{case}: model {model} not served here, skipped")
                continue
        except Exception:
            print(f"{case}: model {model} not served here, skipped")
            continue
        meta = client.get_model_metadata(model)
        result = client.infer(model, triton_inputs(inputs), outputs=triton_outputs(wanted), request_id=rid or "")
        want, order = expected(model, inputs, wanted)
        response = result.get_response()
        ok = (rid is None or response["id"] == rid) and [o["name"] for o in response["outputs"]] == order
        for name, exp in want.items():
            got = result.as_numpy(name)
            ref = np.array(exp["data"]).reshape(exp["shape"])
            ok &= got is not None and list(got.shape) == exp["shape"] and np.allclose(got, ref, rtol=1e-5, atol=1e-5)
        print(f"{case}: {'ok' if ok else 'MISMATCH'} (platform {meta['platform']}, version {response['model_version']})")
        failures += not ok
    return failures


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--check", metavar="URL", help="host:port of a running agent's local API")
    a = p.parse_args()
    if a.check:
        sys.exit(1 if check(a.check) else 0)
    write()
