//! Release agents for the benches that run the shipped binary (ARM instruction counts, footprint),
//! and `.npy` sample files of any length cut from the committed ones.

use std::path::{Path, PathBuf};

use crate::zoo::{repo, target_dir};

/// The release `drover-agent` for `triple`, brought up to date by cargo first (a no-op when it
/// is; the first build of a triple takes ~10–15 minutes on 2 cores). A `variant` `(name,
/// features)` is built with those cargo features (`drover-runtime/…`) in its own target directory
/// (`target/variants/NAME`), so it never overwrites the shipped agent.
pub fn agent(triple: &str, variant: Option<(&str, &str)>) -> PathBuf {
    let mut target = target_dir();
    let mut args = vec!["--release", "--target", triple, "-p", "drover-runtime", "--bin", "drover-agent"];
    if let Some((name, features)) = variant {
        target = target.join("variants").join(name);
        args.extend(["--features", features]);
    }
    build(&target, &args);
    target.join(triple).join("release").join("drover-agent")
}

/// The operator's `drover` in the dev profile, brought up to date by cargo first (the tests build
/// it anyway): benches that only need it to sign a bundle do not wait for a release build of the
/// whole workspace.
pub fn operator_tool() -> PathBuf {
    build(&target_dir(), &["-p", "drover-tools", "--bin", "drover"]);
    target_dir().join("debug").join("drover")
}

/// `cargo build --locked ARGS` into `target`, failing loudly.
fn build(target: &Path, args: &[&str]) {
    let status = crate::tools::cargo()
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "--locked"])
        .args(args)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build {args:?} failed (a missing target: `rustup target add` it)");
}

/// Writes an `.npy` of `n` samples taken from `src` in turn (the first axis is the samples).
pub fn resample_npy(src: &Path, n: usize, dst: &Path) {
    let bytes = std::fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    assert!(bytes.starts_with(b"\x93NUMPY"), "{} is not an npy file", src.display());
    let (len_at, len_bytes) = if bytes[6] == 1 { (8, 2) } else { (8, 4) };
    let header_len = bytes[len_at..len_at + len_bytes].iter().rev().fold(0usize, |acc, b| acc << 8 | *b as usize);
    let data_at = len_at + len_bytes + header_len;
    let header = std::str::from_utf8(&bytes[len_at + len_bytes..data_at]).expect("npy header");
    let shape_at = header.find("'shape': (").expect("npy shape") + "'shape': (".len();
    let shape_end = shape_at + header[shape_at..].find(')').expect("npy shape end");
    let dims: Vec<usize> = header[shape_at..shape_end]
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().expect("dim"))
        .collect();
    let have = dims[0];
    let per = (bytes.len() - data_at) / have;
    let rest: Vec<String> = dims[1..].iter().map(|d| d.to_string()).collect();
    let new_header =
        format!("{}'shape': ({n}, {}), }}", &header[..header.find("'shape'").expect("shape key")], rest.join(", "));
    let mut text = new_header.into_bytes();
    while (10 + text.len() + 1) % 64 != 0 {
        text.push(b' ');
    }
    text.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(&text);
    for i in 0..n {
        let s = i % have;
        out.extend_from_slice(&bytes[data_at + s * per..data_at + (s + 1) * per]);
    }
    std::fs::write(dst, out).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_repeats_the_samples_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let src = repo().join("models/reference/cnn.input.npy");
        let dst = dir.path().join("five.npy");
        resample_npy(&src, 5, &dst);
        let read = |p: &Path| -> (Vec<u64>, Vec<f32>) {
            let bytes = std::fs::read(p).unwrap();
            let npy = npyz::NpyFile::new(bytes.as_slice()).unwrap();
            (npy.shape().to_vec(), npy.into_vec::<f32>().unwrap())
        };
        let ((from_shape, from), (shape, got)) = (read(&src), read(&dst));
        assert_eq!(shape[0], 5);
        assert_eq!(shape[1..], from_shape[1..]);
        let per = from.len() / from_shape[0] as usize;
        for i in 0..5 {
            let s = i % from_shape[0] as usize;
            assert_eq!(got[i * per..(i + 1) * per], from[s * per..(s + 1) * per], "sample {i}");
        }
    }
}
