//! Which optimizer steps had a loss or a gradient norm that is not finite, counted on the
//! device: each step adds its flag without the host waiting for the GPU, and the host
//! reads the counts when it reads anything else anyway (a log, an evaluation, a save), or
//! after every step where a read costs nothing (a CPU) or was made already.

use tch::{Device, Kind, Tensor};

/// The counts, as scalars on the device.
pub(super) struct StepHealth {
    /// Steps flagged since the last read.
    skipped: Tensor,
    /// Flagged steps in a row up to the last one.
    in_a_row: Tensor,
    /// The first step of the current run of flagged steps.
    streak_start: Tensor,
    /// The first step of the first run that reached `limit` steps (0: none did).
    diverged_from: Tensor,
    limit: i64,
    /// The optimizer step of the last read.
    read_at: i64,
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Health {
    /// Steps flagged since the read before, and the steps that read covers.
    pub skipped: i64,
    pub first_step: i64,
    pub last_step: i64,
    /// Flagged steps in a row up to `last_step`.
    pub in_a_row: i64,
    /// The first step of a run of `limit` flagged steps in a row, if one happened.
    pub diverged_from: Option<i64>,
}

impl StepHealth {
    /// Counting from `step` on (0, or the step a run resumes at).
    pub(super) fn new(device: Device, limit: i64, step: i64) -> Self {
        let zero = || Tensor::zeros([], (Kind::Float, device));
        Self { skipped: zero(), in_a_row: zero(), streak_start: zero(), diverged_from: zero(), limit, read_at: step }
    }

    /// Records optimizer step `step`: flagged when `loss_nonfinite` (a float scalar) is 1
    /// or the gradient norm, if given, is not finite. Returns the flag (a new float scalar
    /// on the device, 1 or 0), which a fused optimizer takes as its `found_inf`.
    pub(super) fn note(&mut self, step: i64, loss_nonfinite: &Tensor, norm: Option<&Tensor>) -> Tensor {
        let _guard = tch::no_grad_guard();
        let device = self.skipped.device();
        let mut flag = loss_nonfinite.to_device(device).to_kind(Kind::Float).gt(0.0).to_kind(Kind::Float);
        if let Some(norm) = norm {
            let norm_bad = norm.to_device(device).isfinite().logical_not().to_kind(Kind::Float);
            flag = flag.maximum(&norm_bad);
        }
        let _ = self.skipped.g_add_(&flag);
        self.in_a_row = (&self.in_a_row + 1.0) * &flag;
        let starts = self.in_a_row.eq(1.0);
        // A scalar fill, not a tensor copied from the host (which would wait for the GPU).
        self.streak_start = self.streak_start.masked_fill(&starts, step as f64);
        let reached = self.in_a_row.ge(self.limit as f64).logical_and(&self.diverged_from.eq(0.0));
        self.diverged_from = self.streak_start.where_self(&reached, &self.diverged_from);
        flag
    }

    /// Reads the counts (the host waits for the device here), up to optimizer step `step`.
    pub(super) fn read(&mut self, step: i64) -> Health {
        let values = Tensor::stack(&[&self.skipped, &self.in_a_row, &self.diverged_from], 0).to_device(Device::Cpu);
        let values = Vec::<f32>::try_from(&values).unwrap_or_default();
        let value = |i: usize| values.get(i).copied().unwrap_or(0.0) as i64;
        let _ = self.skipped.zero_();
        let health = Health {
            skipped: value(0),
            first_step: self.read_at + 1,
            last_step: step,
            in_a_row: value(1),
            diverged_from: (value(2) > 0).then_some(value(2)),
        };
        self.read_at = step;
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(value: f64) -> Tensor {
        Tensor::from(value as f32)
    }

    #[test]
    fn counts_flagged_steps_streaks_and_the_first_run_that_reached_the_limit() {
        let mut health = StepHealth::new(Device::Cpu, 3, 0);
        let finite_norm = Tensor::from(1.5f32);
        let infinite_norm = Tensor::from(f32::INFINITY);
        // Step 1 fine, 2 a nan loss, 3 an infinite norm, 4 fine, 5-7 bad (the limit), 8 bad.
        let steps = [(0.0, &finite_norm), (1.0, &finite_norm), (0.0, &infinite_norm), (0.0, &finite_norm)];
        let flags: Vec<f64> = steps
            .iter()
            .enumerate()
            .map(|(i, (l, n))| health.note(i as i64 + 1, &flag(*l), Some(n)).double_value(&[]))
            .collect();
        assert_eq!(flags, [0.0, 1.0, 1.0, 0.0]);
        let read = health.read(4);
        assert_eq!(read, Health { skipped: 2, first_step: 1, last_step: 4, in_a_row: 0, diverged_from: None });
        for step in 5..=8 {
            let _ = health.note(step, &flag(1.0), None);
        }
        let read = health.read(8);
        assert_eq!(read, Health { skipped: 4, first_step: 5, last_step: 8, in_a_row: 4, diverged_from: Some(5) });
        // A later finite step ends the streak; the divergence stays recorded.
        let _ = health.note(9, &flag(0.0), Some(&finite_norm));
        assert_eq!(
            health.read(9),
            Health { skipped: 0, first_step: 9, last_step: 9, in_a_row: 0, diverged_from: Some(5) }
        );
    }
}
