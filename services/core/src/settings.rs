//! One `Settings` struct for every Tailor process.
//!
//! Loaded from `config/base.toml`, then `config/{TAILOR_ENV}.toml` (`local` by default),
//! then `TAILOR__SECTION__KEY` environment variables (e.g. `TAILOR__DATABASE__URL`). Every
//! value has a default that works on a developer machine with no configuration at all.
//! Secrets are `SecretString`s: their `Debug` output is redacted, so they never reach logs.

use std::path::PathBuf;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Used only when `TAILOR_ENV` is `local` (or `test`) and no secret is configured.
const DEV_JWT_SECRET: &str = "tailor-local-development-secret-do-not-use-in-production";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Local,
    Test,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }

    fn parse(raw: &str) -> anyhow::Result<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "local" | "dev" | "development" => Ok(Environment::Local),
            "test" => Ok(Environment::Test),
            "production" | "prod" => Ok(Environment::Production),
            other => bail!("unknown TAILOR_ENV `{other}`: use `local`, `test` or `production`"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(skip, default = "default_environment")]
    pub environment: Environment,
    pub application: ApplicationSettings,
    pub gateway: GatewaySettings,
    pub database: DatabaseSettings,
    pub rabbitmq: RabbitMqSettings,
    pub object_store: ObjectStoreSettings,
    pub auth: AuthSettings,
    pub telemetry: TelemetrySettings,
    pub jobs: JobSettings,
}

fn default_environment() -> Environment {
    Environment::Local
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            environment: Environment::Local,
            application: ApplicationSettings::default(),
            gateway: GatewaySettings::default(),
            database: DatabaseSettings::default(),
            rabbitmq: RabbitMqSettings::default(),
            object_store: ObjectStoreSettings::default(),
            auth: AuthSettings::default(),
            telemetry: TelemetrySettings::default(),
            jobs: JobSettings::default(),
        }
    }
}

/// Training jobs: the relay, the workers' leases and limits (DESIGN.md §3).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct JobSettings {
    /// How long a claim lasts without a heartbeat before the reaper re-queues the job.
    pub lease_seconds: u64,
    /// How often a worker renews its lease while it trains.
    pub heartbeat_seconds: u64,
    /// How often the reaper looks for expired leases.
    pub reaper_seconds: u64,
    /// How often the relay looks for unpublished outbox rows (it is also woken by NOTIFY).
    pub relay_poll_millis: u64,
    /// Whether the portal process runs the outbox relay (turn off where another process
    /// relays, or in tests that drive the relay themselves).
    pub relay_enabled: bool,
    /// Claims of one job before it is failed and sent to the dead-letter queue.
    pub max_attempts: i32,
    /// Checkpoint to the object store every this many training steps.
    pub checkpoint_every: usize,
    /// Jobs one worker process trains at the same time.
    pub worker_concurrency: usize,
    /// Jobs of one organization running at the same time, over all workers.
    pub org_concurrency: i64,
    /// Where base checkpoints are (`scripts/fetch-assets` puts them here).
    pub assets_dir: PathBuf,
    /// Address of the worker's HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub worker_host: String,
    /// Port of the worker's HTTP listener; 0 runs none (in-process test workers).
    pub worker_port: u16,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            lease_seconds: 30,
            heartbeat_seconds: 5,
            reaper_seconds: 5,
            relay_poll_millis: 500,
            relay_enabled: true,
            max_attempts: 3,
            checkpoint_every: 20,
            worker_concurrency: 1,
            org_concurrency: 2,
            assets_dir: PathBuf::from("/var/tmp/tailor-assets"),
            worker_host: "127.0.0.1".into(),
            worker_port: 0,
        }
    }
}

/// The portal: HTML pages and the JSON API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ApplicationSettings {
    pub host: String,
    pub port: u16,
    /// Public address of the portal, used in invitation links.
    pub base_url: String,
    pub max_upload_bytes: u64,
}

impl Default for ApplicationSettings {
    fn default() -> Self {
        ApplicationSettings {
            host: "127.0.0.1".into(),
            port: 8000,
            base_url: "http://localhost:8000".into(),
            max_upload_bytes: 512 * 1024 * 1024,
        }
    }
}

