//! The outbox relay: moves job messages from the `outbox` table to RabbitMQ.
//!
//! [`crate::jobs::submit`] writes a job and its outbox row in one transaction, so a job
//! exists exactly when its message is owed. The relay takes unpublished rows
//! (`FOR UPDATE SKIP LOCKED`, so several relays never take the same row), publishes each
//! as a persistent, mandatory message on a channel in confirm mode, and sets
//! `published_at` only for the messages the broker confirmed. A message that the broker
//! returns (unroutable) or nacks is a failure: the row stays pending with `attempts + 1`
//! and `last_error`, and is tried again after a delay that doubles with each refusal
//! (`next_attempt_at`).
//!
//! The relay wakes on `NOTIFY tailor_outbox` (a trigger on `outbox`) and on a timer
//! (`jobs.relay_poll_millis`). It connects to the broker only when there is something to
//! publish, and reconnects by itself with backoff after the broker went away; rows wait in
//! Postgres meanwhile. A message published twice (a crash between the confirm and the
//! commit) is harmless: the worker's claim is idempotent.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    publisher_confirm::Confirmation,
};
use sqlx::{PgPool, postgres::PgListener, types::Json};

use crate::{
    Settings,
    queue::{self, Backoff, Topology},
};

/// The Postgres channel that the `outbox` insert trigger notifies.
pub const CHANNEL: &str = "tailor_outbox";

/// Rows taken (and locked) by one transaction of the relay.
const BATCH: i64 = 100;

/// How long the relay waits for the broker to confirm a batch before it gives up on the
/// connection.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening a connection, a channel and declaring may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Pending rows this relay took (locked) in the batch.
    pub taken: usize,
    /// Rows the broker confirmed; they are now marked published.
    pub published: usize,
    /// Rows that stay pending with `last_error` set.
    pub failed: usize,
    /// Of the failed, those the broker returned as unroutable.
    pub returned: usize,
    /// The connection or channel broke: open a new [`Publisher`].
    pub broker_lost: bool,
}

/// A connection and a confirm-mode channel on which the topology has been declared.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    delivery_limit: u32,
}

impl Publisher {
    /// Connects once (no retry), opens a confirm channel and declares `topology`.
    pub async fn open(
        settings: &Settings,
        topology: Topology,
        delivery_limit: u32,
    ) -> anyhow::Result<Publisher> {
        let connection = queue::connect(&settings.rabbitmq).await?;
        let publisher = Publisher::on(connection, topology, delivery_limit).await?;
        Ok(publisher)
    }

    async fn on(
        connection: Connection,
        topology: Topology,
        delivery_limit: u32,
    ) -> anyhow::Result<Publisher> {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("turning on publisher confirms")?;
        queue::declare(&channel, &topology, delivery_limit).await?;
        Ok(Publisher {
            connection,
            channel,
            topology,
            delivery_limit,
        })
    }

    /// Whether the connection and the channel are still usable.
    pub fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Declares the topology again (after a message came back unroutable).
    pub async fn redeclare(&self) -> anyhow::Result<()> {
        queue::declare(&self.channel, &self.topology, self.delivery_limit).await
    }

