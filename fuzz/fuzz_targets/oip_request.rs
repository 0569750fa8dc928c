//! OIP v2 inference requests: the JSON body of `POST /v2/models/{name}/infer` on the local
//! API, parsed (`api::oip::InferenceRequest`, with the flattening `api::data::FlatData`) and
//! checked against a model's signature (`api::tensors::wanted` and `samples`), everything the
//! handler does before inferring. The first byte picks the model. Never panics; a refused
//! request is an error, which the handler answers with 400.
#![no_main]

use drover_runtime::api::oip::InferenceRequest;
use drover_runtime::api::tensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let Ok(request) = serde_json::from_slice::<InferenceRequest>(body) else { return };
    let signatures = drover_fuzz::signatures();
    let sig = &signatures[usize::from(pick) % signatures.len()];
    let _ = tensors::wanted(sig, request.outputs.as_deref());
    if let Ok(samples) = tensors::samples(sig, request.inputs) {
        for sample in &samples {
            assert_eq!(sample.len(), sig.inputs.len(), "a checked sample has every input");
        }
    }
});
