//! Learning-rate schedules: a linear warm-up from 0, then linear or cosine decay to 0 (or
//! a constant rate). The training loop asks for the rate of every step and sets it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Linear,
    Cosine,
    Constant,
}

impl ScheduleKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linear" => Some(Self::Linear),
            "cosine" => Some(Self::Cosine),
            "constant" => Some(Self::Constant),
            _ => None,
        }
    }
}

/// The learning-rate multiplier for every step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// `warmup_ratio` of `total_steps` (rounded up, at least one step when the ratio is
    /// above zero) warm up linearly.
    pub fn new(kind: ScheduleKind, warmup_ratio: f64, total_steps: usize) -> Self {
        let warmup_steps = (warmup_ratio * total_steps as f64).ceil() as usize;
        Self {
            kind,
            warmup_steps: warmup_steps.min(total_steps),
            total_steps: total_steps.max(1),
        }
    }

    /// Multiplier of the base rate for the 0-based `step`: during warm-up `(step+1)/warmup`,
    /// so the first step already moves; then the decay over the remaining steps.
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = (self.total_steps - self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / decay_steps).clamp(0.0, 1.0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_decay() {
        let s = Schedule::new(ScheduleKind::Linear, 0.2, 10);
        assert_eq!(s.warmup_steps, 2);
        let f: Vec<f64> = (0..10).map(|i| s.factor(i)).collect();
        assert_eq!(f[0], 0.5);
        assert_eq!(f[1], 1.0);
        assert_eq!(f[2], 1.0);
        assert!((f[6] - 0.5).abs() < 1e-12);
        assert!((f[9] - 0.125).abs() < 1e-12);
        let c = Schedule::new(ScheduleKind::Cosine, 0.0, 4);
        assert_eq!(c.factor(0), 1.0);
        assert!((c.factor(2) - 0.0).abs() < 1e-12 || (c.factor(2) - 0.5).abs() < 1e-12);
        assert!((c.factor(2) - 0.5 * (1.0 + (std::f64::consts::PI * 0.5).cos())).abs() < 1e-12);
        assert_eq!(Schedule::new(ScheduleKind::Constant, 0.0, 5).factor(4), 1.0);
    }
}
