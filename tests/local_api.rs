//! The local inference API (Open Inference Protocol v2) over real HTTP: requests written by
//! tritonclient (`models/make_oip_requests.py`) answered as onnxruntime answers them, the
//! protocol's metadata and health endpoints, its error JSON for every kind of bad request, a
//! bounded queue that says 503, dynamic batching, and the real agent binary called with curl.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::api::{LocalApi, Reply, agent_config_with_api, delete, get, post, post_with, serve_model, service};
use drover_tests::cli::{model, ok, signed_bundle, trust_setup};
use drover_tests::manifest::models_dir;
use drover_tests::tools::{require_tool, workspace_bin};
use serde_json::{Value, json};

fn oip(case: &str, what: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(format!("oip/{case}.{what}.json"))).expect("committed OIP fixture")
}

/// Asserts a response carries exactly the expected outputs (onnxruntime's), in order.
fn assert_outputs(reply: &Value, expected: &Value) {
    let outputs = reply["outputs"].as_array().expect("outputs");
    let order: Vec<&str> =
        expected["order"].as_array().expect("an array").iter().map(|v| v.as_str().expect("a string")).collect();
    let names: Vec<&str> = outputs.iter().map(|o| o["name"].as_str().expect("a string")).collect();
    assert_eq!(names, order, "outputs asked for, in order");
    for o in outputs {
        let want = &expected["outputs"][o["name"].as_str().expect("a string")];
        assert_eq!(o["datatype"], want["datatype"], "{}", o["name"]);
        assert_eq!(o["shape"], want["shape"], "{}", o["name"]);
        let (got, exp) = (o["data"].as_array().expect("an array"), want["data"].as_array().expect("an array"));
        assert_eq!(got.len(), exp.len());
        for (g, e) in got.iter().zip(exp) {
            if e.is_i64() || e.is_u64() {
                assert_eq!(g, e, "integers exact in {}", o["name"]);
            } else {
                let (g, e) = (g.as_f64().expect("a number"), e.as_f64().expect("a number"));
                assert!((g - e).abs() <= 1e-5 + 1e-4 * e.abs(), "{}: {g} vs {e}", o["name"]);
            }
        }
    }
}

fn assert_error(r: &Reply, status: u16, contains: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    let e = r.json();
    let message = e["error"].as_str().unwrap_or_else(|| panic!("an error object: {}", r.body));
    assert!(message.contains(contains), "'{message}' should say '{contains}'");
    assert_eq!(e.as_object().expect("an object").len(), 1, "only the error field: {}", r.body);
}

#[test]
fn requests_written_by_tritonclient_get_onnxruntime_answers() {
    let api = LocalApi::start(service(""), 1 << 20);
    let cases = [
        ("iris_batch", "iris_logreg"),
        ("iris_one", "iris_logreg"),
        ("iris_probabilities", "iris_logreg"),
        ("mlp_batch", "mlp"),
        ("cnn", "cnn"),
        ("dtypes", "dtypes"),
    ];
    for (case, model) in cases {
        serve_model(&api.inference, &format!("{model}.onnx"), model, 1);
        let expected: Value = serde_json::from_slice(&oip(case, "expected")).unwrap();
        let r = post(&api.url(&format!("/v2/models/{model}/infer")), &oip(case, "request"));
        assert_eq!(r.status, 200, "{case}: {}", r.body);
        assert_eq!(r.content_type, "application/json");
        let v = r.json();
        assert_eq!(v["model_name"], model);
        assert_eq!(v["model_version"], "1");
        match expected["id"].as_str() {
            Some(id) => assert_eq!(v["id"], id, "{case}: the request id is echoed"),
            None => assert!(v["id"].as_str().is_some_and(|id| id.starts_with('r')), "{case}: an id is given"),
        }
        assert_outputs(&v, &expected);
        // The same request on the versioned path.
        let r = post(&api.url(&format!("/v2/models/{model}/versions/1/infer")), &oip(case, "request"));
        assert_eq!(r.status, 200, "{case}: {}", r.body);
    }
    let (period, _) = api.inference.take_period(0);
    assert_eq!(period.inferences, 2 * (3 + 1 + 2 + 8 + 1 + 2), "every row is an inference in telemetry");
}

