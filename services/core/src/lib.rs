//! Shared platform code for Tailor's services: settings, telemetry, Postgres access,
//! the object store, the queue connection, authentication, accounts and tenancy, and the
//! error type that every HTTP service maps to JSON.

pub mod accounts;
pub mod api_keys;
pub mod auth;
pub mod blueprints;
pub mod datasets;
pub mod db;
pub mod demo;
pub mod error;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod outbox;
pub mod queue;
pub mod settings;
pub mod storage;
pub mod telemetry;
pub mod tenancy;

pub use error::Error;
pub use settings::Settings;
pub use tenancy::OrgId;
