//! The state of libtorch's random number generators, saved in checkpoints so that a
//! resumed run draws the same random numbers (dropout, sampling) as one that never stopped.

use std::ffi::c_void;

use anyhow::{bail, Result};
use tch::{Device, Tensor};

extern "C" {
    fn host_rng_state(cuda: i32, index: i32) -> *mut c_void;
    fn host_set_rng_state(cuda: i32, index: i32, state: *mut c_void) -> i32;
}

fn device_args(device: Device) -> (i32, i32) {
    match device {
        Device::Cuda(index) => (1, index as i32),
        _ => (0, 0),
    }
}

/// The default generator's state for `device` (a uint8 tensor, as torch.get_rng_state).
pub fn state(device: Device) -> Result<Tensor> {
    let (cuda, index) = device_args(device);
    // SAFETY: the shim returns a new heap `at::Tensor`, as tch's own tensors are, or null.
    let ptr = unsafe { host_rng_state(cuda, index) };
    if ptr.is_null() {
        bail!("cannot read the random generator state of {device:?}");
    }
    Ok(unsafe { Tensor::from_ptr(ptr as *mut torch_sys::C_tensor) })
}

/// Restores a state that [`state`] returned.
pub fn set_state(device: Device, state: &Tensor) -> Result<()> {
    let (cuda, index) = device_args(device);
    // SAFETY: `state` is a live tensor for the call; the shim only reads it.
    let failed = unsafe { host_set_rng_state(cuda, index, state.as_ptr() as *mut c_void) } != 0;
    if failed {
        bail!("cannot restore the random generator state of {device:?} (saved by another libtorch or device?)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_the_state_replays_the_same_numbers() {
        tch::manual_seed(9);
        let saved = state(Device::Cpu).unwrap();
        let first = Tensor::rand([5], (tch::Kind::Float, Device::Cpu));
        set_state(Device::Cpu, &saved).unwrap();
        let again = Tensor::rand([5], (tch::Kind::Float, Device::Cpu));
        assert!(first.equal(&again));
        assert_eq!(saved.kind(), tch::Kind::Uint8);
    }
}
