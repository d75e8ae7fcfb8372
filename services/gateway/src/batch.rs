//! Dynamic batching: requests wait in a bounded queue; one inference thread (not the async
//! executor) takes up to `batch_max_items` rows or waits at most `batch_wait_ms` for more,
//! runs the rows of each model version together (`batch_forward_items` rows per forward
//! pass: on a 2-core CPU passes of about 4 rows ran fastest per row), and answers every
//! request through its oneshot channel. A full queue is refused at once (the caller answers 429).
//! Predict and embed requests share the thread; a version's requests of one kind run together.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tailor_modules::package::OutputPrediction;
use tailor_modules::train::InputValue;
use tokio::sync::oneshot;

use crate::cache::LoadedVersion;

pub type Answer<T> = anyhow::Result<Vec<T>>;

/// What the rows of a request are for, with the channel for its answer.
enum Reply {
    /// Predictions, `[row][output]`.
    Predict(oneshot::Sender<Answer<Vec<OutputPrediction>>>),
    /// Pooled encoder vectors, `[row][dimension]`.
    Embed(oneshot::Sender<Answer<Vec<f32>>>),
}

impl Reply {
    fn is_embed(&self) -> bool {
        matches!(self, Reply::Embed(_))
    }
}

struct Request {
    version: Arc<LoadedVersion>,
    rows: Vec<Vec<InputValue>>,
    reply: Reply,
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

    /// Queues the rows for predictions; the answer arrives on the returned channel.
    pub fn submit(
        &self,
        version: Arc<LoadedVersion>,
        rows: Vec<Vec<InputValue>>,
    ) -> Result<oneshot::Receiver<Answer<Vec<OutputPrediction>>>, QueueFull> {
        let (reply, answer) = oneshot::channel();
        self.queue(version, rows, Reply::Predict(reply))?;
        Ok(answer)
    }

    /// Queues the rows for their embeddings; the answer arrives on the returned channel.
    pub fn submit_embed(
        &self,
        version: Arc<LoadedVersion>,
        rows: Vec<Vec<InputValue>>,
    ) -> Result<oneshot::Receiver<Answer<Vec<f32>>>, QueueFull> {
        let (reply, answer) = oneshot::channel();
        self.queue(version, rows, Reply::Embed(reply))?;
        Ok(answer)
    }

    fn queue(
        &self,
        version: Arc<LoadedVersion>,
        rows: Vec<Vec<InputValue>>,
        reply: Reply,
    ) -> Result<(), QueueFull> {
        match self.queue.try_send(Request {
            version,
            rows,
            reply,
        }) {
            Ok(()) => Ok(()),
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

/// Runs the requests of each version and kind together (in order of arrival) and answers
/// each.
fn run_batch(mut batch: Vec<Request>, forward_items: usize) {
    while !batch.is_empty() {
        let version = batch[0].version.clone();
        let embed = batch[0].reply.is_embed();
        let (same, rest): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|r| Arc::ptr_eq(&r.version, &version) && r.reply.is_embed() == embed);
        batch = rest;
        let sizes: Vec<usize> = same.iter().map(|r| r.rows.len()).collect();
        let mut rows = Vec::with_capacity(sizes.iter().sum());
        let mut replies = Vec::with_capacity(same.len());
        for request in same {
            rows.extend(request.rows);
            replies.push(request.reply);
        }
        let started = Instant::now();
        if embed {
            let answer = version.model.embed(&rows, forward_items);
            log(&version, replies.len(), rows.len(), started, "embed batch");
            answer_each(answer, replies, sizes, |reply| match reply {
                Reply::Embed(reply) => Some(reply),
                Reply::Predict(_) => None,
            });
        } else {
            let answer = version.model.predict(&rows, forward_items);
            log(&version, replies.len(), rows.len(), started, "batch");
            answer_each(answer, replies, sizes, |reply| match reply {
                Reply::Predict(reply) => Some(reply),
                Reply::Embed(_) => None,
            });
        }
    }
}

fn log(version: &LoadedVersion, requests: usize, rows: usize, started: Instant, what: &str) {
    let kind = if what.starts_with("embed") {
        "embed"
    } else {
        "predict"
    };
    tailor_core::metrics::BATCH_ROWS
        .with_label_values(&[kind])
        .observe(rows as f64);
    tailor_core::metrics::BATCH_DURATION
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        version_id = %version.id,
        requests,
        rows,
        ms = started.elapsed().as_millis() as u64,
        "{what}"
    );
}

/// Sends each request its share of the rows' answer (`sizes[i]` rows each), or the error.
fn answer_each<T>(
    answer: anyhow::Result<Vec<T>>,
    replies: Vec<Reply>,
    sizes: Vec<usize>,
    channel: impl Fn(Reply) -> Option<oneshot::Sender<Answer<T>>>,
) {
    match answer {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (reply, size) in replies.into_iter().zip(sizes) {
                if let Some(reply) = channel(reply) {
                    let _ = reply.send(Ok(rows.by_ref().take(size).collect()));
                }
            }
        }
        Err(e) => {
            let message = format!("{e:#}");
            for reply in replies.into_iter().filter_map(channel) {
                let _ = reply.send(Err(anyhow::anyhow!("{message}")));
            }
        }
    }
}
