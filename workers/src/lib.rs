//! The training worker: a RabbitMQ consumer that runs training jobs (DESIGN.md §3 "Job
//! lifecycle"). Postgres is the truth about a job; a message only wakes a worker.
//!
//! For each delivery the worker claims the job in Postgres (lease + fencing token), acks
//! once the claim is committed, heartbeats the lease while it trains on a blocking thread,
//! writes progress events and checkpoints, and publishes the model version (files, then
//! `manifest.json`, then the version row, all fenced). A reaper in every worker re-queues
//! jobs whose lease expired and offers again jobs that waited on their organization's
//! quota.
//!
//! Choices worth knowing:
//! - **Organization quota**: a job whose organization already runs
//!   `jobs.org_concurrency` jobs is not claimed; its delivery is acked and the job stays
//!   queued, marked deferred, and the reaper offers it again after `jobs.reaper_seconds`.
//!   (A nack with requeue would spin between workers and, on a quorum queue, count
//!   against the delivery limit and so end in the dead-letter queue.)
//! - **Concurrency**: prefetch is `jobs.worker_concurrency`, and as many jobs train at
//!   once. When every slot is busy the worker cancels its consumer (and consumes again
//!   once a slot frees), so that waiting messages stay in the queue for idle workers
//!   instead of waiting, unacked, at a busy one. A delivery that raced the cancel is
//!   acked and its job deferred, like a quota deferral.
//! - **Poison jobs**: a failed attempt puts the job back to `queued` with its error and a
//!   new message; the delivery after the last attempt fails the job ("gave up after N
//!   attempts: …") and is rejected without requeue, into the dead-letter queue. A worker
//!   killed mid-job leaves a lease that expires; the reaper re-queues the job and the next
//!   attempt resumes from its newest checkpoint.
//! - **Shutdown** (SIGTERM / Ctrl-C): stop consuming; let running jobs finish for up to
//!   [`Worker::with_grace`] (default [`DEFAULT_GRACE`]); then stop them at the next step,
//!   keep their exact state as a checkpoint and give them back (`queued`, the attempt not
//!   counted, a new message).
//! - **Broker outages**: the connection is re-opened with backoff, the topology
//!   redeclared and the consumer restarted; training in progress goes on meanwhile.

mod job;
pub mod progress;
pub mod training;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use lapin::Consumer;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tailor_core::jobs::{self, ClaimOutcome, ClaimRequest, JobMessage, ReapPolicy};
use tailor_core::metrics::{self, InternalServer};
use tailor_core::storage::{self, Store};
use tailor_core::{Settings, db, health, queue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::progress::{Control, StopCause};

/// How long running jobs may go on after a shutdown signal before they are given back.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

/// Runs a worker until SIGTERM or Ctrl-C (what `tailor worker` does).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    Worker::build(settings)?.run_until_stopped().await
}

pub(crate) struct Shared {
    pub settings: Settings,
    pub pool: PgPool,
    pub store: Store,
    /// This worker's name in `lease_owner` and consumer tags.
    pub name: String,
    /// Running jobs and their stop switches.
    running: Mutex<HashMap<Uuid, Arc<Control>>>,
}

/// A training worker.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
    grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Until a shutdown signal.
    Forever,
    /// Until the queue is empty and no job runs (tests: "drain, then exit").
    UntilIdle,
}

