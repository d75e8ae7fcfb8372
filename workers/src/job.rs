//! One claimed job, from the claim to its end: heartbeat the lease, fetch the dataset and
//! the checkpoint, train on a blocking thread, then publish the model version, or record
//! why not. Every write carries the claim's fence; once the fence is lost nothing more is
//! written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use object_store::{ObjectStore, PutPayload, path::Path};
use serde_json::json;
use tailor_core::jobs::{self, Claim, Fence, NewModelVersion};
use tailor_core::metrics;
use tailor_modules::artifact::{ArtifactSet, MANIFEST, sha256_hex};
use tailor_modules::package::DatasetInfo;
use tailor_modules::train::{Event, Phase};
use tracing::Instrument;

use crate::Shared;
use crate::progress::{Control, Reporter, StopCause, checkpoint_key};
use crate::training::{self, TrainingInput, TrainingOutcome};

/// Runs a claimed job to its end (succeeded, cancelled, failed attempt, released, or lost).
pub(crate) async fn run(shared: Arc<Shared>, claim: Claim, control: Arc<Control>) {
    let fence = claim.fence;
    let span = tracing::info_span!("job", job_id = %fence.job_id, org_id = %claim.org, attempt = claim.attempt);
    async move {
        tracing::info!("training");
        let attempt = metrics::Timer::start();
        metrics::JOBS_RUNNING.inc();
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), fence, control.clone()));
        let result = train(&shared, &claim, &control).await;
        // From here on the job's row is locked by each ending write (publishing holds it
        // while it writes the files), so no other claim can take the job meanwhile.
        heartbeat.abort();
        if control.is_lost() {
            tracing::warn!("the job was taken over by another claim; nothing more written");
        }
        let outcome = match (&result, control.is_lost(), control.cause()) {
            (_, true, _) => "lost",
            (Ok(TrainingOutcome::Done { .. }), _, _) => "succeeded",
            (Ok(TrainingOutcome::Stopped { .. }), _, StopCause::Shutdown) => "released",
            (Ok(TrainingOutcome::Stopped { .. }), _, _) => "cancelled",
            (Err(_), _, _) => "failed",
        };
        let end = match result {
            Ok(TrainingOutcome::Done {
                files,
                report,
                base_checkpoints,
            }) if !control.is_lost() => {
                publish(&shared, &claim, files, &report, base_checkpoints).await
            }
            Ok(TrainingOutcome::Stopped { state }) if !control.is_lost() => {
                stopped(&shared, &claim, &control, state).await
            }
            Err(e) if !control.is_lost() => {
                let error = format!("{e:#}");
                tracing::warn!(%error, "attempt failed");
                jobs::fail_attempt(&shared.pool, fence, &error)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
            _ => Ok(()),
        };
        if let Err(e) = end {
            // The lease runs out and the reaper offers the job again.
            tracing::error!(error = %format!("{e:#}"), "ending the job");
        }
        metrics::JOBS_RUNNING.dec();
        attempt.stop(&metrics::JOB_ATTEMPTS, &[outcome]);
    }
    .instrument(span)
    .await
}

/// Renews the lease every `heartbeat_seconds`; a lost lease or a cancel request stops the
/// run.
async fn heartbeat(shared: Arc<Shared>, fence: Fence, control: Arc<Control>) {
    let every = Duration::from_secs(shared.settings.jobs.heartbeat_seconds.max(1));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match jobs::heartbeat(&shared.pool, fence, shared.settings.jobs.lease_seconds).await {
            Ok(lease) => control.apply(lease),
            Err(e) => tracing::warn!(error = %e, "heartbeat"),
        }
        if control.is_lost() {
            return;
        }
    }
}

