//! The fleet server: it subscribes to every device's presence, telemetry, drift windows, events
//! and operation reports, keeps a device registry and time series in SQLite, and shows the fleet
//! as a web dashboard, a JSON API, Prometheus metrics and `drover fleet status`.
//!
//! `record` decodes, `registry` is the pure fleet state, `storage` keeps it (written by the
//! `writer` thread), `hub` ties them together for the shell (`server`) and the HTTP side
//! (`http`, `metrics`).

pub mod drift;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod origin;
pub mod record;
pub mod registry;
pub mod rollouts;
pub mod server;
pub mod storage;
pub mod writer;
