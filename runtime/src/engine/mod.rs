//! The inference engine: ONNX models through tract, behind Drover's own types.
//!
//! Loading is a pipeline of named stages (read → operator check → parse → type → optimise →
//! plan), each failing with its own error and each timed. tract is contained here: the rest of
//! the agent sees [`Model`], [`Signature`] and [`crate::tensor::Tensor`] only.

mod error;
mod guard;
mod model;
pub mod opcheck;
pub mod proto;
mod signature;
mod stage;

pub use error::{LoadError, RunError};
pub use model::Model;
pub use signature::{BatchAxis, Signature, describe_shape};
pub use stage::{LoadTimings, Stage};