#[test]
fn metadata_health_and_readiness_follow_the_spec() {
    let api = LocalApi::start(service(""), 1 << 20);
    assert_eq!(get(&api.url("/v2/health/live")).json(), json!({"live": true}));
    let r = get(&api.url("/v2/health/ready"));
    assert_eq!((r.status, r.json()), (503, json!({"ready": false})), "no model yet: not ready");
    assert_error(&get(&api.url("/v2/models/iris/ready")), 404, "no model is installed");

    serve_model(&api.inference, "iris_logreg.onnx", "iris", 3);
    assert_eq!(get(&api.url("/v2/health/ready")).json(), json!({"ready": true}));
    let server = get(&api.url("/v2")).json();
    assert_eq!(server["name"], "drover-agent");
    assert_eq!(server["extensions"], json!([]));
    assert!(server["version"].is_string());
    let expected = json!({
        "name": "iris", "versions": ["3"], "platform": "onnx_onnxv1",
        "inputs": [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
        ]
    });
    assert_eq!(get(&api.url("/v2/models/iris")).json(), expected);
    assert_eq!(get(&api.url("/v2/models/iris/versions/3")).json(), expected);
    assert_eq!(get(&api.url("/v2/models/iris/ready")).json(), json!({"name": "iris", "ready": true}));
    assert_eq!(get(&api.url("/v2/models/iris/versions/3/ready")).json(), json!({"name": "iris", "ready": true}));
    assert_error(&get(&api.url("/v2/models/iris/versions/2")), 404, "version 2 is not served (serving version 3)");
    assert_error(&get(&api.url("/v2/models/other")), 404, "this device serves 'iris'");
    api.inference.unload();
    assert_eq!(get(&api.url("/v2/health/ready")).status, 503, "unloaded: not ready again");
}

/// A classifier as skl2onnx writes it by default: `[?, 4]` input, probabilities behind a ZipMap.
/// OIP v2 carries tensors, not maps: the probabilities come as a [N, 3] tensor and the model's
/// metadata names the class of each column.
#[test]
fn a_zipmap_classifier_serves_its_probabilities_as_a_tensor_with_the_labels_in_its_metadata() {
    let api = LocalApi::start(service(""), 1 << 20);
    serve_model(&api.inference, "exported/skl_logreg_zipmap.onnx", "iris", 1);
    let meta = get(&api.url("/v2/models/iris")).json();
    assert_eq!(meta["inputs"], json!([{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]), "{meta}");
    let probs = meta["outputs"].as_array().and_then(|o| o.iter().find(|o| o["name"] == "output_probability"));
    assert_eq!(
        probs,
        Some(&json!({"name": "output_probability", "datatype": "FP32", "shape": [-1, 3],
                     "parameters": {"class_labels": ["0", "1", "2"]}})),
        "{meta}"
    );
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32",
        "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}))
    .expect("json");
    let r = post(&api.url("/v2/models/iris/infer"), &body).json();
    let out = r["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == "output_probability"))
        .expect("probabilities");
    assert_eq!(out["shape"], json!([2, 3]), "{r}");
    let p: Vec<f64> = out["data"].as_array().expect("data").iter().filter_map(|v| v.as_f64()).collect();
    assert!(p[0] > 0.9 && p[5] > 0.5, "setosa, then virginica: {p:?}");
    assert!((p[0] + p[1] + p[2] - 1.0).abs() < 1e-5, "{p:?}");
}

#[test]
fn bad_requests_get_the_protocols_error_json_and_change_nothing() {
    let api = LocalApi::start(service(""), 64 * 1024);
    serve_model(&api.inference, "iris_logreg.onnx", "iris", 1);
    let infer = api.url("/v2/models/iris/infer");
    let input = |shape: Value, datatype: &str, data: Value| {
        serde_json::to_vec(
            &json!({"inputs": [{"name": "float_input", "shape": shape, "datatype": datatype, "data": data}]}),
        )
        .unwrap()
    };
    // Refused before the model is looked at.
    assert_error(&post(&infer, b"{\"inputs\": [}"), 400, "invalid inference request");
    assert_error(&post(&infer, b"[]"), 400, "invalid inference request");
    assert_error(&post(&infer, b"{\"id\": \"x\"}"), 400, "missing field `inputs`");
    assert_error(&post(&infer, &vec![b' '; 65 * 1024]), 413, "api.max_body_kib");
    assert_error(
        &post_with(&infer, &oip("iris_one", "request"), &[("inference-header-content-length", "10")]),
        400,
        "binary tensor data extension",
    );
    assert_error(&post(&api.url("/v2/models/nope/infer"), &oip("iris_one", "request")), 404, "'nope' is not served");
    assert_error(&post(&api.url("/v2/models/iris/versions/9/infer"), &oip("iris_one", "request")), 404, "version 9");
    assert_error(&get(&infer), 405, "method not allowed");
    assert_error(&delete(&api.url("/v2/models/iris")), 405, "method not allowed");
    assert_error(&get(&api.url("/v1/models/iris")), 404, "no such endpoint");
    // Refused by the tensor checks: counted as input errors in telemetry.
    let bad = [
        (input(json!([1, 3]), "FP32", json!([1, 2, 3])), "does not fit the model's [-1, 4]"),
        (input(json!([1, 4]), "FP64", json!([1, 2, 3, 4])), "datatype FP64 where the model takes FP32"),
        (input(json!([2, 4]), "FP32", json!([1, 2, 3, 4])), "needs 8 elements, data has 4"),
        (input(json!([1, 4]), "FP32", json!([1, 2, 3, "4"])), "invalid inference request"),
        (input(json!([1, 4]), "FP32", json!([1, 2, 3, 1e39])), "element 3 (1e39) is not a valid FP32"),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}))
                .unwrap(),
            "unexpected input 'x'",
        ),
        (serde_json::to_vec(&json!({"inputs": []})).unwrap(), "expected input 'float_input' is missing"),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                "data": [1, 2, 3, 4]}], "outputs": [{"name": "logits"}]}))
            .unwrap(),
            "unexpected output 'logits'",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                "data": [], "parameters": {"binary_data_size": 16}}]}))
            .unwrap(),
            "binary tensor data extension",
        ),
    ];
    for (body, says) in &bad {
        assert_error(&post(&infer, body), 400, says);
    }
    let (period, _) = api.inference.take_period(0);
    assert_eq!(period.inferences, 0, "nothing ran");
    assert_eq!(period.errors.input, 8, "tensor misfits are input errors in telemetry (JSON errors are not)");
    // And the service is unharmed.
    let r = post(&infer, &oip("iris_batch", "request"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outputs"][0]["data"], json!([0, 2, 1]));
    // Binary outputs are a preference (tritonclient asks whenever it lists no outputs): JSON it is.
    let r = post(
        &infer,
        &serde_json::to_vec(&json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
            "data": [5.1, 3.5, 1.4, 0.2]}], "outputs": [{"name": "label", "parameters": {"binary_data": true}}],
            "parameters": {"binary_data_output": true}}))
        .unwrap(),
    );
    assert_eq!((r.status, &r.json()["outputs"][0]["data"]), (200, &json!([0])));
}

