//! Work the agent does beside serving and its link: installing a bundle (the bundle's digest,
//! signatures, the slot written, the model loaded and optimised, the self-test). It runs on a
//! thread of its own at a lower CPU priority, so that on a board's few cores an install never
//! slows the requests being served or the MQTT connection; with many agents in one process (the
//! simulator), the installs of devices that finished a download yield to those still
//! downloading. The thread ends with the work, and its priority with it.
//!
//! Niceness is per thread: a thousand simulated devices installing at once would still crowd
//! out the threads that carry their links. Agents sharing a machine share a [`Host`], whose
//! installs take turns, as many at a time as it has cores.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Niceness of background work (0 is normal, 19 the lowest): low enough that serving and the
/// link come first, high enough that an install on a busy board still completes.
pub const NICE: i32 = 10;

/// Why background work did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    /// No thread could be started.
    #[error("start a thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// The work panicked.
    #[error("the {0} thread panicked")]
    Panicked(String),
}

/// What agents on one machine share: its cores, for their background work.
#[derive(Debug, Clone)]
pub struct Host {
    turns: Arc<Semaphore>,
}

impl Default for Host {
    /// A board of its own: one agent, one install at a time.
    fn default() -> Host {
        Host::new(1)
    }
}

impl Host {
    /// A machine on which `at_once` pieces of background work run at a time (its cores).
    pub fn new(at_once: usize) -> Host {
        Host { turns: Arc::new(Semaphore::new(at_once.max(1))) }
    }

    /// Runs `work` on a new thread named `name` at [`NICE`] once it is this work's turn, and
    /// waits for its result without holding the agent's runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BackgroundError> {
        // Never closed: an error would only mean running without waiting for a turn.
        let _turn = self.turns.acquire().await.ok();
        run(name, work).await
    }
}

/// Runs `work` on a new thread named `name` at [`NICE`], and waits for its result without
/// holding the agent's runtime.
pub async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackgroundError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        lower_priority();
        let _ = tx.send(work());
    })?;
    rx.await.map_err(|_| BackgroundError::Panicked(name.to_string()))
}

/// Lowers the calling thread's priority (on Linux the niceness belongs to the thread).
fn lower_priority() {
    let me = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
    if now < NICE
        && let Err(e) = rustix::process::setpriority_process(Some(me), NICE)
    {
        log::debug!("background work at normal priority: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_at_a_lower_priority_and_returns_its_result() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let there = rt
            .block_on(run("install", || rustix::process::getpriority_process(Some(rustix::thread::gettid()))))
            .unwrap()
            .unwrap();
        assert_eq!(there, NICE.max(here), "the work's thread is niced");
        let after = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(after, here, "the caller's priority is untouched");
    }

    #[test]
    fn work_on_a_shared_host_takes_turns() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for at_once in [1, 2] {
            let host = Host::new(at_once);
            most.store(0, Ordering::SeqCst);
            let jobs = (0..6).map(|_| {
                let (host, running, most) = (host.clone(), running.clone(), most.clone());
                async move {
                    host.run("install", move || {
                        let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                    .unwrap()
                }
            });
            rt.block_on(async {
                let handles: Vec<_> = jobs.map(tokio::spawn).collect();
                for h in handles {
                    h.await.unwrap();
                }
            });
            assert_eq!(most.load(Ordering::SeqCst), at_once);
        }
    }

    #[test]
    fn a_panic_is_an_error_not_a_hang() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r: Result<(), _> = rt.block_on(run("install", || panic!("boom")));
        assert!(matches!(r, Err(BackgroundError::Panicked(n)) if n == "install"));
    }
}
