//! Dynamic batching: concurrent requests for a model with a symbolic batch axis are merged into
//! one engine call, which costs little more than a single sample on small models. A worker
//! thread (one per service, only when batching is configured) takes what is waiting, up to
//! `max_batch` samples, waits at most `max_delay` for more, runs the batch and answers each
//! request with its own rows.
//!
//! Admission (the bounded queue, busy refusals) stays with [`super::Inference`]; the channel
//! here never holds more requests than the queue admitted.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use super::{InferError, Prediction, Shared, lock, predictions, run_samples};
use crate::engine::{BatchAxis, RunError};
use crate::tensor::Tensor;

/// How requests are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most samples in one engine call (a request larger than this runs alone).
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch once the waiting ones are taken
    /// (zero: batch only what is already waiting, never delay).
    pub max_delay: Duration,
}

type Reply = Result<Vec<Prediction>, InferError>;

/// One request in the batcher.
pub(super) struct Job {
    request: String,
    samples: Vec<Vec<Tensor>>,
    reply: SyncSender<Reply>,
}

/// The requests' side of the batcher.
pub(super) struct Queue {
    tx: Mutex<Sender<Job>>,
}

/// The worker's side, until its thread starts.
pub(super) struct Worker {
    rx: Receiver<Job>,
    policy: Batching,
}

/// A connected queue and worker.
pub(super) fn queue(policy: Batching) -> (Queue, Worker) {
    let (tx, rx) = mpsc::channel();
    (Queue { tx: Mutex::new(tx) }, Worker { rx, policy })
}

impl Queue {
    /// Hands the request to the worker and waits for its predictions.
    pub(super) fn submit(&self, request: String, samples: Vec<Vec<Tensor>>) -> Reply {
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = lock(&self.tx).send(Job { request, samples, reply });
        if sent.is_err() {
            return Err(InferError::Engine(RunError::Engine("the batching worker has stopped".into())));
        }
        answer.recv().unwrap_or_else(|_| Err(InferError::Engine(RunError::Engine("the batch was dropped".into()))))
    }
}

impl Worker {
    /// Starts the worker thread; it ends when the service is dropped.
    pub(super) fn start(self, shared: Weak<Shared>) {
        let spawned = std::thread::Builder::new().name("drover-batch".into()).spawn(move || self.run(&shared));
        if let Err(e) = spawned {
            // The queue's sender then reports "stopped" to every request: loud, not silent.
            log::error!("could not start the batching worker: {e}");
        }
    }

    fn run(self, shared: &Weak<Shared>) {
        while let Ok(first) = self.rx.recv() {
            let jobs = self.collect(first);
            let Some(shared) = shared.upgrade() else { break };
            run_jobs(&shared, jobs);
        }
    }

