//! Attention: which keys each query may see (a [`Mask`] computed once per forward pass for
//! each attention window the model's layers use), and scaled dot-product attention over
//! grouped-query heads.

use tch::{Kind, Tensor};

/// Which keys each query may attend to, in the form SDPA runs fastest with.
#[derive(Debug)]
pub enum Mask {
    /// Every key (no padding, bidirectional).
    All,
    /// Keys up to the query's position (no padding): SDPA's `is_causal`, which its fused
    /// kernels take.
    Causal,
    /// [B, 1, T, T], true where a query may attend to a key.
    Explicit(Tensor),
}

impl Mask {
    /// The mask for a batch: padding keys hidden (`mask` [B, T], 1 for real tokens) and,
    /// when `causal`, later positions too, and with a `window` the keys that many
    /// positions back or more (transformers' sliding window: a query sees itself and the
    /// window - 1 keys before it). As transformers, a batch without padding gets no mask
    /// tensor at all where the window does not act. A query with no key left (padding
    /// past a window, or before any real token) gets zeros from SDPA, as in transformers
    /// (its output is never used).
    pub fn new(ids: &Tensor, mask: Option<&Tensor>, causal: bool, window: Option<i64>) -> Self {
        let padding = mask.filter(|m| m.eq_tensor(&m.zeros_like()).any().int64_value(&[]) != 0);
        Self::build(ids, padding, causal, window)
    }

    /// `new` for a mask known to have padding: no look at its values (a device read).
    pub fn with_padding(ids: &Tensor, mask: &Tensor, causal: bool, window: Option<i64>) -> Self {
        Self::build(ids, Some(mask), causal, window)
    }

    fn build(ids: &Tensor, padding: Option<&Tensor>, causal: bool, window: Option<i64>) -> Self {
        let (batch, length) = ids.size2().expect("token ids [batch, time]");
        let window = window.filter(|w| causal && *w < length);
        if padding.is_none() && window.is_none() {
            return if causal { Mask::Causal } else { Mask::All };
        }
        let device = ids.device();
        let keys = match padding {
            Some(mask) => mask.ne(0).view([batch, 1, 1, length]),
            None => Tensor::ones([1, 1, 1, length], (Kind::Bool, device)),
        };
        let allowed = if causal {
            let positions = Tensor::arange(length, (Kind::Int64, device));
            let (query, key) = (positions.view([length, 1]), positions.view([1, length]));
            let mut rule = key.le_tensor(&query);
            if let Some(window) = window {
                rule = rule.logical_and(&key.gt_tensor(&(&query - window)));
            }
            keys.logical_and(&rule.view([1, 1, length, length]))
        } else {
            keys.expand([batch, 1, length, length], false)
        };
        Mask::Explicit(allowed)
    }
}

impl Mask {
    /// The causal mask of packed rows: `positions` [B, T] restart at 0 where each example
    /// begins, and a query sees only the keys of its own example (a block-diagonal causal
    /// mask), padding hidden, and with a `window` only that many positions back.
    pub fn packed(positions: &Tensor, mask: Option<&Tensor>, window: Option<i64>) -> Self {
        let (batch, length) = positions.size2().expect("positions [batch, time]");
        // The example each position belongs to: a count of the starts up to it.
        let example = positions.eq(0).cumsum(1, Kind::Int64);
        let same = example.view([batch, 1, length, 1]).eq_tensor(&example.view([batch, 1, 1, length]));
        let index = Tensor::arange(length, (Kind::Int64, positions.device()));
        let (query, key) = (index.view([length, 1]), index.view([1, length]));
        let mut rule = key.le_tensor(&query);
        if let Some(window) = window {
            rule = rule.logical_and(&key.gt_tensor(&(&query - window)));
        }
        let mut allowed = same.logical_and(&rule.view([1, 1, length, length]));
        if let Some(mask) = mask {
            allowed = allowed.logical_and(&mask.ne(0).view([batch, 1, 1, length]));
        }
        Mask::Explicit(allowed)
    }
}

