//! Rotary position embeddings: the frequencies a config asks for, the cos/sin tables a
//! forward pass computes once for all its layers, and their application to queries and keys.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

/// Rotary position embeddings: the base, and how the frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Frequencies divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Phi-3's LongRoPE: per-frequency divisors, the short ones up to the pretraining
    /// length and the long ones past it (chosen by the sequence's length), and a factor on
    /// cos and sin.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: i64,
        attention_factor: f64,
    },
}

/// The inverse frequencies a forward pass uses, and the factor on its cos and sin.
#[derive(Debug)]
pub struct Frequencies {
    base: Tensor,
    /// LongRoPE's set past `original_max_position_embeddings` positions.
    long: Option<(Tensor, i64)>,
    pub attention_factor: f64,
}

impl Frequencies {
    /// For a sequence of `length` positions (transformers' `max(position_ids) + 1`).
    pub fn for_length(&self, length: i64) -> &Tensor {
        match &self.long {
            Some((long, original)) if length > *original => long,
            _ => &self.base,
        }
    }
}

impl Rope {
    /// The inverse frequencies [dim / 2], in float32 as transformers computes them.
    pub fn inverse_frequencies(&self, dim: i64, device: Device) -> Tensor {
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim as f64;
        let inv_freq = Tensor::pow_scalar(self.theta, &exponents).reciprocal();
        match self.scaling {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * PI);
                let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / factor));
                let smooth = (wavelen.reciprocal() * old - low_freq_factor) / (high_freq_factor - low_freq_factor);
                let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen.ge(high_freq_wavelen).logical_and(&wavelen.le(low_freq_wavelen));
                smoothed.where_self(&medium, &scaled)
            }
            // As transformers: 1 / (factors * base^(2i/d)).
            RopeScaling::LongRope { ref short_factor, .. } => divided(self.theta, &exponents, short_factor),
        }
    }

    /// The frequencies of a forward pass of any length (LongRoPE's two sets).
    pub fn frequencies(&self, dim: i64, device: Device) -> Frequencies {
        let base = self.inverse_frequencies(dim, device);
        match &self.scaling {
            RopeScaling::LongRope { long_factor, original_max_position_embeddings, attention_factor, .. } => {
                let exponents =
                    Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim as f64;
                let long = divided(self.theta, &exponents, long_factor);
                Frequencies {
                    base,
                    long: Some((long, *original_max_position_embeddings)),
                    attention_factor: *attention_factor,
                }
            }
            _ => Frequencies { base, long: None, attention_factor: 1.0 },
        }
    }
}

/// 1 / (factors * theta^exponents), in float32 as transformers computes it.
fn divided(theta: f64, exponents: &Tensor, factors: &[f64]) -> Tensor {
    let factors: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
    let factors = Tensor::from_slice(&factors).to_device(exponents.device());
    (factors * Tensor::pow_scalar(theta, exponents)).reciprocal()
}

/// cos and sin [1, 1, T, dim] for positions 0..T, in the activations' dtype: computed once
/// per forward pass and shared by every layer that uses these frequencies.
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    /// sin with its first half negated: rotate_half's sign folded into the table, so that
    /// a rotation needs no `cat` (see `apply_rotary`).
    pub signed_sin: Tensor,
}

impl RopeTables {
    pub fn new(inv_freq: &Tensor, length: i64, kind: Kind) -> Self {
        Self::scaled(inv_freq, length, kind, 1.0)
    }

    /// `new` with cos and sin times `factor` (LongRoPE's attention factor), in float32
    /// before the cast, as transformers scales them.
    pub fn scaled(inv_freq: &Tensor, length: i64, kind: Kind, factor: f64) -> Self {
        let positions = Tensor::arange(length, (Kind::Float, inv_freq.device()));
        let freqs = positions.outer(inv_freq);
        Self::from_angles(&freqs.view([1, 1, length, -1]), kind, factor)
    }

    /// The tables of angles [.., T, dim / 2].
    fn from_angles(freqs: &Tensor, kind: Kind, factor: f64) -> Self {
        let emb = Tensor::cat(&[freqs, freqs], -1);
        let scale = |t: Tensor| if factor == 1.0 { t } else { t * factor };
        let sin = scale(freqs.sin());
        let signed_sin = Tensor::cat(&[&sin.neg(), &sin], -1).to_kind(kind);
        Self { cos: scale(emb.cos()).to_kind(kind), sin: scale(emb.sin()).to_kind(kind), signed_sin }
    }

