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
/// In float32 (the residual stream under autocast over float32 weights) libtorch's own
/// `rms_norm`: one fused kernel with its own backward on CUDA; on the CPU its composite
/// runs the reference's operations in the reference's order. In half precision it would
/// scale before rounding, where transformers rounds first: the reference runs there.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    if x.kind() != Kind::Float || weight.kind() != Kind::Float {
        return rms_norm_reference(x, weight, eps);
    }
    let width = *x.size().last().expect("a norm's input has a last dimension");
    x.rms_norm([width], Some(weight), eps)
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
    fn the_norm_on_the_cpu_is_the_reference_bit_for_bit() {
        let _generator = crate::engine::rng::lock_generator();
        for (input, weight) in
            [(Kind::Float, Kind::Float), (Kind::BFloat16, Kind::BFloat16), (Kind::BFloat16, Kind::Float)]
        {
            let x = Tensor::randn([3, 5, 16], (input, Device::Cpu)).set_requires_grad(true);
            let w = Tensor::randn([16], (weight, Device::Cpu)).set_requires_grad(true);
            let (ours, reference) = (rms_norm(&x, &w, 1e-6), rms_norm_reference(&x, &w, 1e-6));
            assert_eq!(ours.kind(), reference.kind());
            assert!(ours.equal(&reference), "{input:?} x {weight:?}");
            let upstream = Tensor::randn_like(&ours);
            let ours_grads = Tensor::run_backward(&[(&ours * &upstream).sum(Kind::Float)], &[&x, &w], false, false);
            let grads = Tensor::run_backward(&[(&reference * &upstream).sum(Kind::Float)], &[&x, &w], false, false);
            for (a, b) in ours_grads.iter().zip(&grads) {
                let diff = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[]);
                assert!(diff <= 1e-6, "{input:?} x {weight:?}: gradients differ by {diff}");
            }
        }
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