/// A CNN request of `rows` images (the CNN has a fixed batch of one, so rows run one by one).
fn cnn_rows(rows: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..rows * 784).map(|i| (i % 255) as f32 / 255.0).collect();
    serde_json::to_vec(
        &json!({"inputs": [{"name": "image", "shape": [rows, 1, 28, 28], "datatype": "FP32", "data": data}]}),
    )
    .expect("a JSON request")
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_serves_the_rest() {
    let api = LocalApi::start(service("[inference]\nqueue = 1"), 4 << 20);
    serve_model(&api.inference, "cnn.onnx", "cnn", 1);
    let body = std::sync::Arc::new(cnn_rows(64));
    let url = api.url("/v2/models/cnn/infer");
    let mut busy = 0;
    for _round in 0..10 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let replies: Vec<Reply> = (0..8)
            .map(|_| {
                let (url, body, barrier) = (url.clone(), body.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    post(&url, &body)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("client"))
            .collect();
        for r in &replies {
            match r.status {
                200 => assert_eq!(r.json()["outputs"][0]["shape"], json!([64, 10])),
                503 => {
                    assert_error(r, 503, "busy");
                    assert_eq!(r.retry_after.as_deref(), Some("1"));
                    busy += 1;
                }
                s => panic!("only 200 or 503 under load, got {s}: {}", r.body),
            }
        }
        assert!(replies.iter().any(|r| r.status == 200), "the queue keeps serving");
        if busy > 0 {
            break;
        }
    }
    assert!(busy > 0, "eight clients on a queue of one must see 503s");
    let (period, _) = api.inference.take_period(0);
    assert_eq!(u64::from(period.errors.busy), busy, "telemetry counts the refusals");
    assert_eq!(period.queue_max, 1, "never more than the bound waited");
}

#[test]
fn dynamic_batching_merges_concurrent_clients_and_keeps_every_answer() {
    let api = LocalApi::start(service("[inference]\nbatch = 16\nbatch_delay_us = 2000"), 1 << 20);
    serve_model(&api.inference, "mlp.onnx", "mlp", 1);
    let mut reference = drover_runtime::engine::Model::load(&models_dir().join("mlp.onnx")).expect("mlp");
    let row = |client: usize, i: usize| -> Vec<f32> {
        (0..64).map(|k| ((client * 131 + i * 17 + k) % 97) as f32 / 97.0 - 0.5).collect()
    };
    let (clients, each) = (8, 40);
    let url = api.url("/v2/models/mlp/infer");
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..each)
                    .map(|i| {
                        let body = json!({"id": format!("c{c}-{i}"), "inputs": [{"name": "features", "shape": [1, 64],
                            "datatype": "FP32", "data": row(c, i)}]});
                        let r = post(&url, &serde_json::to_vec(&body).unwrap());
                        assert_eq!(r.status, 200, "{}", r.body);
                        let v = r.json();
                        assert_eq!(v["id"], format!("c{c}-{i}"), "each client gets its own answer");
                        v["outputs"][0]["data"]
                            .as_array()
                            .expect("an array")
                            .iter()
                            .map(|x| x.as_f64().expect("a number"))
                            .collect()
                    })
                    .collect::<Vec<Vec<f64>>>()
            })
        })
        .collect();
    for (c, t) in threads.into_iter().enumerate() {
        for (i, got) in t.join().expect("client").into_iter().enumerate() {
            let input =
                drover_runtime::tensor::Tensor::new(vec![64], drover_runtime::tensor::TensorData::F32(row(c, i)))
                    .unwrap();
            let mut out = Vec::new();
            reference.run_one(&[input], &mut out).unwrap();
            for (g, e) in got.iter().zip(out[0].to_f64_vec()) {
                assert!((g - e).abs() <= 1e-5, "client {c} request {i}: {g} vs {e}");
            }
        }
    }
    let requests = (clients * each) as u64;
    let calls = api.inference.engine_calls();
    assert!(calls < requests, "concurrent requests were merged: {calls} engine calls for {requests} requests");
    let (period, _) = api.inference.take_period(0);
    assert_eq!(period.inferences, requests);
}