async fn train(
    shared: &Arc<Shared>,
    claim: &Claim,
    control: &Arc<Control>,
) -> anyhow::Result<TrainingOutcome> {
    let store = &shared.store;
    let data = read(store, &claim.dataset.object_key)
        .await
        .with_context(|| {
            format!(
                "reading dataset `{}` version {}",
                claim.dataset.name, claim.dataset.version
            )
        })?;
    let resume = match &claim.checkpoint_key {
        Some(key) => match read(store, key).await {
            Ok(bytes) => {
                let step = claim.checkpoint_step.unwrap_or_default();
                log(
                    shared,
                    claim.fence,
                    format!(
                        "resuming attempt {} from the checkpoint at step {step}",
                        claim.attempt
                    ),
                    json!({ "resumed_from_step": step, "checkpoint": key }),
                )
                .await;
                Some(bytes)
            }
            Err(e) => {
                log(
                    shared,
                    claim.fence,
                    format!("the checkpoint could not be read ({e:#}); starting over"),
                    json!({}),
                )
                .await;
                None
            }
        },
        None => None,
    };
    let adapted = claim
        .blueprint
        .get("adaptation")
        .is_some_and(|a| !a.is_null());
    let input = TrainingInput {
        blueprint: claim.blueprint.clone(),
        columns: claim.dataset.columns.clone(),
        data_key: claim.dataset.object_key.clone(),
        data,
        dataset: DatasetInfo {
            name: claim.dataset.name.clone(),
            version: format!("v{}", claim.dataset.version),
            sha256: claim.dataset.sha256.clone(),
            rows: claim.dataset.row_count as usize,
        },
        resume,
        assets_dir: shared.settings.jobs.assets_dir.clone(),
        checkpoint_every: shared.settings.jobs.checkpoint_every,
    };
    let mut reporter = Reporter::new(
        tokio::runtime::Handle::current(),
        shared.pool.clone(),
        store.clone(),
        claim.fence,
        claim.org,
        control.clone(),
    );
    reporter.adapted = adapted;
    reporter.previous_checkpoint = claim.checkpoint_key.clone();
    let control = control.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let mut timing = StepTiming::default();
            let outcome = training::run(input, &control.flag, &mut |e| {
                timing.on_event(e, reporter.adapted, |e| reporter.on_event(e))
            });
            reporter.flush_step();
            outcome
        })
    })
    .await
    .context("the training thread panicked")?
}

/// Feeds `tailor_training_step_seconds` (the time from the end of one step's report to
/// the next step of the same run: the forward and backward pass and the optimizer; a
/// run's first step, which includes loading, is not counted) and `tailor_checkpoint_seconds` from the training events.
#[derive(Default)]
struct StepTiming {
    last_step: Option<(Phase, Instant)>,
}