    /// The batch that starts with `first`: everything already waiting, then whatever arrives
    /// within `max_delay`, up to `max_batch` samples.
    fn collect(&self, first: Job) -> Vec<Job> {
        let mut n = first.samples.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + self.policy.max_delay;
        while n < self.policy.max_batch {
            let next = match self.rx.try_recv() {
                Ok(job) => Ok(job),
                Err(_) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => self.rx.recv_timeout(left),
                    _ => Err(RecvTimeoutError::Timeout),
                },
            };
            match next {
                Ok(job) => {
                    n += job.samples.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        jobs
    }
}

/// Runs a batch of requests as one engine call; when that fails on an input, each request runs
/// alone so that only the bad one gets the error.
fn run_jobs(shared: &Shared, jobs: Vec<Job>) {
    let mut engine = lock(&shared.engine);
    let Some(served) = engine.as_mut() else {
        for job in jobs {
            let _ = job.reply.send(Err(InferError::NoModel));
        }
        return;
    };
    let symbolic = matches!(served.signature.batch, BatchAxis::Symbolic(_));
    if jobs.len() == 1 || !symbolic {
        for job in jobs {
            let result = run_samples(shared, served, &job.samples)
                .map(|outputs| predictions(&served.model_ref, &job.request, outputs));
            let _ = job.reply.send(result);
        }
        return;
    }
    let counts: Vec<usize> = jobs.iter().map(|j| j.samples.len()).collect();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut all = Vec::with_capacity(counts.iter().sum());
    for job in jobs {
        all.extend(job.samples);
        replies.push((job.request, job.reply));
    }
    match run_samples(shared, served, &all) {
        Ok(outputs) => {
            let mut outputs = outputs.into_iter();
            for ((request, reply), count) in replies.into_iter().zip(counts) {
                let rows: Vec<Vec<Tensor>> = outputs.by_ref().take(count).collect();
                let _ = reply.send(Ok(predictions(&served.model_ref, &request, rows)));
            }
        }
        Err(InferError::Input(_)) => {
            let mut samples = all.into_iter();
            for ((request, reply), count) in replies.into_iter().zip(counts) {
                let mine: Vec<Vec<Tensor>> = samples.by_ref().take(count).collect();
                let result =
                    run_samples(shared, served, &mine).map(|outputs| predictions(&served.model_ref, &request, outputs));
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (_, reply) in replies {
                let _ = reply.send(Err(InferError::Engine(RunError::Engine(message.clone()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use drover_wire::message::ModelRef;

    use super::super::{InferError, Inference, lock};
    use crate::agent::SystemClock;
    use crate::engine::Model;
    use crate::tensor::{Tensor, TensorData};

    fn batching(max_batch: usize) -> Inference {
        let cfg =
            format!("device = \"t\"\ndata_dir = \"/tmp\"\n[inference]\nbatch = {max_batch}\nbatch_delay_us = 5000000");
        let settings = crate::agent::AgentConfig::parse(&cfg).expect("config").serve_settings(None);
        let s = Inference::new(settings, Arc::new(SystemClock::default()));
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let model = Model::load(&root.join("iris_logreg.onnx")).expect("model");
        s.serve(model, ModelRef { name: "iris".try_into().expect("name"), version: 1 }, None);
        s
    }

    fn flower(petal: f32) -> Vec<Tensor> {
        vec![Tensor::new(vec![4], TensorData::F32(vec![5.1, 3.5, petal, 0.2])).expect("tensor")]
    }

    /// Submits `samples` from one thread each while the engine is held, then lets them run.
    fn together(s: &Inference, samples: Vec<Vec<Tensor>>) -> Vec<Result<Option<i64>, String>> {
        let n = samples.len() as u32;
        let held = lock(&s.shared.engine);
        let threads: Vec<_> = samples
            .into_iter()
            .map(|sample| {
                let s = s.clone();
                std::thread::spawn(move || s.infer(None, &sample).map(|p| p.class).map_err(|e| e.to_string()))
            })
            .collect();
        while s.shared.waiting.load(Ordering::Acquire) < n {
            std::thread::yield_now();
        }
        drop(held);
        threads.into_iter().map(|t| t.join().expect("thread")).collect()
    }

    #[test]
    fn waiting_requests_run_as_one_engine_call_and_each_gets_its_row() {
        let s = batching(4);
        let answers = together(&s, vec![flower(1.4), flower(5.9), flower(1.3), flower(6.1)]);
        let classes: Vec<Option<i64>> = answers.into_iter().map(|a| a.expect("served")).collect();
        assert_eq!(classes.iter().filter(|c| **c == Some(0)).count(), 2, "{classes:?}");
        assert_eq!(classes[0], Some(0));
        assert_eq!(classes[2], Some(0));
        assert_eq!(s.engine_calls(), 1, "four requests, one batch of four");
        assert_eq!(s.take_period(0).0.inferences, 4);
    }

    #[test]
    fn a_bad_request_in_a_batch_fails_alone() {
        let s = batching(4);
        let wrong = vec![Tensor::new(vec![3], TensorData::F32(vec![1.0; 3])).expect("tensor")];
        let answers = together(&s, vec![flower(1.4), wrong, flower(1.4), flower(1.4)]);
        let errors: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert_eq!(errors.len(), 1, "{answers:?}");
        assert!(errors[0].contains("shape"), "{}", errors[0]);
        assert_eq!(answers.iter().filter(|a| matches!(a, Ok(Some(0)))).count(), 3);
        assert_eq!(s.engine_calls(), 3, "the merged call was refused before the engine; each good one ran alone");
        let (period, _) = s.take_period(0);
        assert_eq!((period.inferences, period.errors.input), (3, 1));
    }

    #[test]
    fn no_model_is_an_answer_not_a_hang() {
        let s = batching(4);
        s.unload();
        assert!(matches!(s.infer(None, &flower(1.4)), Err(InferError::NoModel)));
    }
}
