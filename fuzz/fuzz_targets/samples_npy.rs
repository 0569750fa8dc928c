//! numpy `.npy` sample files (`samples::SampleFile::open` on a `.npy`, then `next_batch`) and
//! the reference-output reader `samples::read_npy`. Each input is written to a scratch file
//! first. The first byte picks the model whose signature the array is checked against. Never
//! panics, and a header declaring more data than the file holds is an error, not an
//! allocation of the declared size.
#![no_main]

use drover_runtime::samples::{SampleFile, read_npy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let signatures = drover_fuzz::signatures();
    let sig = &signatures[usize::from(pick) % signatures.len()];
    let path = drover_fuzz::scratch_file("samples.npy", body);
    let _ = read_npy(&path);
    let Ok(mut file) = SampleFile::open(&path, sig) else { return };
    let _ = file.len_hint();
    for _ in 0..64 {
        match file.next_batch(16) {
            Ok(batch) if !batch.is_empty() => {}
            _ => break,
        }
    }
});
