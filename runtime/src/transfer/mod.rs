//! Chunked, resumable bundle transfer on the device: `receiver.rs` is the pure protocol (which
//! chunks to keep, which to ask for), `spool.rs` its disk, `chunkset.rs` the bookkeeping.

pub mod chunkset;
pub mod receiver;
pub mod spool;

pub use chunkset::ChunkSet;
pub use receiver::{Patience, Receiver, Verdict};
pub use spool::{Spool, SpoolError};