    /// Closes the channel and the connection, giving a broker that does not answer (one
    /// that is shutting down, or stuck) a few seconds at most.
    pub async fn close(self) {
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, self.channel.close(200, "relay done"))
            .await
            .ok();
        tokio::time::timeout(wait, self.connection.close(200, "relay done"))
            .await
            .ok();
    }

    /// Publishes up to `limit` pending rows in one transaction and marks the confirmed
    /// ones published. An `Err` is a database failure: nothing was marked, and any message
    /// already sent will be sent again later.
    #[tracing::instrument(name = "relay batch", skip_all, fields(taken, published, failed))]
    pub async fn publish_pending(&self, pool: &PgPool, limit: i64) -> anyhow::Result<BatchReport> {
        let mut report = BatchReport::default();
        if !self.is_open() {
            report.broker_lost = true;
            return Ok(report);
        }
        let mut tx = pool
            .begin()
            .await
            .context("starting the relay transaction")?;
        // Rows the broker refused wait out their delay; rows that failed before go behind
        // fresh ones, so that one unroutable message does not hold up the rest.
        let rows: Vec<(i64, String, Json<serde_json::Value>)> = sqlx::query_as(
            "SELECT id, routing_key, payload FROM outbox
             WHERE published_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= now())
             ORDER BY attempts, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .context("taking pending outbox rows")?;
        report.taken = rows.len();
        if rows.is_empty() {
            tx.commit().await.ok();
            return Ok(report);
        }

        let mut sent = Vec::with_capacity(rows.len());
        // (row, error, refused by the broker: delay the next try)
        let mut failures: Vec<(i64, String, bool)> = Vec::new();
        for (id, routing_key, Json(payload)) in &rows {
            if report.broker_lost {
                // Not sent: leave the row as it was.
                continue;
            }
            let body = serde_json::to_vec(payload).context("encoding an outbox payload")?;
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(format!("outbox-{id}").into());
            let published = self
                .channel
                .basic_publish(
                    &self.topology.exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await;
            match published {
                Ok(confirm) => sent.push((*id, confirm)),
                Err(e) => {
                    report.broker_lost = true;
                    failures.push((*id, format!("publishing failed: {e}"), false));
                }
            }
        }

        let mut confirmed = Vec::with_capacity(sent.len());
        // One deadline for the whole batch, not one per message.
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        for (id, confirm) in sent {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => confirmed.push(id),
                Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
                    report.returned += 1;
                    failures.push((
                        id,
                        format!(
                            "unroutable: the broker returned the message ({} {}); no queue \
                             is bound to exchange {} with this routing key",
                            returned.reply_code,
                            returned.reply_text.as_str(),
                            self.topology.exchange
                        ),
                        true,
                    ));
                }
                Ok(Ok(Confirmation::Nack(None))) => {
                    failures.push((id, "the broker refused the message (nack)".into(), true));
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    failures.push((id, "the channel is not in confirm mode".into(), false));
                }
                Ok(Err(e)) => {
                    report.broker_lost = true;
                    failures.push((id, format!("no confirm: {e}"), false));
                }
                Err(_) => {
                    report.broker_lost = true;
                    failures.push((
                        id,
                        format!("no confirm within {} s", CONFIRM_TIMEOUT.as_secs()),
                        false,
                    ));
                }
            }
        }

        if !confirmed.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&confirmed)
                .execute(&mut *tx)
                .await
                .context("marking outbox rows published")?;
        }
        if !failures.is_empty() {
            let mut ids = Vec::with_capacity(failures.len());
            let mut errors = Vec::with_capacity(failures.len());
            let mut refused = Vec::with_capacity(failures.len());
            for (id, error, by_broker) in failures {
                tracing::warn!(outbox_id = id, error, "outbox row not published");
                ids.push(id);
                errors.push(error);
                refused.push(by_broker);
            }
            // A row the broker refused waits 2, 4, 8 … up to 300 s before its next try;
            // one that failed with the connection is tried again as soon as it is back.
            sqlx::query(
                "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error,
                        next_attempt_at = CASE WHEN f.refused
                            THEN now() + least(power(2, o.attempts + 1), 300) * interval '1 second'
                        END
                 FROM unnest($1::bigint[], $2::text[], $3::bool[]) AS f(id, error, refused)
                 WHERE o.id = f.id",
            )
            .bind(&ids)
            .bind(&errors)
            .bind(&refused)
            .execute(&mut *tx)
            .await
            .context("recording outbox failures")?;
            report.failed = ids.len();
        }
        tx.commit().await.context("committing the relay batch")?;
        report.published = confirmed.len();
        let span = tracing::Span::current();
        span.record("taken", report.taken);
        span.record("published", report.published);
        span.record("failed", report.failed);
        Ok(report)
    }
}