/// The real `drover-agent run` with an installed bundle, called with curl as a user would, and
/// an API on a unix socket.
#[test]
fn curl_calls_the_real_agent_over_tcp_and_a_unix_socket() {
    let Some(curl) = require_tool("curl", "curl") else { return };
    let dir = trust_setup();
    let d = dir.path();
    signed_bundle(d, &model("iris_logreg.onnx"), "iris", "1", &[], "iris.drv");
    ok("drover-agent", d, &["trust", "--root", "root.json", "--data-dir", "board"]);
    ok("drover-agent", d, &["install", "iris.drv", "--data-dir", "board"]);
    let port = agent_config_with_api(d);
    let log = std::fs::File::create(d.join("agent.log")).expect("log file");
    let mut agent = Command::new(workspace_bin("drover-agent"))
        .current_dir(d)
        .args(["run", "--config", "agent.toml"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn the agent");
    let base = format!("http://127.0.0.1:{port}");
    let curl_run = |args: &[&str]| -> (String, String) {
        let out = Command::new(&curl).args(["-s", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (body.to_string(), code.to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl_run(&[&format!("{base}/v2/health/ready")]).1 != "200" {
        assert!(Instant::now() < deadline, "the agent's API never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let request = models_dir().join("oip/iris_batch.request.json");
    let (body, code) = curl_run(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", request.display()),
        &format!("{base}/v2/models/iris/infer"),
    ]);
    assert_eq!(code, "200", "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (v["model_name"].as_str(), v["model_version"].as_str(), v["id"].as_str()),
        (Some("iris"), Some("1"), Some("iris-42"))
    );
    assert_eq!(v["outputs"][0]["data"], json!([0, 2, 1]));
    let (body, code) = curl_run(&["-d", "{not json", &format!("{base}/v2/models/iris/infer")]);
    assert_eq!(code, "400");
    assert!(serde_json::from_str::<Value>(&body).expect("error JSON")["error"].is_string());
    let term = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().expect("kill");
    assert!(term.success());
    assert!(agent.wait().expect("exit").success(), "SIGTERM stops the agent and its API cleanly");
    // Boot loads and self-tests the model; serving takes that model rather than loading the file
    // a second time (a model's load is most of an agent's start on a board).
    let log = std::fs::read_to_string(d.join("agent.log")).expect("agent log");
    assert_eq!(log.matches("model ready in").count(), 1, "one load of the model at start:\n{log}");

    let socket = d.join("api.sock");
    let api = LocalApi::start_unix(service(""), socket.clone());
    serve_model(&api.inference, "iris_logreg.onnx", "iris", 2);
    let (body, code) = curl_run(&[
        "--unix-socket",
        &socket.to_string_lossy(),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", request.display()),
        "http://localhost/v2/models/iris/infer",
    ]);
    assert_eq!(code, "200", "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["model_version"], "2");
    drop(api);
    assert!(!Path::new(&socket).exists(), "the socket file is removed on shutdown");
}
