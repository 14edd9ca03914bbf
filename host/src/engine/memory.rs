//! Whether a model fits in memory before it is built. On Linux a process may allocate more
//! than the machine has and be killed later, when the pages are touched; a model that
//! cannot fit is refused up front, with the figures, instead.

use tch::Device;

use crate::config::ResolvedConfig;
use crate::engine::activations::StepActivations;
use crate::engine::libtorch::human_bytes;

/// Refuses a model of `parameters` float32 parameters whose training (weights, gradients
/// and the optimizer's state; a LoRA run's frozen weights alone; and the activations of a
/// micro-batch, where they are known) needs more memory than the machine has available.
/// CUDA reports its own out-of-memory at once, so only CPU training is estimated.
pub fn check_training_fits(
    parameters: u64,
    activations: Option<StepActivations>,
    device: Device,
    config: &ResolvedConfig,
    model: &str,
) -> anyhow::Result<()> {
    if device != Device::Cpu {
        return Ok(());
    }
    let Some(available) = available_bytes() else { return Ok(()) };
    let weights = parameters.saturating_mul(4);
    // A LoRA run's base is frozen: no gradients, no optimizer state (the adapters are small).
    let copies = if config.args.use_peft { 1 } else { 2 + config.optimizer.state_slots() };
    let states = weights.saturating_mul(copies);
    let needed = states.saturating_add(activations.map_or(0, |a| a.bytes));
    if needed <= available {
        return Ok(());
    }
    if let Some(step) = activations.filter(|_| states <= available) {
        anyhow::bail!(
            "out of memory: training the model ({model}) on micro-batches of {} x {} tokens needs about {} ({} of weights and optimizer state, {} of activations), and this machine has {} available; use a smaller per_device_train_batch_size or max_seq_length, or gradient_checkpointing",
            step.batch,
            step.sequence,
            human_bytes(needed),
            human_bytes(states),
            human_bytes(step.bytes),
            human_bytes(available)
        )
    }
    anyhow::bail!(
        "out of memory allocating {} for the model ({model}): use a smaller model or batch ({} parameters; training them with {} needs about {}, and this machine has {} available)",
        human_bytes(weights),
        human_count(parameters),
        config.args.optim,
        human_bytes(needed),
        human_bytes(available)
    )
}

/// Memory the kernel says is available for new allocations (MemAvailable), if it says.
fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// "6.6 billion", "12.3 million", "840".
fn human_count(count: u64) -> String {
    match count {
        c if c >= 1_000_000_000_000 => format!("{:.1} trillion", c as f64 / 1e12),
        c if c >= 1_000_000_000 => format!("{:.1} billion", c as f64 / 1e9),
        c if c >= 1_000_000 => format!("{:.1} million", c as f64 / 1e6),
        c => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_words() {
        assert_eq!(human_count(6_553_600_000), "6.6 billion");
        assert_eq!(human_count(840), "840");
        assert!(available_bytes().is_some_and(|b| b > 0));
    }
}