    /// The tables [B, 1, T, dim] at given positions [B, T] (packed rows, whose positions
    /// restart per example, and the new positions after a KV cache), cos and sin times
    /// `factor`.
    pub fn at(inv_freq: &Tensor, positions: &Tensor, kind: Kind, factor: f64) -> Self {
        let (batch, length) = positions.size2().expect("positions [batch, time]");
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
        Self::from_angles(&freqs.view([batch, 1, length, -1]), kind, factor)
    }
}

/// Rotates queries or keys [B, H, T, dim] by their positions: all of each head, or with
/// tables narrower than the head (a partial_rotary_factor below 1, as Phi-3's) its first
/// dimensions, the rest passing through.
pub fn apply_rotary(x: &Tensor, tables: &RopeTables) -> Tensor {
    let (width, rotated) = (x.size()[3], tables.cos.size()[3]);
    if rotated == width {
        return rotate(x, tables);
    }
    let turned = rotate(&x.narrow(3, 0, rotated), tables);
    Tensor::cat(&[&turned, &x.narrow(3, rotated, width - rotated)], -1)
}

/// The reference's rotation with rotate_half(x) * sin as [x2, x1] * [-sin, sin]: a roll
/// by half the width instead of two slices, a negation and a `cat` (forward and backward),
/// and bit for bit the same values (negating a factor is exact).
fn rotate(x: &Tensor, tables: &RopeTables) -> Tensor {
    let half = x.size()[3] / 2;
    x * &tables.cos + x.roll([half], [3]) * &tables.signed_sin
}

/// transformers' `apply_rotary_pos_emb`: x * cos + rotate_half(x) * sin, with
/// rotate_half(x) = [-x2, x1].
pub fn apply_rotary_reference(x: &Tensor, tables: &RopeTables) -> Tensor {
    let half = x.size()[3] / 2;
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
    x * &tables.cos + rotated * &tables.sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_keeps_each_pair_of_dimensions_length_and_position_zero_is_unchanged() {
        let _generator = crate::engine::rng::lock_generator();
        let rope = Rope { theta: 10_000.0, scaling: RopeScaling::None };
        let tables = RopeTables::new(&rope.inverse_frequencies(8, Device::Cpu), 5, Kind::Float);
        let x = Tensor::randn([2, 3, 5, 8], (Kind::Float, Device::Cpu));
        let rotated = apply_rotary(&x, &tables);
        let pair_norms = |t: &Tensor| (t.narrow(3, 0, 4).square() + t.narrow(3, 4, 4).square()).sqrt();
        assert!(pair_norms(&rotated).allclose(&pair_norms(&x), 1e-5, 1e-5, false));
        assert!(rotated.narrow(2, 0, 1).allclose(&x.narrow(2, 0, 1), 0.0, 0.0, false));
    }

    #[test]
    fn the_rotation_without_cat_is_the_reference_bit_for_bit() {
        let _generator = crate::engine::rng::lock_generator();
        let rope = Rope { theta: 10_000.0, scaling: RopeScaling::None };
        for kind in [Kind::Float, Kind::BFloat16] {
            let tables = RopeTables::new(&rope.inverse_frequencies(16, Device::Cpu), 7, kind);
            let x = Tensor::randn([2, 3, 7, 16], (kind, Device::Cpu)).set_requires_grad(true);
            let (ours, reference) = (apply_rotary(&x, &tables), apply_rotary_reference(&x, &tables));
            assert!(ours.equal(&reference), "{kind:?}");
            let upstream = Tensor::randn([2, 3, 7, 16], (kind, Device::Cpu));
            let ours_grad = Tensor::run_backward(&[(&ours * &upstream).sum(Kind::Float)], &[&x], false, false);
            let reference_grad =
                Tensor::run_backward(&[(&reference * &upstream).sum(Kind::Float)], &[&x], false, false);
            assert!(ours_grad[0].equal(&reference_grad[0]), "{kind:?} gradients");
        }
    }

    #[test]
    fn a_partial_rotation_turns_the_first_dimensions_and_passes_the_rest() {
        let _generator = crate::engine::rng::lock_generator();
        let rope = Rope { theta: 10_000.0, scaling: RopeScaling::None };
        let tables = RopeTables::new(&rope.inverse_frequencies(4, Device::Cpu), 5, Kind::Float);
        let x = Tensor::randn([1, 2, 5, 8], (Kind::Float, Device::Cpu));
        let rotated = apply_rotary(&x, &tables);
        assert!(rotated.narrow(3, 4, 4).allclose(&x.narrow(3, 4, 4), 0.0, 0.0, false));
        let first = apply_rotary_reference(&x.narrow(3, 0, 4), &tables);
        assert!(rotated.narrow(3, 0, 4).allclose(&first, 0.0, 0.0, false));
    }
}
