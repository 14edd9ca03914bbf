//! Learning-rate schedules, as Hugging Face's `get_scheduler` defines them.

use crate::args::SchedulerType;

/// The multiplier of the peak learning rate after `step` optimizer steps.
pub fn lr_lambda(kind: SchedulerType, step: i64, warmup: i64, total: i64) -> f64 {
    let step = step as f64;
    let (warmup, total) = (warmup as f64, total as f64);
    if step < warmup && kind != SchedulerType::Constant {
        return step / warmup.max(1.0);
    }
    match kind {
        SchedulerType::Constant | SchedulerType::ConstantWithWarmup => 1.0,
        SchedulerType::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
        SchedulerType::Cosine => {
            let progress = (step - warmup) / (total - warmup).max(1.0);
            (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_hf() {
        // get_linear_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10)
        let got: Vec<f64> = (0..=10).map(|s| lr_lambda(SchedulerType::Linear, s, 2, 10)).collect();
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn cosine_matches_hf() {
        // get_cosine_schedule_with_warmup(0, 4): 0.5 * (1 + cos(pi * s / 4))
        let got: Vec<f64> = (0..=4).map(|s| lr_lambda(SchedulerType::Cosine, s, 0, 4)).collect();
        let want = [1.0, 0.853_553_390_593_273_8, 0.5, 0.146_446_609_406_726_24, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }
}
