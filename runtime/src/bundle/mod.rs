//! The bundle container: one file holding a signed header and the model's files.
//!
//! Layout: the 8-byte magic `DRVBNDL1`, a little-endian `u32` header length, the header
//! (postcard [`BundleHeader`]), then each file of the manifest, in order, byte for byte, and
//! nothing after. Names, sizes and hashes come from the signed manifest, so a reader never
//! trusts a length or a path the signature does not cover.

mod container;
pub mod selftest;

pub use container::{ContainerError, Limits, MAGIC, read_header, read_payload, write_bundle};
