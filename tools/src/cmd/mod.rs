//! One module per `drover` verb: its arguments and what it does.

pub mod ab;
pub mod alerts;
pub mod broker;
pub mod broker_args;
pub mod bundle;
pub mod command;
pub mod decode;
pub mod delegate;
pub mod demo;
pub mod feedback;
pub mod fleet;
pub mod fleet_client;
pub mod inspect;
pub mod keygen;
pub mod push;
pub mod rollback;
pub mod rollout;
pub mod root;
pub mod shadow;
pub mod sign;
pub mod simulate;
pub mod verify;

/// Parses a duration such as `90d`, `12h`, `30m` or `3600s` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}': {e} (e.g. 90d, 12h, 30m)"))
}

/// Formats Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string()
}