impl StepTiming {
    fn on_event(
        &mut self,
        event: Event<'_>,
        adapted: bool,
        report: impl FnOnce(Event<'_>) -> std::ops::ControlFlow<()>,
    ) -> std::ops::ControlFlow<()> {
        let started = Instant::now();
        match event {
            Event::Step(s) => {
                if let Some((phase, at)) = self.last_step
                    && phase == s.phase
                {
                    let label = match phase {
                        Phase::Tuned => "tuned",
                        Phase::Baseline => "baseline",
                    };
                    metrics::TRAINING_STEP
                        .with_label_values(&[label])
                        .observe(at.elapsed().as_secs_f64());
                }
                let flow = report(Event::Step(s));
                self.last_step = Some((s.phase, Instant::now()));
                flow
            }
            Event::Checkpoint(state) => {
                // The baseline's checkpoints are not written (see `Reporter`).
                let written = !adapted
                    || self
                        .last_step
                        .is_some_and(|(phase, _)| phase == Phase::Tuned);
                let flow = report(Event::Checkpoint(state));
                if written {
                    metrics::CHECKPOINT.observe(started.elapsed().as_secs_f64());
                }
                // Writing the checkpoint is not the next step's time.
                self.last_step = self.last_step.map(|(phase, _)| (phase, Instant::now()));
                flow
            }
            Event::Epoch(epoch) => {
                // Evaluation ran before the event: the next step's time starts after it.
                let flow = report(Event::Epoch(epoch));
                self.last_step = self.last_step.map(|(phase, _)| (phase, Instant::now()));
                flow
            }
        }
    }
}

/// The run stopped early: cancelled by the user, or given back because the worker stops.
async fn stopped(
    shared: &Arc<Shared>,
    claim: &Claim,
    control: &Control,
    state: Option<Box<tailor_modules::train::TrainState>>,
) -> anyhow::Result<()> {
    let fence = claim.fence;
    match control.cause() {
        StopCause::Shutdown => {
            // Keep the exact state, so that the next claim loses no step.
            if let Some(state) = state {
                let key = checkpoint_key(claim.org, fence.job_id, state.step);
                let bytes = state.to_bytes()?;
                shared.store.put(&key, PutPayload::from(bytes)).await?;
                jobs::record_checkpoint(&shared.pool, fence, key.as_ref(), state.step as i32)
                    .await?;
            }
            jobs::release(
                &shared.pool,
                fence,
                "the worker stopped; the job waits for another",
            )
            .await?;
            tracing::info!("released on shutdown");
        }
        StopCause::Cancel | StopCause::None => {
            jobs::finish_cancelled(&shared.pool, fence).await?;
            tracing::info!("cancelled");
        }
        StopCause::Lost => {}
    }
    Ok(())
}

/// Writes the version's files and then `manifest.json` under the version's prefix while
/// the job and model rows are locked (the fence checked), then records the version and
/// ends the job in the same transaction. A worker that lost its fence never gets here,
/// so it writes no file; a crash between the files and the commit leaves files under a
/// version number that has no row, which the next publication of the model clears.
async fn publish(
    shared: &Arc<Shared>,
    claim: &Claim,
    files: ArtifactSet,
    report: &tailor_modules::evaluate::EvaluationReport,
    base_checkpoints: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let fence = claim.fence;
    let timer = metrics::Timer::start();
    let published: anyhow::Result<Option<(i32, uuid::Uuid)>> = async {
        let Some(publication) = jobs::begin_publish(&shared.pool, fence).await? else {
            return Ok(None);
        };
        let store = &shared.store;
        let prefix = Path::from(publication.prefix.as_str());
        // Leftovers of a publication that crashed before its commit.
        let stale: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
        for object in stale {
            store.delete(&object.location).await?;
        }
        for (path, bytes) in files.files() {
            store
                .put(
                    &Path::from(format!("{prefix}/{path}")),
                    PutPayload::from(bytes.to_vec()),
                )
                .await
                .with_context(|| format!("writing {path}"))?;
        }
        let manifest = files.manifest_bytes();
        let manifest_sha256 = sha256_hex(&manifest);
        store
            .put(
                &Path::from(format!("{prefix}/{MANIFEST}")),
                PutPayload::from(manifest),
            )
            .await
            .context("writing manifest.json")?;
        let version = publication.version;
        let new = NewModelVersion {
            manifest_sha256,
            metrics: serde_json::to_value(report)?,
            blueprint: claim.blueprint.clone(),
            dataset_version_id: claim.dataset.version_id,
            dataset_sha256: claim.dataset.sha256.clone(),
            base_checkpoints: serde_json::to_value(&base_checkpoints)?,
            created_by: claim.created_by,
        };
        let id = publication.commit(&new).await?;
        Ok(Some((version, id)))
    }
    .await;
    match published {
        Ok(Some((version, id))) => {
            timer.stop_into(&metrics::PUBLISH);
            tracing::info!(version, %id, "model version published");
            // The checkpoints served their purpose.
            let prefix = Path::from(format!(
                "orgs/{}/jobs/{}/checkpoints",
                claim.org, fence.job_id
            ));
            if let Ok(objects) = shared
                .store
                .list(Some(&prefix))
                .try_collect::<Vec<_>>()
                .await
            {
                for object in objects {
                    let _ = shared.store.delete(&object.location).await;
                }
            }
            Ok(())
        }
        Ok(None) => {
            tracing::warn!("lost the job before publishing; nothing written");
            Ok(())
        }
        Err(e) => {
            let error = format!("publishing the model version: {e:#}");
            jobs::fail_attempt(&shared.pool, fence, &error).await?;
            Ok(())
        }
    }
}

async fn read(store: &tailor_core::storage::Store, key: &str) -> anyhow::Result<Vec<u8>> {
    let got = match store.get(&Path::from(key)).await {
        Err(object_store::Error::NotFound { .. }) => {
            anyhow::bail!("its file {key} is missing from the object store")
        }
        got => got?,
    };
    Ok(got.bytes().await?.to_vec())
}

async fn log(shared: &Shared, fence: Fence, message: String, mut data: serde_json::Value) {
    data["message"] = message.into();
    match jobs::record_event(&shared.pool, fence, "log", &data, None).await {
        Ok(lease) => tracing::info!(?lease, message = %data["message"], "job log"),
        Err(e) => tracing::warn!(error = %e, "writing a job log event"),
    }
}
