//! The agent as a long-running service: it keeps its model store, reports presence, and takes
//! bundles and signed commands over MQTT. `session.rs` is the protocol (pure), `shell.rs` the
//! I/O around it, `config.rs` the agent's configuration file.

pub mod background;
pub mod config;
pub mod notify;
pub mod session;
pub mod shell;

pub use config::{AgentConfig, ConfigError};
pub use session::{Identity, Ledger, Now, Serving, Session};
pub use shell::{AgentError, Clock, SystemClock, run, run_on, run_service, run_with};