/// The inference gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    pub host: String,
    pub port: u16,
    /// Memory budget of the model version cache (adapters and heads beside their shared
    /// base checkpoints), in bytes.
    pub cache_bytes: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most items (rows) in one request.
    pub max_items: usize,
    /// Longest text of one input, in characters.
    pub max_text_chars: usize,
    /// Dynamic batching: most rows run together, and the longest wait for more.
    pub batch_max_items: usize,
    pub batch_wait_ms: u64,
    /// Rows per forward pass within a batch (on CPU small passes run faster per row).
    pub batch_forward_items: usize,
    /// Requests waiting for the inference thread; beyond it the gateway answers 429.
    pub queue_capacity: usize,
    /// How long an API key's grant is trusted before it is read again (revocation delay).
    pub key_cache_seconds: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            host: "127.0.0.1".into(),
            port: 8001,
            cache_bytes: 512 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            max_items: 64,
            max_text_chars: 10_000,
            batch_max_items: 32,
            batch_wait_ms: 5,
            batch_forward_items: 4,
            queue_capacity: 256,
            key_cache_seconds: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// May carry a password, hence secret.
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/tailor"),
            max_connections: 10,
            acquire_timeout_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RabbitMqSettings {
    pub url: SecretString,
    /// Prefix of exchange and queue names, so that tests can use their own.
    pub queue_prefix: String,
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        RabbitMqSettings {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            queue_prefix: "tailor".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectStoreKind {
    Local,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ObjectStoreSettings {
    pub kind: ObjectStoreKind,
    /// Root folder of the local store.
    pub local_root: PathBuf,
    pub s3: S3Settings,
}

impl Default for ObjectStoreSettings {
    fn default() -> Self {
        ObjectStoreSettings {
            kind: ObjectStoreKind::Local,
            local_root: PathBuf::from("./data/objects"),
            s3: S3Settings::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// For S3-compatible servers (MinIO, Garage…); empty for AWS.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: Option<SecretString>,
    pub allow_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// HS256 key of session JWTs. Required in production; a development default elsewhere.
    pub jwt_secret: Option<SecretString>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub session_ttl_minutes: i64,
    pub invitation_ttl_hours: i64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: None,
            jwt_issuer: "tailor".into(),
            jwt_audience: "tailor-portal".into(),
            session_ttl_minutes: 8 * 60,
            invitation_ttl_hours: 7 * 24,
        }
    }
}

impl AuthSettings {
    /// The key, present after `Settings::load` (which fills the development default).
    pub fn jwt_secret(&self) -> &SecretString {
        self.jwt_secret
            .as_ref()
            .expect("Settings::load always sets auth.jwt_secret")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            format: LogFormat::Pretty,
            filter: "info,sqlx=warn,lapin=warn".into(),
        }
    }
}

impl Settings {
    /// Loads settings from `./config` (or `TAILOR_CONFIG_DIR`) and the environment.
    pub fn load() -> anyhow::Result<Settings> {
        let dir = std::env::var("TAILOR_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("config"));
        let environment =
            Environment::parse(&std::env::var("TAILOR_ENV").unwrap_or_else(|_| "local".into()))?;
        Self::load_from(&dir, environment)
    }

    pub fn load_from(dir: &std::path::Path, environment: Environment) -> anyhow::Result<Settings> {
        let raw = config::Config::builder()
            .add_source(config::File::from(dir.join("base.toml")).required(false))
            .add_source(
                config::File::from(dir.join(format!("{}.toml", environment.as_str())))
                    .required(false),
            )
            .add_source(
                config::Environment::with_prefix("TAILOR")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .context("reading configuration")?;
        let mut settings: Settings = raw
            .try_deserialize()
            .context("configuration does not match the Settings struct")?;
        settings.environment = environment;
        // The scripts name the assets folder TAILOR_ASSETS; honour it unless the jobs
        // setting itself was given.
        if let (Ok(assets), Err(_)) = (
            std::env::var("TAILOR_ASSETS"),
            std::env::var("TAILOR__JOBS__ASSETS_DIR"),
        ) {
            settings.jobs.assets_dir = PathBuf::from(assets);
        }
        settings.finish()?;
        Ok(settings)
    }

    /// Fills environment-dependent defaults and refuses unsafe production settings.
    fn finish(&mut self) -> anyhow::Result<()> {
        let weak = self
            .auth
            .jwt_secret
            .as_ref()
            .is_none_or(|s| s.expose_secret().len() < 32);
        match self.environment {
            Environment::Production if weak => {
                bail!(
                    "auth.jwt_secret (TAILOR__AUTH__JWT_SECRET) of at least 32 bytes is required in production"
                )
            }
            Environment::Production => {}
            _ if self.auth.jwt_secret.is_none() => {
                self.auth.jwt_secret = Some(SecretString::from(DEV_JWT_SECRET));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_any_configuration() {
        let dir = tempfile_dir();
        let s = Settings::load_from(&dir, Environment::Local).unwrap();
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/tailor"
        );
        assert_eq!(s.application.max_upload_bytes, 512 * 1024 * 1024);
        assert_eq!(s.object_store.kind, ObjectStoreKind::Local);
        assert!(s.auth.jwt_secret.is_some());
    }

    #[test]
    fn production_requires_a_jwt_secret() {
        let dir = tempfile_dir();
        let err = Settings::load_from(&dir, Environment::Production).unwrap_err();
        assert!(err.to_string().contains("jwt_secret"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let dir = tempfile_dir();
        let s = Settings::load_from(&dir, Environment::Local).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("do-not-use"), "{shown}");
        assert!(!shown.contains("guest:guest"), "{shown}");
    }

    #[test]
    fn environment_file_overrides_base_file() {
        let dir = tempfile_dir();
        std::fs::write(
            dir.join("base.toml"),
            "[application]\nport = 1\nhost = \"0.0.0.0\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("test.toml"), "[application]\nport = 2\n").unwrap();
        let s = Settings::load_from(&dir, Environment::Test).unwrap();
        assert_eq!(s.application.port, 2);
        assert_eq!(s.application.host, "0.0.0.0");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tailor-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