/// Rows not yet confirmed by the broker (including those waiting out a delay).
pub async fn pending(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Publishes everything pending, then returns how many rows it published. One
/// connection, no retry: for tests, benchmarks and scripts.
pub async fn drain(pool: &PgPool, settings: &Settings) -> anyhow::Result<usize> {
    let publisher = Publisher::open(
        settings,
        Topology::new(&settings.rabbitmq),
        queue::delivery_limit(&settings.jobs),
    )
    .await?;
    let mut total = 0;
    loop {
        let report = publisher.publish_pending(pool, BATCH).await?;
        total += report.published;
        if report.broker_lost {
            publisher.close().await;
            anyhow::bail!("the broker connection broke after {total} messages");
        }
        if report.taken < BATCH as usize || report.published == 0 {
            break;
        }
    }
    publisher.close().await;
    Ok(total)
}

/// Runs the relay until `shutdown` completes. A batch under way when it does is finished
/// first. Never returns an error: broker and database failures are logged and retried.
pub async fn run_relay(pool: PgPool, settings: Arc<Settings>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let topology = Topology::new(&settings.rabbitmq);
    let delivery_limit = queue::delivery_limit(&settings.jobs);
    let poll = Duration::from_millis(settings.jobs.relay_poll_millis.max(10));
    let mut listener = listen(&pool).await;
    let mut publisher: Option<Publisher> = None;
    let mut backoff = Backoff::default();
    let mut db_backoff = Backoff::default();
    tracing::info!(exchange = topology.exchange, "outbox relay started");

    'relay: loop {
        // Connect only when something waits, so that a portal without jobs leaves the
        // broker alone.
        let work = match has_pending(&pool).await {
            Ok(work) => {
                db_backoff.reset();
                work
            }
            Err(e) => {
                // Postgres is away: wait longer each time rather than log every poll.
                let wait = db_backoff.next_delay().max(poll);
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "relay cannot read the outbox"
                );
                tokio::select! {
                    _ = &mut shutdown => break 'relay,
                    _ = tokio::time::sleep(wait) => continue 'relay,
                }
            }
        };
        if work {
            if publisher.as_ref().is_some_and(|p| !p.is_open()) {
                tracing::warn!("relay lost its broker connection; reconnecting");
                if let Some(p) = publisher.take() {
                    p.close().await;
                }
            }
            if publisher.is_none() {
                let open = Publisher::open(&settings, topology.clone(), delivery_limit);
                let opened = tokio::select! {
                    _ = &mut shutdown => break 'relay,
                    opened = tokio::time::timeout(OPEN_TIMEOUT, open) => opened,
                };
                let opened = opened.unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "the broker did not answer within {} s",
                        OPEN_TIMEOUT.as_secs()
                    ))
                });
                match opened {
                    // The backoff is reset only once something was published, so that a
                    // broker that accepts connections but breaks every batch is not
                    // hammered.
                    Ok(p) => {
                        tracing::info!("relay connected to the broker");
                        publisher = Some(p);
                    }
                    Err(e) => {
                        let wait = backoff.next_delay();
                        let pending = pending(&pool).await.ok();
                        tracing::warn!(
                            error = format!("{e:#}"),
                            retry_in_ms = wait.as_millis() as u64,
                            pending,
                            "relay cannot reach the broker; outbox rows wait"
                        );
                        tokio::select! {
                            _ = &mut shutdown => break 'relay,
                            _ = tokio::time::sleep(wait) => continue 'relay,
                        }
                    }
                }
            }
            let p = publisher.as_ref().expect("connected above");
            loop {
                match p.publish_pending(&pool, BATCH).await {
                    Ok(report) => {
                        if report.published > 0 {
                            backoff.reset();
                        }
                        if report.returned > 0 {
                            // Someone removed the queue or its binding: put it back for
                            // the next try.
                            if let Err(e) = p.redeclare().await {
                                tracing::warn!(error = format!("{e:#}"), "redeclaring failed");
                            }
                        }
                        if report.broker_lost {
                            if let Some(p) = publisher.take() {
                                p.close().await;
                            }
                            let wait = backoff.next_delay();
                            tracing::warn!(
                                retry_in_ms = wait.as_millis() as u64,
                                "relay lost the broker during a batch; unconfirmed rows wait"
                            );
                            tokio::select! {
                                _ = &mut shutdown => break 'relay,
                                _ = tokio::time::sleep(wait) => continue 'relay,
                            }
                        }
                        if report.failed > 0 || report.taken < BATCH as usize {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "relay batch failed");
                        break;
                    }
                }
            }
        }

        // Sleep until a new row is announced, the timer fires, or we are told to stop.
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break 'relay,
            _ = tokio::time::sleep(poll) => {}
            result = notified => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "relay lost its LISTEN connection; polling meanwhile");
                    listener = None;
                }
            }
        }
        if listener.is_none() {
            listener = listen(&pool).await;
        }
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    tracing::info!("outbox relay stopped");
}

async fn has_pending(pool: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL
                        AND (next_attempt_at IS NULL OR next_attempt_at <= now()))",
    )
    .fetch_one(pool)
    .await
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let attempt = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match attempt.await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::warn!(error = %e, "relay cannot LISTEN; polling only");
            None
        }
    }
}
