//! The bundle container (`bundle::read_header`, `bundle::read_payload`) and the signed manifest
//! inside its header (`Manifest::validate`): what an agent reads from a downloaded bundle before
//! and while it checks the signature. Reading never panics and never allocates past the
//! limits; a header that decodes is written back by `write_bundle` and reads back the same.
#![no_main]

use std::io::{self, Cursor};

use drover_runtime::bundle::{Limits, read_header, read_payload, write_bundle};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that a declared size the fuzzer picks cannot make a run slow or large.
const LIMITS: Limits = Limits { max_header: 64 * 1024, max_file: 1 << 20, max_payload: 4 << 20 };

fuzz_target!(|data: &[u8]| {
    let mut r = Cursor::new(data);
    let Ok(header) = read_header(&mut r, &LIMITS) else { return };
    let _ = header.manifest.validate();
    let _ = header.manifest.model_file();
    let _ = read_payload(&mut r, &header.manifest, &LIMITS, |_| Ok::<_, io::Error>(io::sink()));

    let mut written = Vec::new();
    write_bundle(&mut written, &header, &[]).expect("writes to memory");
    let back = read_header(&mut Cursor::new(&written), &LIMITS).expect("a written header reads back");
    assert_eq!(back, header, "read_header(write_bundle(x)) == x");
});
