//! The queue contract (DESIGN.md §3): the exchange and queues that training jobs travel
//! through, and the RabbitMQ connection.
//!
//! - `{prefix}.jobs`: direct, durable exchange that the outbox relay publishes to.
//! - `{prefix}.training`: durable quorum queue bound with [`crate::jobs::TRAINING`]; after
//!   `delivery_limit` redeliveries a message is dead-lettered.
//! - `{prefix}.jobs.dead` / `{prefix}.training.dead`: the dead-letter exchange and queue.
//!
//! Messages are small ([`crate::jobs::JobMessage`]): Postgres holds the job, the queue
//! only wakes a worker. Everyone who touches the queue (relay, worker, tests) declares
//! the same topology with [`declare`], which is idempotent.

use std::time::Duration;

use anyhow::Context;
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use secrecy::ExposeSecret;

use crate::{
    jobs::TRAINING,
    settings::{JobSettings, RabbitMqSettings},
};

/// The names of the exchanges and queues of one deployment (or one test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Direct exchange the relay publishes job messages to.
    pub exchange: String,
    /// Quorum queue that training workers consume.
    pub queue: String,
    /// Exchange that messages over the delivery limit are dead-lettered to.
    pub dead_exchange: String,
    /// Quorum queue that keeps dead-lettered messages for inspection.
    pub dead_queue: String,
}

impl Topology {
    pub fn new(settings: &RabbitMqSettings) -> Topology {
        let prefix = &settings.queue_prefix;
        Topology {
            exchange: format!("{prefix}.jobs"),
            queue: format!("{prefix}.{TRAINING}"),
            dead_exchange: format!("{prefix}.jobs.dead"),
            dead_queue: format!("{prefix}.{TRAINING}.dead"),
        }
    }

    /// The routing key of training job messages (on both exchanges).
    pub fn routing_key(&self) -> &'static str {
        TRAINING
    }
}

/// Deliveries of one message before the broker dead-letters it by itself. Every declarer
/// (relay, workers, tests) must pass this same value to [`declare`]: RabbitMQ refuses to
/// redeclare a queue with other arguments. Workers give up on a job after `max_attempts`
/// claims on their own; the limit only catches messages that crash a worker before it
/// could ack.
pub fn delivery_limit(jobs: &JobSettings) -> u32 {
    jobs.max_attempts.max(1) as u32
}

fn quorum_arguments(dead_exchange: Option<(&str, u32)>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if let Some((exchange, delivery_limit)) = dead_exchange {
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(i64::from(delivery_limit)),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(exchange)),
        );
    }
    args
}

/// Declares the exchanges, queues and bindings of `t`. Idempotent, as long as every
/// caller passes the same `delivery_limit` (RabbitMQ refuses to redeclare a queue with
/// other arguments, and closes the channel when asked to).
pub async fn declare(channel: &Channel, t: &Topology, delivery_limit: u32) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in [&t.exchange, &t.dead_exchange] {
        channel
            .exchange_declare(
                exchange,
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {exchange}"))?;
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(&t.dead_queue, durable, quorum_arguments(None))
        .await
        .with_context(|| format!("declaring queue {}", t.dead_queue))?;
    channel
        .queue_declare(
            &t.queue,
            durable,
            quorum_arguments(Some((&t.dead_exchange, delivery_limit))),
        )
        .await
        .with_context(|| {
            format!(
                "declaring queue {} (delivery limit {delivery_limit}; an existing queue with \
                 another limit must be deleted first)",
                t.queue
            )
        })?;
    for (queue, exchange) in [(&t.queue, &t.exchange), (&t.dead_queue, &t.dead_exchange)] {
        channel
            .queue_bind(
                queue,
                exchange,
                t.routing_key(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding queue {queue} to {exchange}"))?;
    }
    Ok(())
}

/// Deletes everything [`declare`] made, with the messages in it (tests clean up with this).
pub async fn delete(channel: &Channel, t: &Topology) -> anyhow::Result<()> {
    for queue in [&t.queue, &t.dead_queue] {
        channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting queue {queue}"))?;
    }
    for exchange in [&t.exchange, &t.dead_exchange] {
        channel
            .exchange_delete(exchange, ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting exchange {exchange}"))?;
    }
    Ok(())
}

pub async fn connect(settings: &RabbitMqSettings) -> anyhow::Result<Connection> {
    Connection::connect(
        settings.url.expose_secret(),
        ConnectionProperties::default(),
    )
    .await
    .context("connecting to RabbitMQ")
}

/// Connects, retrying until the broker answers: 100 ms after the first failure, doubling
/// up to 5 s. Each failure is logged, so a broker that stays down is visible.
pub async fn connect_with_retry(settings: &RabbitMqSettings) -> Connection {
    let mut backoff = Backoff::default();
    loop {
        match connect(settings).await {
            Ok(connection) => return connection,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "RabbitMQ is not reachable"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    /// The delay to wait now; the following one is twice as long (up to [`Self::MAX`]).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

/// Reachability probe for `/readyz`: opens and closes a connection within `timeout`.
pub async fn check(settings: &RabbitMqSettings, timeout: Duration) -> anyhow::Result<()> {
    let connection = tokio::time::timeout(timeout, connect(settings))
        .await
        .context("RabbitMQ did not answer in time")??;
    connection.close(200, "readiness probe").await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let settings = RabbitMqSettings {
            queue_prefix: "acme".into(),
            ..RabbitMqSettings::default()
        };
        let t = Topology::new(&settings);
        assert_eq!(t.exchange, "acme.jobs");
        assert_eq!(t.queue, "acme.training");
        assert_eq!(t.dead_exchange, "acme.jobs.dead");
        assert_eq!(t.dead_queue, "acme.training.dead");
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
