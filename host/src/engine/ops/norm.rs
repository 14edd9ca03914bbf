//! Normalization.

use tch::{Kind, Tensor};

/// Llama's RMSNorm: normalized in float32, then scaled by the weight in the input's dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    rms_norm_reference(x, weight, eps)
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
}
