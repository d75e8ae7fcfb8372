//! The `tailor` command: parses arguments and calls the crates' `run` functions.

mod train;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tailor_core::{Settings, db, demo, telemetry};

#[derive(Parser)]
#[command(
    name = "tailor",
    version,
    about = "Assemble pretrained modules, tune them with LoRA, serve them behind API keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the portal (pages and JSON API).
    Serve,
    /// Run the inference gateway.
    Gateway,
    /// Run a training worker.
    Worker,
    /// Migrate, then run portal, gateway and worker in one process.
    Up {
        /// Also create the demo user and organization (idempotent).
        #[arg(long)]
        demo: bool,
    },
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Create the demo user (demo@tailor.local / tailor-demo) and organization.
    Demo,
    /// Train a blueprint on a local CSV/TSV/JSONL file (no platform needed), report it
    /// against the frozen-encoder baseline and write the model version.
    Train {
        /// The blueprint (JSON or YAML).
        blueprint: std::path::PathBuf,
        /// Labelled rows: one column per input and output, named as in the blueprint.
        data: std::path::PathBuf,
        /// Held-out rows to report on (default: a stratified share of DATA).
        #[arg(long)]
        test: Option<std::path::PathBuf>,
        /// Where to write the model version (default: ./<blueprint name>-model).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Local training needs no settings, database or telemetry.
    let command = match cli.command {
        Command::Train {
            blueprint,
            data,
            test,
            out,
        } => {
            let args = train::TrainArgs {
                blueprint,
                data,
                test,
                out,
            };
            return tokio::task::spawn_blocking(move || train::run(args)).await?;
        }
        other => other,
    };
    let settings = Settings::load()?;
    telemetry::init(&settings.telemetry);
    match command {
        Command::Serve => serve(settings).await,
        Command::Gateway => gateway(settings).await,
        Command::Worker => worker(settings).await,
        Command::Migrate => db::migrate(&settings.database).await,
        Command::Demo => {
            db::migrate(&settings.database).await?;
            make_demo(&settings).await
        }
        Command::Up { demo } => {
            db::migrate(&settings.database).await?;
            if demo {
                make_demo(&settings).await?;
            }
            tokio::select! {
                r = serve(settings.clone()) => { tracing::error!(?r, "portal stopped"); r }
                r = gateway(settings.clone()) => { tracing::error!(?r, "gateway stopped"); r }
                r = worker(settings) => { tracing::info!(?r, "worker stopped"); r }
            }
        }
        Command::Train { .. } => unreachable!("handled above"),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = tailor_portal::Application::build(settings).await?;
    app.run_until_stopped().await.context("portal server")
}

async fn gateway(settings: Settings) -> anyhow::Result<()> {
    let app = tailor_gateway::Application::build(settings).await?;
    app.run_until_stopped().await.context("gateway server")
}

async fn worker(settings: Settings) -> anyhow::Result<()> {
    tailor_workers::run(settings).await
}

async fn make_demo(settings: &Settings) -> anyhow::Result<()> {
    let pool = db::pool(&settings.database)?;
    let made = demo::ensure_demo_with_dataset(&pool, settings)
        .await
        .map_err(|e| anyhow::anyhow!("creating the demo: {e:?}"))?;
    println!(
        "demo ready: sign in as {} / {} (organization {})",
        demo::DEMO_EMAIL,
        demo::DEMO_PASSWORD,
        made.org_id
    );
    Ok(())
}
