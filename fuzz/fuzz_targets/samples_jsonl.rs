//! JSON Lines sample files (`samples::SampleFile::open` on a `.jsonl`, then `next_batch`): the
//! input files of `drover-agent infer` and the reference checks. The reader takes a path, so
//! each input is written to a scratch file first. The first byte picks the model whose
//! signature the samples are checked against. Never panics; a bad line is a `SampleError`.
#![no_main]

use drover_runtime::samples::SampleFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let signatures = drover_fuzz::signatures();
    let sig = &signatures[usize::from(pick) % signatures.len()];
    let path = drover_fuzz::scratch_file("samples.jsonl", body);
    let Ok(mut file) = SampleFile::open(&path, sig) else { return };
    let _ = file.len_hint();
    // A few batches: enough to reach every line of a fuzz-sized input.
    for _ in 0..64 {
        match file.next_batch(16) {
            Ok(batch) if !batch.is_empty() => {}
            _ => break,
        }
    }
});