impl Mask {
    /// The causal mask of `new` queries that follow `start` cached positions (generation
    /// with a KV cache): query i, at position start + i, sees keys up to it, and with a
    /// `window` only that many positions back.
    pub fn after(start: i64, new: i64, window: Option<i64>, device: tch::Device) -> Self {
        let total = start + new;
        let window = window.filter(|w| *w < total);
        match (new, window) {
            (1, None) => return Mask::All,
            _ if start == 0 && window.is_none() => return Mask::Causal,
            _ => {}
        }
        let query = Tensor::arange_start(start, total, (Kind::Int64, device)).view([new, 1]);
        let key = Tensor::arange(total, (Kind::Int64, device)).view([1, total]);
        let mut rule = key.le_tensor(&query);
        if let Some(window) = window {
            rule = rule.logical_and(&key.gt_tensor(&(&query - window)));
        }
        Mask::Explicit(rule.view([1, 1, new, total]))
    }
}

/// Scaled dot-product attention over [B, H, T, D] queries and [B, H / groups, T, D] keys
/// and values (grouped-query attention when `groups` > 1), with libtorch's SDPA, which
/// picks its fused kernel (flash, memory-efficient, cuDNN) by device, dtype and mask.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask, dropout: f64, scale: f64, groups: i64) -> Tensor {
    match mask {
        Mask::Explicit(mask) => {
            let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
            Tensor::scaled_dot_product_attention(q, &k, &v, Some(mask), dropout, false, Some(scale), false)
        }
        Mask::Causal | Mask::All => {
            let causal = matches!(mask, Mask::Causal);
            Tensor::scaled_dot_product_attention::<&Tensor>(q, k, v, None, dropout, causal, Some(scale), groups > 1)
        }
    }
}

/// Attention whose scores are soft-capped before the mask, `cap * tanh(scores / cap)`
/// (Gemma 2): SDPA has no such option, so this is transformers' eager computation, with
/// dropout, and as there the mask is added as the dtype's lowest value (a query with no
/// key left, a padding position past a window, averages every value, where SDPA gives
/// zeros).
pub fn soft_capped_attention(
    [q, k, v]: [&Tensor; 3],
    mask: &Mask,
    dropout: f64,
    scale: f64,
    groups: i64,
    cap: f64,
) -> Tensor {
    let weights = attention_weights(q, k, mask, scale, groups, Some(cap), Masked::Lowest);
    let weights = if dropout > 0.0 { weights.dropout(dropout, true) } else { weights };
    weights.matmul(&repeat_kv(v, groups))
}

/// transformers' eager attention: softmax(q k^T * scale + mask) v, in float32 for the
/// softmax, zeros for a query with no key (the oracle for SDPA and for any fused kernel;
/// no dropout).
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask, scale: f64, groups: i64) -> Tensor {
    attention_weights(q, k, mask, scale, groups, None, Masked::NegativeInfinity).matmul(&repeat_kv(v, groups))
}

/// What a masked-out score becomes.
#[derive(Clone, Copy)]
enum Masked {
    /// -inf, and a query with no key gets zeros (SDPA's result).
    NegativeInfinity,
    /// The dtype's lowest value (transformers' eager mask).
    Lowest,
}

/// The attention probabilities [B, H, T, T] in q's dtype, with the scores soft-capped
/// where `cap` says.
fn attention_weights(
    q: &Tensor,
    k: &Tensor,
    mask: &Mask,
    scale: f64,
    groups: i64,
    cap: Option<f64>,
    masked: Masked,
) -> Tensor {
    let k = repeat_kv(k, groups);
    let scores = q.matmul(&k.transpose(-2, -1)) * scale;
    let scores = match cap {
        Some(cap) => (scores / cap).tanh() * cap,
        None => scores,
    };
    let length = scores.size()[3];
    let allowed = match mask {
        Mask::All => None,
        Mask::Causal => Some(Tensor::ones([length, length], (Kind::Bool, q.device())).tril(0)),
        Mask::Explicit(mask) => Some(mask.shallow_clone()),
    };
    let fill = match (masked, q.kind()) {
        (Masked::NegativeInfinity, _) => f64::NEG_INFINITY,
        (Masked::Lowest, Kind::BFloat16) => -3.3895313892515355e38,
        (Masked::Lowest, Kind::Half) => -65504.0,
        (Masked::Lowest, Kind::Double) => f64::MIN,
        (Masked::Lowest, _) => f32::MIN as f64,
    };
    let scores = match allowed {
        Some(allowed) => scores.masked_fill(&allowed.logical_not(), fill),
        None => scores,
    };
    scores.softmax(-1, Kind::Float).nan_to_num(0.0, None, None).to_kind(q.kind())
}

