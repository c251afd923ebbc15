//! Learning-rate schedules with linear warmup, matching `transformers`'
//! `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup` (`num_cycles = 0.5`) formula for formula.
//!
//! `step` is the number of optimizer steps already taken: the learning rate of the first update is
//! `lr_at(0)` (0 when there is warmup, as with `LambdaLR` in PyTorch).

use serde::{Deserialize, Serialize};

/// The shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Constant at the peak learning rate.
    Constant,
    /// Linear decay from the peak to 0 at `total_steps`.
    #[default]
    Linear,
    /// Half-cosine decay from the peak to 0 at `total_steps`.
    Cosine,
}

/// A learning-rate schedule: linear warmup from 0 over `warmup_steps`, then `kind`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Steps of linear warmup from 0 to `peak_lr`.
    pub warmup_steps: usize,
    /// Total number of optimizer steps of the run.
    pub total_steps: usize,
    /// The learning rate reached at the end of warmup.
    pub peak_lr: f64,
}

/// Warmup steps from a ratio of the total, as `transformers` does: `ceil(total_steps * ratio)`.
pub fn warmup_steps_from_ratio(ratio: f64, total_steps: usize) -> usize {
    (total_steps as f64 * ratio).ceil().max(0.0) as usize
}

impl Schedule {
    /// The multiplier of `peak_lr` for the update that follows `step` completed steps.
    pub fn multiplier(&self, step: usize) -> f64 {
        let step = step as i64;
        let warmup = self.warmup_steps as i64;
        let total = self.total_steps as i64;
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let v = (total - step) as f64 / (total - warmup).max(1) as f64;
                v.max(0.0)
            }
            ScheduleKind::Cosine => {
                let num_cycles = 0.5;
                let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                let v = 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
                v.max(0.0)
            }
        }
    }

    /// The learning rate for the update that follows `step` completed steps.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.peak_lr * self.multiplier(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: usize, total: usize) -> Schedule {
        Schedule {
            kind,
            warmup_steps: warmup,
            total_steps: total,
            peak_lr: 2e-4,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 * b.abs().max(1e-300)
    }

    #[test]
    fn warmup_is_linear_from_zero() {
        for kind in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            let s = sched(kind, 4, 20);
            assert_eq!(s.lr_at(0), 0.0);
            assert!(close(s.lr_at(1), 0.5e-4));
            assert!(close(s.lr_at(2), 1e-4));
            assert!(close(s.lr_at(3), 1.5e-4));
            assert!(
                close(s.lr_at(4), 2e-4),
                "{kind:?} peak at the end of warmup"
            );
        }
    }

    #[test]
    fn constant() {
        let s = sched(ScheduleKind::Constant, 0, 10);
        for step in [0, 1, 9, 10, 50] {
            assert_eq!(s.lr_at(step), 2e-4);
        }
    }

    #[test]
    fn linear_hand_values() {
        // warmup 2, total 10: after warmup (10 - step) / 8.
        let s = sched(ScheduleKind::Linear, 2, 10);
        assert!(close(s.lr_at(2), 2e-4));
        assert!(close(s.lr_at(3), 2e-4 * 7.0 / 8.0));
        assert!(close(s.lr_at(6), 1e-4));
        assert!(close(s.lr_at(9), 2e-4 / 8.0));
        assert_eq!(s.lr_at(10), 0.0);
        assert_eq!(s.lr_at(15), 0.0);
        // no warmup: step 0 is at the peak.
        assert_eq!(sched(ScheduleKind::Linear, 0, 4).lr_at(0), 2e-4);
        assert!(close(sched(ScheduleKind::Linear, 0, 4).lr_at(1), 1.5e-4));
    }

    #[test]
    fn cosine_hand_values() {
        // warmup 2, total 10: progress = (step - 2) / 8, lr = peak * 0.5 (1 + cos(pi progress)).
        let s = sched(ScheduleKind::Cosine, 2, 10);
        assert!(close(s.lr_at(2), 2e-4));
        assert!(close(
            s.lr_at(6),
            1e-4 * (1.0 + (std::f64::consts::PI / 2.0).cos())
        ));
        assert!((s.lr_at(6) - 1e-4).abs() < 1e-19);
        // step 4: progress 1/4, 0.5 (1 + cos(pi/4)) = 0.8535533905932737
        assert!((s.lr_at(4) - 2e-4 * 0.8535533905932737).abs() < 1e-18);
        // step 8: progress 3/4, 0.5 (1 - cos(pi/4)) = 0.14644660940672627
        assert!((s.lr_at(8) - 2e-4 * 0.14644660940672627).abs() < 1e-18);
        assert!(s.lr_at(10).abs() < 1e-20);
    }

    #[test]
    fn degenerate_totals_do_not_divide_by_zero() {
        let s = sched(ScheduleKind::Linear, 5, 5);
        assert_eq!(s.lr_at(5), 0.0);
        let s = sched(ScheduleKind::Cosine, 5, 3);
        assert!(s.lr_at(7).is_finite());
    }

    #[test]
    fn warmup_ratio_uses_ceil() {
        assert_eq!(warmup_steps_from_ratio(0.1, 100), 10);
        assert_eq!(warmup_steps_from_ratio(0.1, 95), 10); // ceil(9.5)
        assert_eq!(warmup_steps_from_ratio(0.1, 1), 1);
        assert_eq!(warmup_steps_from_ratio(0.0, 1000), 0);
        // f64 products as Python computes them: 100 * 0.07 = 7.000000000000001 -> 8
        assert_eq!(warmup_steps_from_ratio(0.07, 100), 8);
    }

    #[test]
    fn kind_names() {
        let k: ScheduleKind = serde_json::from_str("\"cosine\"").unwrap();
        assert_eq!(k, ScheduleKind::Cosine);
        assert_eq!(
            serde_json::to_string(&ScheduleKind::Constant).unwrap(),
            "\"constant\""
        );
    }
}
