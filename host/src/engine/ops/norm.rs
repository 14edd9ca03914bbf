//! Normalization.

use tch::{Kind, Tensor};

/// How an RMSNorm scales the normalized input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// Llama's: `weight * normed`, the product in the input's dtype.
    Rms,
    /// Gemma's: `normed * (1 + weight)` in float32, then cast (its weights start at zero).
    RmsUnitOffset,
}

impl NormKind {
    pub fn apply(self, x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
        match self {
            NormKind::Rms => rms_norm(x, weight, eps),
            NormKind::RmsUnitOffset => rms_norm_unit_offset(x, weight, eps),
        }
    }
}

/// Llama's RMSNorm: normalized in float32, then scaled by the weight in the input's dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    rms_norm_reference(x, weight, eps)
}

/// Gemma's RMSNorm: normalized and scaled by (1 + weight) in float32, then cast.
pub fn rms_norm_unit_offset(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    rms_norm_unit_offset_reference(x, weight, eps)
}

/// transformers' `GemmaRMSNorm.forward`, op by op.
pub fn rms_norm_unit_offset_reference(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let x32 = x.to_kind(Kind::Float);
    let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    (x32 * (variance + eps).rsqrt() * (weight.to_kind(Kind::Float) + 1.0)).to_kind(x.kind())
}

/// transformers' `LlamaRMSNorm.forward`, op by op.
pub fn rms_norm_reference(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let x32 = x.to_kind(Kind::Float);
    let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    weight * (x32 * (variance + eps).rsqrt()).to_kind(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn rms_norm_matches_libtorchs_own_in_float32() {
        let _generator = crate::engine::rng::lock_generator();
        let x = Tensor::randn([3, 5, 16], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn([16], (Kind::Float, Device::Cpu));
        let ours = rms_norm(&x, &weight, 1e-6);
        let theirs = x.rms_norm([16], Some(&weight), 1e-6);
        let difference = (ours - theirs).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "{difference}");
    }

    #[test]
    fn the_unit_offset_norm_is_the_plain_one_with_one_added_to_the_weight() {
        let _generator = crate::engine::rng::lock_generator();
        let x = Tensor::randn([2, 7, 16], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn([16], (Kind::Float, Device::Cpu));
        let offset = NormKind::RmsUnitOffset.apply(&x, &weight, 1e-6);
        let plain = NormKind::Rms.apply(&x, &(&weight + 1.0), 1e-6);
        let difference = (offset - plain).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "{difference}");
    }
}
