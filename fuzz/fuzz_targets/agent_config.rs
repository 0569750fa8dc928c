//! The agent configuration (`AgentConfig::parse`, TOML, with its `[[input]]` tables): written
//! by people and by `drover provision`. Parsing never panics; a bad file is a `ConfigError`.
#![no_main]

use drover_runtime::agent::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AgentConfig::parse(text);
    }
});
