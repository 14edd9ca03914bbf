//! Mixed precision: autocast (bf16 on CPU or CUDA, fp16 on CUDA), TF32 matmuls, and the
//! gradient scaler that fp16 needs, as `torch.amp.GradScaler`.

use anyhow::{anyhow, Result};
use tch::{Device, Tensor};

use crate::error::InputError;
use crate::native;

/// The reduced precision a run computes its forward pass in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Full,
    BFloat16,
    Float16,
}

impl Precision {
    /// From HF's `bf16` / `fp16` flags.
    pub fn from_flags(bf16: bool, fp16: bool) -> Result<Self, InputError> {
        match (bf16, fp16) {
            (true, true) => Err(InputError::new("bf16 and fp16 are both set; choose one")),
            (false, true) => Ok(Self::Float16),
            (true, false) => Ok(Self::BFloat16),
            (false, false) => Ok(Self::Full),
        }
    }

    /// Refuses what the device cannot do: fp16 loss scaling is for CUDA.
    pub fn check_device(self, device: Device) -> Result<(), InputError> {
        if self == Self::Float16 && device == Device::Cpu {
            return Err(InputError::new("fp16 mixed precision needs a CUDA device; on CPU use bf16, or --device cuda"));
        }
        Ok(())
    }
}

/// Autocast is on while this lives (for the device it was made for).
pub struct Autocast {
    cuda: Option<bool>,
}

impl Autocast {
    pub fn enter(precision: Precision, device: Device) -> Result<Self> {
        let cuda = device.is_cuda();
        let bfloat16 = match precision {
            Precision::Full => return Ok(Self { cuda: None }),
            Precision::BFloat16 => true,
            Precision::Float16 => false,
        };
        native::autocast_enter(cuda, bfloat16).map_err(|e| anyhow!("libtorch refused to enable autocast: {e}"))?;
        Ok(Self { cuda: Some(cuda) })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if let Some(cuda) = self.cuda {
            // Leaving autocast only clears flags; should libtorch object, the run is over
            // anyway (the next enter reports it).
            let _ = native::autocast_exit(cuda);
        }
    }
}

/// Allows TF32 tensor cores for float32 matmuls and convolutions on CUDA (HF's `tf32`).
pub fn set_tf32(enabled: bool) -> Result<()> {
    native::set_tf32(enabled).map_err(|e| anyhow!("cannot set TF32: {e}"))
}

/// Dynamic loss scaling for fp16, as `torch.amp.GradScaler` with its defaults: scale the
/// loss up, unscale the gradients, skip a step whose gradients overflowed and halve the
/// scale, double it after 2000 good steps.
pub struct GradScaler {
    pub scale: f64,
    good_steps: i64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self { scale: 65536.0, good_steps: 0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl GradScaler {
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divides the gradients by the scale; returns whether they are all finite. One
    /// kernel checks and unscales them all, and the host reads its one flag (as
    /// accelerate's GradScaler step does).
    pub fn unscale(&self, grads: &[Tensor]) -> Result<bool, String> {
        let _guard = tch::no_grad_guard();
        let Some(first) = grads.first() else { return Ok(true) };
        let device = first.device();
        let found_inf = Tensor::zeros([], (tch::Kind::Float, device));
        let inv_scale = Tensor::full([], 1.0 / self.scale, (tch::Kind::Float, device));
        native::amp_unscale(&grads.iter().collect::<Vec<_>>(), &found_inf, &inv_scale)?;
        Ok(found_inf.double_value(&[]) == 0.0)
    }

    /// Adjusts the scale after a step; `finite` says whether the step was taken.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// The kind a float32 matmul computes in under the current autocast.
    fn matmul_kind(device: Device) -> Kind {
        let a = Tensor::ones([2, 2], (Kind::Float, device));
        a.matmul(&a).kind()
    }

    #[test]
    fn bf16_autocast_on_cpu_lowers_matmuls_while_it_lives() {
        assert_eq!(matmul_kind(Device::Cpu), Kind::Float);
        {
            let _autocast = Autocast::enter(Precision::BFloat16, Device::Cpu).unwrap();
            assert_eq!(matmul_kind(Device::Cpu), Kind::BFloat16);
        }
        assert_eq!(matmul_kind(Device::Cpu), Kind::Float);
    }

    #[test]
    fn precision_choices_are_checked() {
        let choose =
            |bf16, fp16, device| Precision::from_flags(bf16, fp16).and_then(|p| p.check_device(device).map(|_| p));
        assert_eq!(choose(true, false, Device::Cpu), Ok(Precision::BFloat16));
        assert_eq!(
            choose(false, true, Device::Cpu).unwrap_err().to_string(),
            "fp16 mixed precision needs a CUDA device; on CPU use bf16, or --device cuda"
        );
        assert_eq!(choose(false, true, Device::Cuda(0)), Ok(Precision::Float16));
        assert!(choose(true, true, Device::Cuda(0)).is_err());
    }

    #[test]
    fn grad_scaler_skips_overflow_and_adapts_its_scale() {
        let mut scaler = GradScaler { growth_interval: 2, ..Default::default() };
        let grads = [Tensor::from_slice(&[65536.0f32, 131072.0]), Tensor::from_slice(&[-32768.0f32])];
        assert!(scaler.unscale(&grads).unwrap());
        assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), [1.0, 2.0]);
        assert_eq!(Vec::<f32>::try_from(&grads[1]).unwrap(), [-0.5]);
        scaler.update(true);
        scaler.update(true);
        assert_eq!(scaler.scale, 131072.0);
        // An inf or a nan in any of the gradients is an overflow.
        let overflow = [Tensor::from_slice(&[1.0f32]), Tensor::from_slice(&[f32::INFINITY, 1.0])];
        assert!(!scaler.unscale(&overflow).unwrap());
        assert!(!scaler.unscale(&[Tensor::from_slice(&[f32::NAN])]).unwrap());
        scaler.update(false);
        assert_eq!(scaler.scale, 65536.0);
    }
}
