//! Shared parts of Drover's end-to-end tests: the reference-model manifest written by
//! `models/make_models.py`, comparison against onnxruntime's outputs, and locating the real
//! binaries and tools the tests drive.

pub mod cli;
pub mod manifest;
pub mod parity;
pub mod tools;
