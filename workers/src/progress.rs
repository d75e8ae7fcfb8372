//! What the training thread reports while it trains: every step sets the job's progress
//! (and, at most every [`STEP_EVENT_EVERY`], appends a step event), every epoch appends an
//! epoch event, every checkpoint of the tuned run goes to the object store. All writes are
//! fenced; each answers whether the claim still holds the job and whether a cancel was
//! requested, so the run stops at the end of the step during which the cancel arrived.
//!
//! The callback runs on the training thread and blocks on the async writes through the
//! runtime's handle: a step waits for its progress row (about a millisecond against a
//! step of a tenth of a second or more), which is what makes "stops within one step"
//! exact.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use object_store::{ObjectStore, PutPayload, path::Path};
use serde_json::json;
use tailor_core::jobs::{self, Fence, Lease};
use tailor_core::storage::Store;
use tailor_core::tenancy::OrgId;
use tailor_modules::train::{Event, Phase, TrainState};
use tokio::runtime::Handle;

/// Step events are throttled to one per this period (every step still sets progress).
pub const STEP_EVENT_EVERY: Duration = Duration::from_secs(2);

/// Why a run was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopCause {
    None = 0,
    /// The user asked (the job's cancel flag).
    Cancel = 1,
    /// The worker is shutting down: give the job back.
    Shutdown = 2,
    /// Another claim took the job over: write nothing more.
    Lost = 3,
}

/// The stop switch of one running job, shared by the heartbeat, the training thread and
/// the worker's shutdown.
#[derive(Debug, Default)]
pub struct Control {
    /// What the training loop checks before every step.
    pub flag: AtomicBool,
    cause: AtomicU8,
}

