//! Dynamic batching: requests wait in a bounded queue; one inference thread (not the async
//! executor) takes up to `batch_max_items` rows or waits at most `batch_wait_ms` for more,
//! runs the rows of each model version together (`batch_forward_items` rows per forward
//! pass: on a 2-core CPU passes of about 4 rows ran fastest per row), and answers every
//! request through its oneshot channel. A full queue is refused at once (the caller answers 429).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tailor_modules::package::OutputPrediction;
use tailor_modules::train::InputValue;
use tokio::sync::oneshot;

use crate::cache::LoadedVersion;

pub type Answer = anyhow::Result<Vec<Vec<OutputPrediction>>>;

struct Request {
    version: Arc<LoadedVersion>,
    rows: Vec<Vec<InputValue>>,
    reply: oneshot::Sender<Answer>,
}

#[derive(Clone)]
pub struct Batcher {
    queue: SyncSender<Request>,
}

/// The queue is full.
#[derive(Debug)]
pub struct QueueFull;

impl Batcher {
    /// Starts the inference thread; it ends when every `Batcher` clone is dropped.
    /// `max_items` rows are collected for at most `max_wait`, then run `forward_items`
    /// rows per forward pass.
    pub fn start(
        capacity: usize,
        max_items: usize,
        max_wait: Duration,
        forward_items: usize,
    ) -> Self {
        let (queue, receiver) = sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("tailor-inference".into())
            .spawn(move || run(receiver, max_items.max(1), max_wait, forward_items.max(1)))
            .expect("starting the inference thread");
        Self { queue }
    }

    /// Queues the rows; the answer arrives on the returned channel.
    pub fn submit(
        &self,
        version: Arc<LoadedVersion>,
        rows: Vec<Vec<InputValue>>,
    ) -> Result<oneshot::Receiver<Answer>, QueueFull> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Request {
            version,
            rows,
            reply,
        }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(QueueFull),
        }
    }
}

fn run(receiver: Receiver<Request>, max_items: usize, max_wait: Duration, forward_items: usize) {
    let span = tracing::info_span!("inference");
    let _entered = span.enter();
    while let Ok(first) = receiver.recv() {
        let deadline = Instant::now() + max_wait;
        let mut items = first.rows.len();
        let mut batch = vec![first];
        while items < max_items {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(request) => {
                    items += request.rows.len();
                    batch.push(request);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        run_batch(batch, forward_items);
    }
}

/// Runs the requests of each version together (in order of arrival) and answers each.
fn run_batch(mut batch: Vec<Request>, forward_items: usize) {
    while !batch.is_empty() {
        let version = batch[0].version.clone();
        let (same, rest): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|r| Arc::ptr_eq(&r.version, &version));
        batch = rest;
        let sizes: Vec<usize> = same.iter().map(|r| r.rows.len()).collect();
        let mut rows = Vec::with_capacity(sizes.iter().sum());
        let mut replies = Vec::with_capacity(same.len());
        for request in same {
            rows.extend(request.rows);
            replies.push(request.reply);
        }
        let started = Instant::now();
        let answer = version.model.predict(&rows, forward_items);
        tracing::debug!(
            version_id = %version.id,
            requests = replies.len(),
            rows = rows.len(),
            ms = started.elapsed().as_millis() as u64,
            "batch"
        );
        match answer {
            Ok(predictions) => {
                let mut predictions = predictions.into_iter();
                for (reply, size) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(predictions.by_ref().take(size).collect()));
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for reply in replies {
                    let _ = reply.send(Err(anyhow::anyhow!("{message}")));
                }
            }
        }
    }
}
