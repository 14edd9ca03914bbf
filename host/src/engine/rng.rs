//! The state of libtorch's random number generators, saved in checkpoints so that a
//! resumed run draws the same random numbers (dropout, sampling) as one that never stopped.

use anyhow::{anyhow, Result};
use tch::{Device, Tensor};

use crate::native;

/// The default generator's state for `device` (a uint8 tensor, as torch.get_rng_state).
pub fn state(device: Device) -> Result<Tensor> {
    native::rng_state(device).map_err(|e| anyhow!("cannot read the random generator state of {device:?}: {e}"))
}

/// Restores a state that [`state`] returned.
pub fn set_state(device: Device, state: &Tensor) -> Result<()> {
    native::set_rng_state(device, state).map_err(|e| {
        anyhow!("cannot restore the random generator state of {device:?} (saved by another libtorch or device?): {e}")
    })
}

/// Unit tests run in parallel and libtorch's CPU generator is one for the process: tests
/// that seed it and draw from it hold this while they do.
#[cfg(test)]
pub(crate) fn lock_generator() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_the_state_replays_the_same_numbers() {
        let _generator = lock_generator();
        tch::manual_seed(9);
        let saved = state(Device::Cpu).unwrap();
        let first = Tensor::rand([5], (tch::Kind::Float, Device::Cpu));
        set_state(Device::Cpu, &saved).unwrap();
        let again = Tensor::rand([5], (tch::Kind::Float, Device::Cpu));
        assert!(first.equal(&again));
        assert_eq!(saved.kind(), tch::Kind::Uint8);
    }
}