impl Control {
    /// Asks the run to stop; the first cause wins, except that losing the job overrides
    /// everything (nothing may be written then).
    pub fn stop(&self, cause: StopCause) {
        if cause == StopCause::Lost {
            self.cause.store(cause as u8, Ordering::SeqCst);
        } else {
            let _ = self.cause.compare_exchange(
                StopCause::None as u8,
                cause as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn cause(&self) -> StopCause {
        match self.cause.load(Ordering::SeqCst) {
            1 => StopCause::Cancel,
            2 => StopCause::Shutdown,
            3 => StopCause::Lost,
            _ => StopCause::None,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.cause() == StopCause::Lost
    }

    /// Applies what a fenced write answered.
    pub fn apply(&self, lease: Lease) {
        match lease {
            Lease::Lost => self.stop(StopCause::Lost),
            Lease::Held {
                cancel_requested: true,
            } => self.stop(StopCause::Cancel),
            Lease::Held { .. } => {}
        }
    }
}

/// The checkpoint key of a job at `step`.
pub fn checkpoint_key(org: OrgId, job: uuid::Uuid, step: usize) -> Path {
    Path::from(format!("orgs/{org}/jobs/{job}/checkpoints/step-{step}.bin"))
}

/// The training callback's state.
pub struct Reporter {
    pub rt: Handle,
    pub pool: sqlx::PgPool,
    pub store: Store,
    pub fence: Fence,
    pub org: OrgId,
    pub control: Arc<Control>,
    /// Whether the blueprint adapts the encoder: then a baseline run comes first, and its
    /// checkpoints are not the tuned run's.
    pub adapted: bool,
    /// The checkpoint this attempt resumed from (it is deleted once a newer one is kept).
    pub previous_checkpoint: Option<String>,
    started: Instant,
    phase: Option<Phase>,
    epochs: Option<usize>,
    metric: Option<(String, f64)>,
    last_step_event: Option<Instant>,
    /// The latest step not yet written as an event.
    unreported_step: Option<serde_json::Value>,
    /// The latest step and the run's total steps.
    last_step: (usize, usize),
    /// Progress units (baseline steps + tuned steps) at this attempt's first step.
    first_units: Option<usize>,
}

impl Reporter {
    pub fn new(
        rt: Handle,
        pool: sqlx::PgPool,
        store: Store,
        fence: Fence,
        org: OrgId,
        control: Arc<Control>,
    ) -> Self {
        Reporter {
            rt,
            pool,
            store,
            fence,
            org,
            control,
            adapted: false,
            previous_checkpoint: None,
            started: Instant::now(),
            phase: None,
            epochs: None,
            metric: None,
            last_step_event: None,
            unreported_step: None,
            last_step: (0, 0),
            first_units: None,
        }
    }

    /// The callback of `train_and_evaluate`.
    pub fn on_event(&mut self, event: Event<'_>) -> ControlFlow<()> {
        if self.control.is_lost() {
            return ControlFlow::Break(());
        }
        match event {
            Event::Step(s) => {
                // The first step of each run is always written (an attempt that resumed
                // shows where it started).
                let new_run = self.phase != Some(s.phase);
                self.phase = Some(s.phase);
                self.last_step = (s.step, s.total_steps);
                let progress = self.progress(s.phase, s.epoch, s.step, s.total_steps, s.loss);
                let data = json!({
                    "phase": s.phase, "step": s.step, "total_steps": s.total_steps,
                    "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm,
                    "elapsed_seconds": progress["elapsed_seconds"],
                    "eta_seconds": progress["eta_seconds"],
                });
                let due = new_run
                    || self
                        .last_step_event
                        .is_none_or(|at| at.elapsed() >= STEP_EVENT_EVERY);
                let lease = if due {
                    self.last_step_event = Some(Instant::now());
                    self.unreported_step = None;
                    self.block(jobs::record_event(
                        &self.pool,
                        self.fence,
                        "step",
                        &data,
                        Some(&progress),
                    ))
                } else {
                    self.unreported_step = Some(data);
                    self.block(jobs::report_progress(&self.pool, self.fence, &progress))
                };
                self.settle(lease)
            }
            Event::Epoch(e) => {
                self.phase = Some(e.phase);
                self.epochs = Some(e.epochs);
                self.metric = Some((e.metric.clone(), e.value));
                self.flush_step();
                let (step, total_steps) = self.last_step;
                let progress = self.progress(e.phase, e.epoch, step, total_steps, e.train_loss);
                let mut data = serde_json::to_value(e).unwrap_or_default();
                data["elapsed_seconds"] = progress["elapsed_seconds"].clone();
                let lease = self.block(jobs::record_event(
                    &self.pool,
                    self.fence,
                    "epoch",
                    &data,
                    Some(&progress),
                ));
                self.settle(lease)
            }
            Event::Checkpoint(state) => {
                // The baseline's end-of-epoch checkpoints do not resume the tuned run.
                if self.adapted && self.phase != Some(Phase::Tuned) {
                    return self.settle(None);
                }
                self.checkpoint(state);
                self.settle(None)
            }
        }
    }

    fn block<F, T>(&self, f: F) -> Option<T>
    where
        F: std::future::Future<Output = sqlx::Result<T>>,
    {
        match self.rt.block_on(f) {
            Ok(v) => Some(v),
            Err(e) => {
                // A database hiccup loses one progress row, not the run; the heartbeat
                // decides whether the claim still holds.
                tracing::warn!(error = %e, "writing job progress");
                None
            }
        }
    }

    /// Continue unless the run should stop; the step that stops it is always written.
    fn settle(&mut self, lease: Option<Lease>) -> ControlFlow<()> {
        if let Some(lease) = lease {
            self.control.apply(lease);
        }
        if self.control.flag.load(Ordering::SeqCst) {
            if !self.control.is_lost() {
                self.flush_step();
            }
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Writes the latest step as an event if the throttle held it back.
    pub fn flush_step(&mut self) {
        if let Some(data) = self.unreported_step.take() {
            self.last_step_event = Some(Instant::now());
            if let Some(lease) = self.block(jobs::record_event(
                &self.pool, self.fence, "step", &data, None,
            )) {
                self.control.apply(lease);
            }
        }
    }

    fn progress(
        &mut self,
        phase: Phase,
        epoch: usize,
        step: usize,
        total_steps: usize,
        loss: f64,
    ) -> serde_json::Value {
        let elapsed = self.started.elapsed().as_secs_f64();
        // Progress in steps over both runs: the baseline's, then the tuned run's (the
        // same number of steps: same rows, same epochs).
        let runs = if self.adapted { 2 } else { 1 };
        let total_units = runs * total_steps;
        let done_units = match phase {
            Phase::Tuned if self.adapted => total_steps + step,
            _ => step,
        };
        let first = *self.first_units.get_or_insert(done_units.saturating_sub(1));
        let done_here = done_units.saturating_sub(first);
        let eta = if done_here > 0 && total_units > done_units {
            Some(elapsed / done_here as f64 * (total_units - done_units) as f64)
        } else {
            None
        };
        json!({
            "phase": phase,
            "epoch": epoch,
            "epochs": self.epochs,
            "step": step,
            "total_steps": total_steps,
            "loss": loss,
            "metric": self.metric.as_ref().map(|m| &m.0),
            "metric_value": self.metric.as_ref().map(|m| m.1),
            "elapsed_seconds": elapsed,
            "eta_seconds": eta,
        })
    }

    /// Stores a checkpoint of the tuned run and records it (fenced); a checkpoint that
    /// cannot be stored is skipped with a log event, the run goes on.
    pub fn checkpoint(&mut self, state: &TrainState) {
        let key = checkpoint_key(self.org, self.fence.job_id, state.step);
        let stored = state.to_bytes().and_then(|bytes| {
            self.rt
                .block_on(self.store.put(&key, PutPayload::from(bytes)))
                .map_err(anyhow::Error::from)
        });
        if let Err(e) = stored {
            tracing::warn!(error = %format!("{e:#}"), %key, "storing a checkpoint");
            return;
        }
        let lease = self.block(jobs::record_checkpoint(
            &self.pool,
            self.fence,
            key.as_ref(),
            state.step as i32,
        ));
        match lease {
            Some(Lease::Held { .. }) => {
                if let Some(old) = self.previous_checkpoint.replace(key.to_string())
                    && old != key.as_ref()
                {
                    let _ = self.rt.block_on(self.store.delete(&Path::from(old)));
                }
            }
            Some(Lease::Lost) => self.control.stop(StopCause::Lost),
            None => {}
        }
        if let Some(lease) = lease {
            self.control.apply(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_cause_wins_but_losing_the_job_overrides_it() {
        let c = Control::default();
        assert_eq!(c.cause(), StopCause::None);
        assert!(!c.flag.load(Ordering::SeqCst));
        c.stop(StopCause::Shutdown);
        c.stop(StopCause::Cancel);
        assert_eq!(c.cause(), StopCause::Shutdown);
        assert!(c.flag.load(Ordering::SeqCst));
        c.stop(StopCause::Lost);
        assert!(c.is_lost());
        c.stop(StopCause::Cancel);
        assert!(c.is_lost());
    }

    #[test]
    fn fenced_answers_set_the_switch() {
        let c = Control::default();
        c.apply(Lease::Held {
            cancel_requested: false,
        });
        assert!(!c.flag.load(Ordering::SeqCst));
        c.apply(Lease::Held {
            cancel_requested: true,
        });
        assert_eq!(c.cause(), StopCause::Cancel);
        let c = Control::default();
        c.apply(Lease::Lost);
        assert!(c.is_lost() && c.flag.load(Ordering::SeqCst));
    }

    #[test]
    fn checkpoints_live_under_the_job() {
        let org = OrgId(uuid::Uuid::nil());
        let job = uuid::Uuid::max();
        assert_eq!(
            checkpoint_key(org, job, 12).as_ref(),
            format!("orgs/{}/jobs/{job}/checkpoints/step-12.bin", org.0)
        );
    }
}