impl Worker {
    pub fn build(settings: Settings) -> anyhow::Result<Worker> {
        let pool = db::pool(&settings.database)?;
        let store = storage::build(&settings.object_store)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into());
        let name = format!(
            "{host}-{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Worker {
            shared: Arc::new(Shared {
                settings,
                pool,
                store,
                name,
                running: Mutex::new(HashMap::new()),
            }),
            grace: DEFAULT_GRACE,
        })
    }

    /// How long running jobs may go on after a shutdown signal before they are released.
    pub fn with_grace(mut self, grace: Duration) -> Worker {
        self.grace = grace;
        self
    }

    /// Starts the worker's HTTP listener on `listener`: `/metrics` (this process's
    /// registry, jobs by state, queue depth), `/healthz` and `/readyz` (Postgres, RabbitMQ,
    /// object store). `run_until_*` start one by themselves when `jobs.worker_port` is set.
    pub fn serve_http(&self, listener: std::net::TcpListener) -> anyhow::Result<InternalServer> {
        let shared = self.shared.clone();
        let scrape = metrics::Scrape::new()
            .with_jobs(shared.pool.clone())
            .with_queue(&shared.settings.rabbitmq);
        let ready: metrics::ReadyCheck = Arc::new(move || {
            let shared = shared.clone();
            Box::pin(async move {
                health::readiness(&shared.pool, &shared.settings.rabbitmq, &shared.store).await
            })
        });
        InternalServer::start(listener, "worker", scrape, ready)
            .context("starting the worker's HTTP listener")
    }

    /// The listener of `jobs.worker_host`:`jobs.worker_port`, unless the port is 0.
    fn configured_http(&self) -> anyhow::Result<Option<InternalServer>> {
        let jobs = &self.shared.settings.jobs;
        if jobs.worker_port == 0 {
            return Ok(None);
        }
        let listener =
            std::net::TcpListener::bind((jobs.worker_host.as_str(), jobs.worker_port))
                .with_context(|| format!("binding {}:{}", jobs.worker_host, jobs.worker_port))?;
        self.serve_http(listener).map(Some)
    }

    /// This worker's name (its jobs' `lease_owner`).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Runs until SIGTERM or Ctrl-C, then shuts down as the module documentation says.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let signal = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received: stopping the worker"),
                _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received: stopping the worker"),
            }
        };
        self.run_until(signal).await
    }

    /// Runs until `shutdown` completes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.consume(Mode::Forever, shutdown).await
    }

    /// Consumes until the queue is empty and no job runs, then returns (tests).
    pub async fn run_until_idle(self) -> anyhow::Result<()> {
        self.consume(Mode::UntilIdle, std::future::pending()).await
    }

    /// One pass of the reaper (every worker runs it every `jobs.reaper_seconds`).
    pub async fn reap_once(&self) -> anyhow::Result<jobs::Reaped> {
        reap_once(&self.shared).await
    }

    async fn consume(self, mode: Mode, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let http = self.configured_http()?;
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let slots = Arc::new(Semaphore::new(settings.jobs.worker_concurrency.max(1)));
        let topology = queue::Topology::new(&settings.rabbitmq);
        let reaper = tokio::spawn(reaper(shared.clone()));
        let mut tasks: JoinSet<()> = JoinSet::new();
        tokio::pin!(shutdown);
        let mut stopping = false;
        'connect: while !stopping {
            let connection = tokio::select! {
                c = queue::connect_with_retry(&settings.rabbitmq) => c,
                _ = &mut shutdown => break 'connect,
            };
            let channel = async {
                let channel = connection.create_channel().await?;
                channel
                    .basic_qos(
                        settings.jobs.worker_concurrency.clamp(1, u16::MAX as usize) as u16,
                        BasicQosOptions::default(),
                    )
                    .await?;
                queue::declare(&channel, &topology, queue::delivery_limit(&settings.jobs)).await?;
                anyhow::Ok(channel)
            }
            .await;
            let channel = match channel {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "opening the channel; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue 'connect;
                }
            };
            tracing::info!(queue = %topology.queue, worker = %shared.name, "connected to the broker");
            // `None` while every slot is busy: the consumer is cancelled until one frees,
            // so that waiting messages stay in the queue for idle workers. (Jobs that kept
            // training through a reconnect still hold their slots.)
            let mut consumer: Option<Consumer> = None;
            let mut idle = tokio::time::interval(Duration::from_millis(500));
            let mut quiet_ticks = 0;
            loop {
                if consumer.is_none() && slots.available_permits() > 0 {
                    match start_consumer(&channel, &topology.queue, &shared.name).await {
                        Ok(c) => consumer = Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "starting the consumer; reconnecting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue 'connect;
                        }
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown => {
                        stopping = true;
                        break;
                    }
                    delivery = next_delivery(&mut consumer) => match delivery {
                        Some(Ok(delivery)) => {
                            quiet_ticks = 0;
                            let slot = slots.clone().try_acquire_owned().ok();
                            tasks.spawn(handle(shared.clone(), delivery, slot));
                            if slots.available_permits() == 0
                                && let Some(mut full) = consumer.take()
                            {
                                let _ = channel
                                    .basic_cancel(&shared.name, BasicCancelOptions::default())
                                    .await;
                                // Deliveries sent before the cancel was confirmed are
                                // buffered: hand them back (deferred) rather than keep
                                // them here.
                                while let Some(Some(Ok(extra))) = full.next().now_or_never() {
                                    tasks.spawn(handle(shared.clone(), extra, None));
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the broker connection failed; reconnecting");
                            continue 'connect;
                        }
                        None => {
                            tracing::warn!("the consumer was cancelled by the broker; reconnecting");
                            continue 'connect;
                        }
                    },
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        if let Err(e) = done {
                            tracing::error!(error = %e, "a job task panicked");
                        }
                    }
                    _ = idle.tick() => {
                        // A dead connection does not always end the consumer stream (and a
                        // paused worker has none).
                        if !connection.status().connected() {
                            tracing::warn!("the broker connection is closed; reconnecting");
                            continue 'connect;
                        }
                        if mode != Mode::UntilIdle {
                            continue;
                        }
                        if tasks.is_empty() {
                            quiet_ticks += 1;
                        } else {
                            quiet_ticks = 0;
                        }
                        if quiet_ticks >= 2 && queue_is_empty(&channel, &topology.queue).await {
                            // Frames arrive in order: a delivery sent before the answer
                            // is already buffered.
                            if let Some(Some(Ok(delivery))) =
                                consumer.as_mut().and_then(|c| c.next().now_or_never())
                            {
                                quiet_ticks = 0;
                                let slot = slots.clone().try_acquire_owned().ok();
                                tasks.spawn(handle(shared.clone(), delivery, slot));
                                continue;
                            }
                            stopping = true;
                            break;
                        }
                    }
                }
            }
            if consumer.is_some() {
                let _ = channel
                    .basic_cancel(&shared.name, BasicCancelOptions::default())
                    .await;
            }
            self.drain_tasks(&mut tasks).await;
            let _ = channel.close(200, "worker stopping").await;
            let _ = connection.close(200, "worker stopping").await;
        }
        self.drain_tasks(&mut tasks).await;
        reaper.abort();
        if let Some(http) = http {
            http.stop().await;
        }
        Ok(())
    }

    /// Waits for running jobs up to the grace period, then releases the rest.
    async fn drain_tasks(&self, tasks: &mut JoinSet<()>) {
        if tasks.is_empty() {
            return;
        }
        let waited = tokio::time::timeout(self.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if waited.is_err() {
            let running: Vec<Arc<Control>> = self
                .shared
                .running
                .lock()
                .expect("running jobs")
                .values()
                .cloned()
                .collect();
            tracing::info!(
                jobs = running.len(),
                "grace period over: releasing running jobs"
            );
            for control in running {
                control.stop(StopCause::Shutdown);
            }
            while tasks.join_next().await.is_some() {}
        }
    }
}

