//! Shared parts of Drover's end-to-end tests: the reference-model manifest written by
//! `models/make_models.py`, comparison against onnxruntime's outputs, and locating the real
//! binaries and tools the tests drive, brokers (embedded and Mosquitto), in-process fleets of
//! agents, models of any size, the fleet server, Prometheus, PostgreSQL and a headless browser.

#[cfg(feature = "mqtt")]
pub mod api;
#[cfg(feature = "mqtt")]
pub mod broker;
#[cfg(feature = "mqtt")]
pub mod browser;
pub mod cli;
pub mod disk;
#[cfg(feature = "mqtt")]
pub mod fleet;
#[cfg(unix)]
pub mod icount;
pub mod manifest;
#[cfg(feature = "mqtt")]
pub mod observer;
#[cfg(feature = "mqtt")]
pub mod onnx_gen;
pub mod parity;
#[cfg(feature = "mqtt")]
pub mod postgres;
pub mod release;
#[cfg(feature = "mqtt")]
pub mod services;
pub mod sshd;
pub mod tools;
pub mod zoo;
