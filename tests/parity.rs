//! Every reference model gives onnxruntime's answers through Drover's engine.
//!
//! The same test binary runs on x86_64 and, cross-built, under qemu-user for aarch64 and armv7
//! (`cargo test --target … -p drover-tests --test parity`), which is how parity on the boards'
//! instruction sets is shown.

use drover_runtime::engine::{LoadError, LoadOptions};
use drover_runtime::samples::{Sample, SampleFile, read_npy};
use drover_runtime::{Model, Tensor};
use drover_tests::manifest::{self, MlTolerance, ReferenceModel, resolve};
use drover_tests::parity::check_output;

fn read_all(model: &Model, file: &str) -> Vec<Sample> {
    let mut samples = SampleFile::open(&resolve(file), model.signature()).unwrap_or_else(|e| panic!("{e}"));
    samples.next_batch(usize::MAX).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `samples` in batches of `batch` and checks every output against onnxruntime's.
fn check(reference: &ReferenceModel, samples: &[Sample], batch: usize) {
    check_with(reference, samples, batch, LoadOptions::default());
}

/// Checks every output against onnxruntime's within its tolerance; returns the largest
/// difference seen.
fn check_with(reference: &ReferenceModel, samples: &[Sample], batch: usize, options: LoadOptions) -> f64 {
    let mut model = Model::load_with(&reference.path(), options).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
    let mut outputs: Vec<Vec<Tensor>> = Vec::new();
    for chunk in samples.chunks(batch) {
        outputs.extend(model.run_samples(chunk).unwrap_or_else(|e| panic!("{}: {e}", reference.name)));
    }
    let expected = reference.reference.as_ref().expect("runnable models have reference data");
    assert_eq!(outputs.len(), expected.samples, "{}: sample count", reference.name);
    let mut largest = 0f64;
    for (o, out) in expected.outputs.iter().enumerate() {
        let column: Vec<Tensor> = outputs.iter().map(|s| s[o].clone()).collect();
        let worst = check_output(&reference.name, out, &column);
        eprintln!(
            "{:<14} {:<14} batch {batch:>2}: max abs diff {worst:.3e} (tolerance {:.1e})",
            reference.name, out.name, out.tolerance
        );
        largest = largest.max(worst);
    }
    largest
}

/// What users bring: skl2onnx's default export (an unnamed batch axis, a ZipMap), torch's
/// dynamo exporter and MLflow 3's ONNX directory (weights in a side file). Each gives
/// onnxruntime's answers one sample at a time and in batches, and a ZipMap's maps come out as
/// the tensor of their values, columns in the order of the class labels the signature names.
#[test]
fn models_as_the_exporters_write_them_match_onnxruntime() {
    let models: Vec<ReferenceModel> = manifest::load_exported().models.into_iter().filter(|m| !m.refused).collect();
    assert!(models.len() >= 5, "the manifest lists the exported models");
    for reference in models {
        let model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        let samples = read_all(&model, &reference.reference.as_ref().expect("reference").input_jsonl);
        for out in &reference.reference.as_ref().expect("reference").outputs {
            let served = model.signature().class_labels.iter().find(|l| l.output == out.name);
            assert_eq!(
                served.map(|l| &l.labels),
                out.class_labels.as_ref(),
                "{}: {} class labels",
                reference.name,
                out.name
            );
        }
        if reference.batch == "unnamed" {
            assert_eq!(
                model.signature().batch,
                drover_runtime::engine::BatchAxis::Symbolic("N".into()),
                "{}: the unnamed leading axis is the batch",
                reference.name
            );
        }
        for batch in [1, 5, 16] {
            check(&reference, &samples, batch);
        }
        check_one_by_one(&reference, &samples);
    }
}

/// What torch writes that tract would load and answer wrongly is refused, naming the node and
/// the attribute: `nn.RNN(nonlinearity='relu')` through the TorchScript exporter is an ONNX RNN
/// with `activations=["Relu"]`, which tract's importer ignores (it always applies Tanh). Run
/// anyway (the check disabled), tract's states differ from onnxruntime's (kept in the manifest)
/// by up to 0.83 where they reach 1.75 (mean 0.18; 46% of the values change sign, as ReLU
/// states are never negative), and equal onnxruntime's for the same file with Tanh to 2e-7.
#[test]
fn exported_models_tract_would_get_wrong_are_refused_naming_the_attribute() {
    let refused: Vec<ReferenceModel> = manifest::load_exported().models.into_iter().filter(|m| m.refused).collect();
    assert!(!refused.is_empty());
    for reference in refused {
        match Model::load(&reference.path()) {
            Err(LoadError::UnsupportedAttributes(got)) => {
                let got: Vec<(&str, &str, &str)> =
                    got.iter().map(|a| (a.op.as_str(), a.node.as_str(), a.attribute.as_str())).collect();
                let want: Vec<(&str, &str, &str)> = reference
                    .refused_attributes
                    .iter()
                    .map(|a| (a.op.as_str(), a.node.as_str(), a.attribute.as_str()))
                    .collect();
                assert_eq!(got, want, "{}", reference.name);
            }
            other => panic!("{}: expected a refusal naming the attributes, got {other:?}", reference.name),
        }
    }
}

/// The serving path (`Model::run_one`, what the agent and `infer` use for one sample): one model
/// and one state for every sample in turn, so nothing one run leaves behind (a `Scan`'s state)
/// may change the next one's answer.
fn check_one_by_one(reference: &ReferenceModel, samples: &[Sample]) {
    let mut model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
    let mut outputs: Vec<Vec<Tensor>> = Vec::new();
    for sample in samples {
        let mut out = Vec::new();
        model.run_one(sample, &mut out).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        outputs.push(out);
    }
    for (o, expected) in reference.reference.as_ref().expect("reference").outputs.iter().enumerate() {
        let column: Vec<Tensor> = outputs.iter().map(|s| s[o].clone()).collect();
        let worst = check_output(&reference.name, expected, &column);
        eprintln!("{:<14} {:<14} one by one: max abs diff {worst:.3e}", reference.name, expected.name);
    }
}

fn runnable() -> Vec<ReferenceModel> {
    let models: Vec<ReferenceModel> = manifest::load().models.into_iter().filter(|m| !m.refused).collect();
    assert!(models.len() >= 8, "the manifest lists the reference models");
    models
}

#[test]
fn every_reference_model_matches_onnxruntime_one_sample_at_a_time() {
    for reference in runnable() {
        let model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        let samples = read_all(&model, &reference.reference.as_ref().expect("reference").input_jsonl);
        check(&reference, &samples, 1);
    }
}

#[test]
fn npy_inputs_give_the_same_answers_as_jsonl() {
    for reference in runnable() {
        let Some(npy) = reference.reference.as_ref().and_then(|r| r.input_npy.clone()) else {
            continue;
        };
        let model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        let from_npy = read_all(&model, &npy);
        let from_jsonl = read_all(&model, &reference.reference.as_ref().expect("reference").input_jsonl);
        assert_eq!(from_npy, from_jsonl, "{}: .npy and .jsonl inputs differ", reference.name);
        check(&reference, &from_npy, 1);
    }
}

#[test]
fn symbolic_batch_models_match_in_batches() {
    let mut checked = 0;
    for reference in runnable().into_iter().filter(|m| m.batch == "symbolic") {
        let model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        let samples = read_all(&model, &reference.reference.as_ref().expect("reference").input_jsonl);
        // A batch that divides the samples, one that leaves a remainder, and all at once.
        for batch in [4, 5, samples.len()] {
            check(&reference, &samples, batch);
        }
        checked += 1;
    }
    assert!(checked >= 4, "mlp variants, iris and dtypes have a symbolic batch");
}

/// The int8 models written by `drover quantize` give onnxruntime's outputs within one output
/// step. On x86_64 they are identical (0 difference); under qemu this shows whether the ARM
/// kernels round the same way, and the printed difference says how far they are from identical.
#[test]
fn drover_quantized_models_match_onnxruntime_within_one_output_step() {
    let quantized = manifest::load_quantized().models;
    assert!(quantized.len() >= 6, "quantize.json lists the CNN and MLP in both formats");
    for q in quantized {
        let mut model = Model::load(&resolve(&q.file)).unwrap_or_else(|e| panic!("{}: {e}", q.name));
        let samples = read_all(&model, &q.holdout);
        let got: Vec<Tensor> = samples
            .chunks(1)
            .map(|s| model.run_samples(s).unwrap_or_else(|e| panic!("{}: {e}", q.name)).remove(0).remove(0))
            .collect();
        let expected = manifest::ReferenceOutput {
            name: "logits".into(),
            dtype: "float32".into(),
            npy: q.output_npy.clone(),
            tolerance: q.output_step * 1.0001,
            class_labels: None,
            definition: None,
        };
        let worst = check_output(&q.name, &expected, &got);
        eprintln!("{:<24} logits: max abs diff {worst:.3e} (one output step {:.3e})", q.name, q.output_step);
    }
}

/// The load-time QDQ rewrite (engine/qdq) fires on every QDQ model, every matmul becomes one of
/// Drover's int8 layers, and both with and without it the outputs stay within one output
/// quantization step of onnxruntime's.
#[test]
fn qdq_models_are_rewritten_and_stay_within_one_step() {
    let mut checked = 0;
    for reference in runnable().into_iter().filter(|m| m.kind == "qdq") {
        let model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        let done = model.qdq_rewrites();
        if reference.name.starts_with("cnn") {
            assert_eq!(done.integer_ops, 3, "{}: MaxPool x2 and Flatten on int8: {done:?}", reference.name);
            assert_eq!(done.int8_layers, 5, "{}: Conv x3 and Gemm x2 as int8 layers: {done:?}", reference.name);
        } else {
            assert_eq!(done.int8_layers, 3, "{}: MatMul x3 as int8 layers: {done:?}", reference.name);
        }
        let samples = read_all(&model, &reference.reference.as_ref().expect("reference").input_jsonl);
        // The int8 layers compute onnxruntime's integers exactly: i32 sums, then the same float
        // steps in the same order. Under qemu this is the check that the ARM path (plain Rust
        // lanes) gives the very outputs x86's AVX-512/AVX2 paths give.
        let worst = check_with(&reference, &samples, 1, LoadOptions::default());
        assert_eq!(worst, 0.0, "{}: int8 layers differ from onnxruntime", reference.name);
        check_with(&reference, &samples, 1, LoadOptions { qdq_rewrite: false, ..LoadOptions::default() });
        checked += 1;
    }
    assert!(checked >= 2, "cnn_int8_qdq and mlp_int8_qdq");
}

/// onnxruntime's QOperator int8 files as `quantize_static` writes them by default, with
/// com.microsoft QGemm, QLinearAdd, QLinearGlobalAveragePool, QLinearMul, QLinearConcat,
/// QLinearSigmoid, QLinearLeakyRelu and QLinearSoftmax: rewritten at load time into
/// DequantizeLinear → op → QuantizeLinear, they give onnxruntime's answers within one output
/// quantization step (its kernels round in fixed point or through lookup tables), in batches and
/// one sample at a time; their QGemm layers become Drover's integer layers.
#[test]
fn onnxruntime_qoperator_models_match_onnxruntime_within_one_step() {
    let models: Vec<ReferenceModel> =
        manifest::load_qop().models.into_iter().filter(|m| !m.refused && m.kind == "int8-qop").collect();
    assert!(models.len() >= 5, "the manifest lists the QOperator models");
    for reference in models {
        let model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        let fused = model.qdq_rewrites().int8_layers;
        assert!(fused >= 1, "{}: QGemm as DQ → Gemm → Q becomes an integer layer", reference.name);
        let expected = reference.reference.as_ref().expect("reference");
        let samples = read_all(&model, &expected.input_jsonl);
        for batch in [1, 5, 16] {
            let worst = check_with(&reference, &samples, batch, LoadOptions::default());
            let step = expected.outputs[0].tolerance;
            eprintln!("{:<12} batch {batch:>2}: {:.3} steps, {fused} int8 layer(s)", reference.name, worst / step);
        }
        check_one_by_one(&reference, &samples);
    }
}

/// onnxruntime's `quantize_dynamic` on an LSTM with its defaults (com.microsoft::DynamicQuantizeLSTM),
/// run as the standard LSTM over the dequantized weights: onnxruntime's answers on that float
/// definition within float rounding, and its own answers (which quantize each step's input on the
/// fly, so they depend on the batch) within the larger of max|ref|/127 and their own spread, in
/// batches and one sample at a time.
#[test]
fn onnxruntime_dynamic_lstm_models_match_onnxruntime() {
    let models: Vec<ReferenceModel> =
        manifest::load_qop().models.into_iter().filter(|m| !m.refused && m.kind == "int8-dynamic").collect();
    assert!(!models.is_empty(), "the manifest lists quantize_dynamic's LSTM");
    for reference in models {
        let model = Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        let expected = reference.reference.as_ref().expect("reference");
        let samples = read_all(&model, &expected.input_jsonl);
        for batch in [1, 5, 16] {
            check_with(&reference, &samples, batch, LoadOptions::default());
        }
        check_one_by_one(&reference, &samples);
        // The strict check: the float definition onnxruntime ran, within float rounding.
        let mut model = model;
        let outputs = model.run_samples(&samples).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
        for (o, out) in expected.outputs.iter().enumerate() {
            let definition = out.definition.as_ref().expect("a dynamic LSTM's output carries its float definition");
            let strict = manifest::ReferenceOutput {
                name: out.name.clone(),
                dtype: out.dtype.clone(),
                npy: definition.npy.clone(),
                tolerance: definition.tolerance,
                class_labels: None,
                definition: None,
            };
            let column: Vec<Tensor> = outputs.iter().map(|s| s[o].clone()).collect();
            let worst = check_output(&reference.name, &strict, &column);
            eprintln!(
                "{:<14} {:<14} {}: max abs diff {worst:.3e} (tolerance {:.1e})",
                reference.name, out.name, definition.what, definition.tolerance
            );
        }
    }
}

/// A file the operator check refuses names every operator it cannot run: onnxruntime's
/// `quantize_dynamic` on an LSTM with a cell clip (com.microsoft::DynamicQuantizeLSTM with an
/// attribute tract's LSTM does not implement, so it is not rewritten). The reference manifest's
/// `*_msft` files, refused before Drover rewrote onnxruntime's QOperator operators, load now.
#[test]
fn microsoft_op_models_are_refused_with_every_op_named() {
    let refused: Vec<ReferenceModel> = manifest::load_qop().models.into_iter().filter(|m| m.refused).collect();
    assert!(!refused.is_empty());
    for reference in refused {
        match Model::load(&reference.path()) {
            Err(LoadError::UnsupportedOps(ops)) => {
                let got: Vec<(String, String, usize)> = ops.into_iter().map(|o| (o.domain, o.op, o.count)).collect();
                let want: Vec<(String, String, usize)> =
                    reference.unsupported.iter().map(|o| (o.domain.clone(), o.op.clone(), o.count)).collect();
                assert_eq!(got, want, "{}", reference.name);
            }
            other => panic!("{}: expected a refusal naming the ops, got {other:?}", reference.name),
        }
    }
    let msft: Vec<ReferenceModel> = manifest::load().models.into_iter().filter(|m| m.refused).collect();
    assert!(msft.len() >= 2);
    for reference in msft {
        Model::load(&reference.path()).unwrap_or_else(|e| panic!("{}: {e}", reference.name));
    }
}

/// Reads a `models/ml/` `.npy` file.
fn ml_npy(relative: &str) -> Tensor {
    read_npy(&manifest::ml_dir().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Compares Drover's `got` with onnxruntime's `want` (same dtype and shape; integers exactly,
/// floats within the tolerance, NaN only where onnxruntime has NaN); returns the largest
/// absolute difference.
fn compare_ml(what: &str, got: &Tensor, want: &Tensor, tolerance: MlTolerance) -> f64 {
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let mut worst = 0f64;
    for (i, (g, w)) in got.to_f64_vec().into_iter().zip(want.to_f64_vec()).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: {g}, onnxruntime NaN");
            continue;
        }
        let diff = (g - w).abs();
        let allowed = tolerance.abs.max(tolerance.rel * w.abs());
        assert!(diff <= allowed, "{what}[{i}]: {g}, onnxruntime {w} (difference {diff:e} over {allowed:e})");
        worst = worst.max(diff);
    }
    worst
}

/// scikit-learn, XGBoost and LightGBM models as skl2onnx and onnxmltools write them (tree
/// ensembles, scalers, SVMs, IsolationForest's label encoders: the ai.onnx.ml operators Drover
/// adds to tract) give onnxruntime's labels exactly and its scores within 1e-5, as one batch,
/// one row at a time and through the serving path.
#[test]
fn ml_models_from_real_exporters_match_onnxruntime() {
    let ml = manifest::load_ml();
    assert!(ml.models.len() >= 27, "the manifest lists the exported models");
    for m in &ml.models {
        let what = format!("{} ({} {})", m.name, m.producer.name, m.producer.version);
        let mut model = Model::load(&manifest::ml_dir().join(&m.file))
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", m.producer.call));
        let inputs: Vec<Tensor> = m.inputs.iter().map(|i| ml_npy(&i.npy)).collect();
        let expected: Vec<Tensor> = m.outputs.iter().map(|o| ml_npy(&o.npy)).collect();
        let outputs = model.run(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(outputs.len(), expected.len(), "{what}: output count");
        for ((o, got), want) in m.outputs.iter().zip(&outputs).zip(&expected) {
            let tolerance = o.tolerance.unwrap_or(MlTolerance { abs: 0.0, rel: 0.0 });
            let worst = compare_ml(&format!("{what}/{}", o.name), got, want, tolerance);
            eprintln!("{:<42} {:<14} max abs diff {worst:.3e}", m.name, o.name);
        }

        // One row at a time, each as a batch of one.
        let rows = inputs[0].shape()[0];
        for r in 0..rows {
            let row: Vec<Tensor> = inputs.iter().map(|t| one_row(t, r)).collect();
            let outputs = model.run(&row).unwrap_or_else(|e| panic!("{what} row {r}: {e}"));
            for ((o, got), want) in m.outputs.iter().zip(&outputs).zip(&expected) {
                let tolerance = o.tolerance.unwrap_or(MlTolerance { abs: 0.0, rel: 0.0 });
                compare_ml(&format!("{what}/{} row {r}", o.name), got, &one_row(want, r), tolerance);
            }
        }

        // The serving path (`Model::run_one`): each sample without its batch axis, one state.
        let strip = model.signature().batch.strips_leading_axis();
        let sample_of = |t: &Tensor, r: usize| {
            if strip { t.unstack(t.shape()[0]).expect("rows").swap_remove(r) } else { one_row(t, r) }
        };
        let mut served = Vec::new();
        for r in 0..rows {
            let sample: Vec<Tensor> = inputs.iter().map(|t| sample_of(t, r)).collect();
            model.run_one(&sample, &mut served).unwrap_or_else(|e| panic!("{what} run_one row {r}: {e}"));
            for ((o, got), want) in m.outputs.iter().zip(&served).zip(&expected) {
                let tolerance = o.tolerance.unwrap_or(MlTolerance { abs: 0.0, rel: 0.0 });
                compare_ml(&format!("{what}/{} run_one row {r}", o.name), got, &sample_of(want, r), tolerance);
            }
        }
    }
}

/// Row `r` of `t`, keeping the leading axis (length 1).
fn one_row(t: &Tensor, r: usize) -> Tensor {
    let mut shape = t.shape().to_vec();
    let row = t.unstack(shape[0]).expect("rows").swap_remove(r);
    shape[0] = 1;
    row.reshape(shape).expect("same element count")
}

/// torchvision's detector ending (score filter, `batched_nms`, a cap of 4) as the TorchScript
/// exporter writes it: an `If` whose branches' shapes differ (an empty tensor when nothing
/// passes the filter, NonMaxSuppression's run-time count otherwise) and a slice past that
/// count. Each case (more detections than the cap, fewer, none) gives onnxruntime's whole
/// tensors, through `run` and through the per-sample path the agent's `infer` takes (the
/// outputs have no batch axis: they are the one sample's answer).
#[test]
fn detector_endings_with_an_if_of_unequal_branches_match_onnxruntime() {
    let dir = manifest::models_dir().join("exported");
    let mut model = Model::load(&dir.join("tv_batched_nms.onnx")).unwrap_or_else(|e| panic!("tv_batched_nms: {e}"));
    let exact = MlTolerance { abs: 1e-6, rel: 1e-5 };
    for case in ["many", "few", "none"] {
        let npy = |what: &str| {
            let path = dir.join(format!("tv_batched_nms.{case}.{what}.npy"));
            read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let x = npy("input");
        let got = model.run(std::slice::from_ref(&x)).unwrap_or_else(|e| panic!("{case}: {e}"));
        let sample = Tensor::new(x.shape()[1..].to_vec(), x.data().clone()).expect("the input without its batch axis");
        let per_sample = model.run_samples(&[vec![sample]]).unwrap_or_else(|e| panic!("{case}, one sample: {e}"));
        for (o, name) in ["boxes", "scores", "labels"].into_iter().enumerate() {
            let want = npy(&format!("output.{name}"));
            compare_ml(&format!("{case} {name}"), &got[o], &want, exact);
            compare_ml(&format!("{case} {name}, one sample"), &per_sample[0][o], &want, exact);
        }
    }
}

/// torchvision's `batched_nms` and `nms` as the TorchScript exporter writes them, over a few
/// hundred clustered boxes (`tv_nms_stress`, two NonMaxSuppression nodes, one behind the `If`):
/// distinct scores, tied scores (onnxruntime keeps the lower index first) and flipped corners
/// give onnxruntime's kept indices exactly, in its order.
#[test]
fn nms_over_hundreds_of_boxes_matches_onnxruntime() {
    let dir = manifest::models_dir().join("exported");
    let mut model = Model::load(&dir.join("tv_nms_stress.onnx")).unwrap_or_else(|e| panic!("tv_nms_stress: {e}"));
    let exact = MlTolerance { abs: 0.0, rel: 0.0 };
    for case in ["distinct", "tied", "flipped"] {
        let npy = |what: &str| {
            let path = dir.join(format!("tv_nms_stress.{case}.{what}.npy"));
            read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let x = npy("input");
        let got = model.run(std::slice::from_ref(&x)).unwrap_or_else(|e| panic!("{case}: {e}"));
        for (o, name) in ["batched_keep", "keep"].into_iter().enumerate() {
            let want = npy(&format!("output.{name}"));
            assert!(want.shape()[0] < x.shape()[0], "{case} {name}: the fixture suppresses boxes");
            compare_ml(&format!("{case} {name}"), &got[o], &want, exact);
        }
    }
}