async fn start_consumer(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
) -> lapin::Result<Consumer> {
    channel
        .basic_consume(
            queue,
            tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The next delivery, or never while the consumer is paused.
async fn next_delivery(
    consumer: &mut Option<Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

async fn queue_is_empty(channel: &lapin::Channel, queue: &str) -> bool {
    match channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(q) => q.message_count() == 0,
        Err(_) => false,
    }
}

/// One delivery: claim, ack, train — or, without a free `slot`, defer the job and ack.
async fn handle(
    shared: Arc<Shared>,
    delivery: lapin::message::Delivery,
    slot: Option<OwnedSemaphorePermit>,
) {
    let message: JobMessage = match serde_json::from_slice(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "a message that is not a job: dead-lettered");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let Some(permit) = slot else {
        // Every slot is busy (the delivery raced the consumer's pause): the job waits in
        // Postgres and the reaper offers it again, to whichever worker is free.
        match jobs::defer(&shared.pool, message.job_id).await {
            Ok(()) => {
                tracing::info!(job_id = %message.job_id, "every slot busy: job deferred");
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                tracing::warn!(job_id = %message.job_id, error = %e, "deferring a job; the message goes back");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await;
            }
        }
        return;
    };
    let settings = &shared.settings;
    let request = ClaimRequest {
        job_id: message.job_id,
        owner: &shared.name,
        lease_seconds: settings.jobs.lease_seconds,
        org_concurrency: settings.jobs.org_concurrency,
    };
    let outcome = match jobs::claim(&shared.pool, &request).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(job_id = %message.job_id, error = %e, "claiming a job; the message goes back");
            drop(permit);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
            return;
        }
    };
    let ack = || async {
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            // The claim is committed: a redelivery finds the job held and is dropped.
            tracing::warn!(job_id = %message.job_id, error = %e, "acking a delivery");
        }
    };
    match outcome {
        ClaimOutcome::Claimed(claim) => {
            ack().await;
            let job_id = claim.fence.job_id;
            if let Some(traceparent) = &message.traceparent {
                tracing::info!(%job_id, %traceparent, "claimed; started by this trace");
            }
            let control = Arc::new(Control::default());
            shared
                .running
                .lock()
                .expect("running jobs")
                .insert(job_id, control.clone());
            job::run(shared.clone(), *claim, control).await;
            shared.running.lock().expect("running jobs").remove(&job_id);
        }
        ClaimOutcome::Duplicate { reason } => {
            tracing::debug!(job_id = %message.job_id, %reason, "duplicate message dropped");
            ack().await;
        }
        ClaimOutcome::Deferred { running, limit } => {
            tracing::info!(job_id = %message.job_id, running, limit, "organization quota full: job deferred");
            ack().await;
        }
        ClaimOutcome::Cancelled => {
            tracing::info!(job_id = %message.job_id, "cancelled before it ran");
            ack().await;
        }
        ClaimOutcome::GaveUp { reason } => {
            tracing::warn!(job_id = %message.job_id, %reason, "job failed: message dead-lettered");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        }
    }
    drop(permit);
}

fn reap_policy(settings: &Settings) -> ReapPolicy {
    ReapPolicy {
        deferred_after_seconds: settings.jobs.reaper_seconds,
        stale_after_seconds: (settings.jobs.lease_seconds * 10).max(60),
        limit: 100,
    }
}

async fn reap_once(shared: &Shared) -> anyhow::Result<jobs::Reaped> {
    let reaped = jobs::reap(&shared.pool, reap_policy(&shared.settings))
        .await
        .context("reaping expired leases")?;
    if !reaped.expired.is_empty() || !reaped.reoffered.is_empty() {
        tracing::info!(expired = ?reaped.expired, reoffered = ?reaped.reoffered, "reaper");
    }
    Ok(reaped)
}

async fn reaper(shared: Arc<Shared>) {
    let every = Duration::from_secs(shared.settings.jobs.reaper_seconds.max(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = reap_once(&shared).await {
            tracing::warn!(error = %format!("{e:#}"), "reaper");
        }
    }
}
