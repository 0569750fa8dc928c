//! Work the agent does beside serving and its link: installing a bundle (the bundle's digest,
//! signatures, the slot written, the model loaded and optimised, the self-test), on a thread of
//! its own that ends with the work, so the agent's runtime keeps serving its link meanwhile.
//!
//! Agents sharing a machine (the simulator, the demo) share a [`Host`], whose installs take
//! turns, a few at a time (`sim::Agents`: two per core): a thousand devices that finished a download would
//! otherwise install at once and take the cores from the devices still downloading (the last
//! download of a 1,000-device push waited 3–4 s behind them). The priority is left as it is: at
//! a lower one, an install on a busy board (or in a busy test run) waited behind everything else.

use std::sync::Arc;

use tokio::sync::Semaphore;

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
    /// A machine on which `at_once` pieces of background work run at a time.
    pub fn new(at_once: usize) -> Host {
        Host { turns: Arc::new(Semaphore::new(at_once.max(1))) }
    }

    /// Runs `work` on a new thread named `name` once it is this work's turn, and waits for its
    /// result without holding the agent's runtime.
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

/// Runs `work` on a new thread named `name`, and waits for its result without holding the
/// agent's runtime.
pub async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackgroundError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let _ = tx.send(work());
    })?;
    rx.await.map_err(|_| BackgroundError::Panicked(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_a_thread_of_its_own_and_returns_its_result() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let here = std::thread::current().id();
        let (id, name) = rt
            .block_on(run("install", || (std::thread::current().id(), std::thread::current().name().map(String::from))))
            .unwrap();
        assert_ne!(id, here);
        assert_eq!(name.as_deref(), Some("install"));
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
