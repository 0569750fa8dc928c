//! One module per `drover` verb: its arguments and what it does.

pub mod ab;
pub mod acl;
pub mod alerts;
pub mod broker;
pub mod broker_args;
pub mod bundle;
pub mod ca;
pub mod command;
pub mod decode;
pub mod delegate;
pub mod demo;
pub mod feedback;
pub mod flash;
pub mod fleet;
pub mod fleet_client;
pub mod inspect;
pub mod keygen;
pub mod package;
pub mod provision;
pub mod push;
pub mod quantize;
pub mod rollback;
pub mod rollout;
pub mod root;
pub mod shadow;
pub mod sign;
pub mod simulate;
pub mod soak;
pub mod verify;

/// Parses a duration such as `90d`, `12h`, `30m` or `3600s` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}': {e} (e.g. 90d, 12h, 30m)"))
}

/// Formats Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: u64) -> String {
    drover_runtime::rfc3339::rfc3339(unix)
}

/// A flag that Ctrl-C sets, so a long-running command (demo, simulate) ends cleanly instead of
/// being killed mid-write.
pub fn stop_on_ctrl_c() -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new().name("ctrl-c".into()).spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    })?;
    Ok(stop)
}