/// [B, T, H*D] -> [B, H, T, D].
pub fn split_heads(x: &Tensor, head_dim: i64) -> Tensor {
    let (b, t, _) = x.size3().expect("[batch, time, width]");
    x.view([b, t, -1, head_dim]).transpose(1, 2)
}

/// [B, H, T, D] -> [B, T, H*D].
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, _, t, _) = x.size4().expect("[batch, heads, time, dim]");
    x.transpose(1, 2).reshape([b, t, -1])
}

/// Each key/value head repeated for the query heads that share it (grouped-query attention).
fn repeat_kv(x: &Tensor, times: i64) -> Tensor {
    if times == 1 {
        return x.shallow_clone();
    }
    let (b, h, t, d) = x.size4().expect("[batch, heads, time, dim]");
    x.unsqueeze(2).expand([b, h, times, t, d], false).reshape([b, h * times, t, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn a_sliding_window_sees_itself_and_the_keys_just_before() {
        let ids = Tensor::zeros([1, 5], (Kind::Int64, Device::Cpu));
        let Mask::Explicit(mask) = Mask::new(&ids, None, true, Some(2)) else { panic!("the window acts") };
        let rows = Vec::<Vec<i64>>::try_from(mask.to_kind(Kind::Int64).view([5, 5])).unwrap();
        assert_eq!(rows[0], [1, 0, 0, 0, 0]);
        assert_eq!(rows[3], [0, 0, 1, 1, 0]);
        // A window as long as the sequence does not act: SDPA's causal kernel.
        assert!(matches!(Mask::new(&ids, None, true, Some(5)), Mask::Causal));
    }

    #[test]
    fn sdpa_equals_eager_attention_for_every_mask_and_grouped_heads() {
        let _generator = crate::engine::rng::lock_generator();
        let q = Tensor::randn([2, 4, 6, 8], (Kind::Float, Device::Cpu));
        let (k, v) = (
            Tensor::randn([2, 2, 6, 8], (Kind::Float, Device::Cpu)),
            Tensor::randn([2, 2, 6, 8], (Kind::Float, Device::Cpu)),
        );
        let padding = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]).view([2, 6]);
        let ids = padding.zeros_like();
        let masks = [
            Mask::All,
            Mask::Causal,
            Mask::new(&ids, Some(&padding), true, None),
            Mask::new(&ids, Some(&padding), false, None),
            Mask::new(&ids, Some(&padding), true, Some(2)),
            Mask::new(&ids, None, true, Some(3)),
        ];
        for mask in masks {
            let fast = attention(&q, &k, &v, &mask, 0.0, 0.35, 2);
            let eager = attention_reference(&q, &k, &v, &mask, 0.35, 2);
            let difference = (fast - eager).abs().max().double_value(&[]);
            assert!(difference < 1e-5, "{mask:?}: {difference}");
        }
    }

    #[test]
    fn a_soft_cap_bounds_the_scores_and_a_wide_one_changes_nothing() {
        let _generator = crate::engine::rng::lock_generator();
        let q = Tensor::randn([1, 2, 5, 4], (Kind::Float, Device::Cpu)) * 10.0;
        let (k, v) = (
            Tensor::randn([1, 2, 5, 4], (Kind::Float, Device::Cpu)),
            Tensor::randn([1, 2, 5, 4], (Kind::Float, Device::Cpu)),
        );
        let plain = attention_reference(&q, &k, &v, &Mask::Causal, 0.5, 1);
        let wide = soft_capped_attention([&q, &k, &v], &Mask::Causal, 0.0, 0.5, 1, 1e6);
        assert!((&plain - wide).abs().max().double_value(&[]) < 1e-5);
        // With a cap of 1e-6 every score is nearly 0: each query averages the keys it sees.
        let flat = soft_capped_attention([&q, &k, &v], &Mask::Causal, 0.0, 0.5, 1, 1e-6);
        let counts = Tensor::arange_start(1, 6, (Kind::Float, Device::Cpu)).view([1, 1, 5, 1]);
        let averages = v.cumsum(2, Kind::Float) / counts;
        assert!((flat - averages).abs().max().double_value(&[]) < 1e-4);
    }
}
