//! The language-model loss without the full logits: cross entropy of the head over the
//! last hidden states, a chunk of positions at a time (the "fused linear cross entropy" of
//! Liger-Kernel and Apple's Cut Cross-Entropy, here in plain libtorch calls). The host's
//! built-in loss runs it, and so can a plugin loss that takes hidden states
//! ([`Loss::takes_hidden_states`](crate::Loss::takes_hidden_states)): both the same code.
//!
//! A causal language model's logits are [tokens, vocabulary] floats; with their softmax
//! and gradient they are the largest activations of a small or mid-sized model at long
//! sequences. Here each chunk's logits live only while its loss and its gradients with
//! respect to the hidden states and the head are computed (in the forward pass, without a
//! graph); the returned loss carries those gradients to autograd, so the backward pass
//! needs no logits at all. Positions whose label is -100 are skipped altogether.

use tch::{Kind, Tensor};

/// Logits elements per chunk (16 MB in float32): big enough for efficient matrix products,
/// small enough that the chunk does not grow with the batch.
const CHUNK_ELEMENTS: i64 = 1 << 22;

/// What the loss does to the head's logits besides the cross entropy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSettings {
    /// HF's LabelSmoother: the target puts smoothing / vocab on every token.
    pub smoothing: f64,
    /// Logits soft-capped to (-cap, cap) by cap * tanh(logits / cap) before the loss
    /// (Gemma 2's final_logit_softcapping).
    pub soft_cap: Option<f64>,
}

/// Cross entropy of `hidden` [.., width] through the head (`weight` [vocab, width], `bias`)
/// against `labels` [..] (-100 ignored), summed and divided by `num_items`: the value of
/// HF's `ForCausalLMLoss` with `num_items_in_batch` on the head's logits (after the
/// settings' soft cap and with their label smoothing), with the same gradients for the
/// hidden states and the head's trainable parameters.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    labels: &Tensor,
    num_items: i64,
    settings: LossSettings,
) -> Tensor {
    let smoothing = settings.smoothing;
    let width = *hidden.size().last().expect("hidden states have a width");
    let vocab = weight.size()[0];
    let rows = hidden.reshape([-1, width]);
    let labels = labels.reshape([-1]).to_device(rows.device());
    let scale = 1.0 / num_items.max(1) as f64;
    let (value, grad_hidden, grad_weight, grad_bias) = tch::no_grad(|| {
        let kept = labels.ne(-100).nonzero().squeeze_dim(1);
        let (x, y) = (rows.detach().index_select(0, &kept), labels.index_select(0, &kept));
        let chunk = (CHUNK_ELEMENTS / vocab).max(1);
        let mut value = Tensor::zeros([], (Kind::Float, rows.device()));
        let mut grad_x = Vec::new();
        let mut grad_weight = weight.requires_grad().then(|| weight.zeros_like().to_kind(Kind::Float));
        let mut grad_bias = bias.filter(|b| b.requires_grad()).map(|b| b.zeros_like().to_kind(Kind::Float));
        let count = x.size()[0];
        for start in (0..count).step_by(chunk as usize) {
            let length = chunk.min(count - start);
            let (xc, yc) = (x.narrow(0, start, length), y.narrow(0, start, length));
            // As transformers: the head's logits in the model's precision, upcast for the loss.
            let logits = xc.linear(weight, bias).to_kind(Kind::Float);
            // d(capped)/d(logits) = 1 - tanh(logits / cap)^2, applied to the gradient below.
            let (logits, cap_slope) = match settings.soft_cap {
                Some(cap) => {
                    let t = (logits / cap).tanh();
                    let slope = t.square().neg() + 1.0;
                    (t * cap, Some(slope))
                }
                None => (logits, None),
            };
            let log_z = logits.logsumexp([1], true);
            let picked = logits.gather(1, &yc.unsqueeze(1), false);
            // -log p(label), and with smoothing the mean of -log p over the vocabulary.
            value += (&log_z - &picked).sum(Kind::Float) * (1.0 - smoothing);
            if smoothing > 0.0 {
                value += (&log_z - logits.mean_dim(1, true, Kind::Float)).sum(Kind::Float) * smoothing;
            }
            // d(loss)/d(logits) = (softmax - target) / num_items, in place of the logits;
            // the target is the one-hot label, smoothed by smoothing / vocab.
            let mut grad_logits = logits;
            let _ = grad_logits.g_sub_(&log_z).exp_();
            if smoothing > 0.0 {
                let _ = grad_logits.g_sub_scalar_(smoothing / vocab as f64);
            }
            let _ = grad_logits.scatter_add_(1, &yc.unsqueeze(1), &Tensor::full_like(&picked, smoothing - 1.0));
            let _ = grad_logits.g_mul_scalar_(scale);
            if let Some(slope) = &cap_slope {
                let _ = grad_logits.g_mul_(slope);
            }
            let grad_logits = grad_logits.to_kind(weight.kind());
            grad_x.push(grad_logits.matmul(weight).to_kind(Kind::Float));
            if let Some(g) = grad_weight.as_mut() {
                *g += grad_logits.tr().matmul(&xc.to_kind(weight.kind())).to_kind(Kind::Float);
            }
            if let Some(g) = grad_bias.as_mut() {
                *g += grad_logits.sum_dim_intlist([0].as_slice(), false, Kind::Float);
            }
        }
        let mut grad_rows = Tensor::zeros([rows.size()[0], width], (Kind::Float, rows.device()));
        if count > 0 {
            let _ = grad_rows.index_copy_(0, &kept, &Tensor::cat(&grad_x, 0));
        }
        (value * scale, grad_rows, grad_weight, grad_bias)
    });
    // A loss whose value is `value` and whose gradients are the ones computed above:
    // surrogate - surrogate.detach() is zero and carries the surrogate's gradients.
    let mut terms = vec![(rows.to_kind(Kind::Float) * grad_hidden).sum(Kind::Float)];
    if let Some(g) = grad_weight {
        terms.push((weight.to_kind(Kind::Float) * g).sum(Kind::Float));
    }
    if let (Some(b), Some(g)) = (bias, grad_bias) {
        terms.push((b.to_kind(Kind::Float) * g).sum(Kind::Float));
    }
    let surrogate = Tensor::stack(&terms, 0).sum(Kind::Float);
    &surrogate - surrogate.detach() + value
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Reduction};

    /// The full logits' cross entropy, through autograd.
    fn reference(
        hidden: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        labels: &Tensor,
        items: i64,
        settings: LossSettings,
    ) -> Tensor {
        let smoothing = settings.smoothing;
        let logits = hidden.linear(weight, bias);
        let logits = match settings.soft_cap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        };
        let vocab = weight.size()[0];
        let flat = labels.reshape([-1]);
        logits.reshape([-1, vocab]).cross_entropy_loss::<Tensor>(&flat, None, Reduction::Sum, -100, smoothing)
            / items as f64
    }

    fn leaves(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)
    }

    #[test]
    fn loss_and_gradients_equal_cross_entropy_over_the_full_logits() {
        tch::manual_seed(3);
        // 3 x 700 positions over a vocabulary of 9000: several chunks, a short last one.
        let (hidden, weight, bias) = (leaves(&[3, 700, 16]), leaves(&[9000, 16]), leaves(&[9000]));
        let labels = Tensor::randint(9000, [3, 700], (Kind::Int64, Device::Cpu));
        let _ = labels.narrow(1, 690, 10).fill_(-100);
        let items = 2 * 700;
        let cases = [(0.0, None), (0.1, None), (0.0, Some(3.0)), (0.1, Some(3.0))];
        for settings in cases.map(|(smoothing, soft_cap)| LossSettings { smoothing, soft_cap }) {
            let expected = reference(&hidden, &weight, Some(&bias), &labels, items, settings);
            let expected_grads = Tensor::run_backward(&[&expected], &[&hidden, &weight, &bias], false, false);
            let got = linear_cross_entropy(&hidden, &weight, Some(&bias), &labels, items, settings);
            let grads = Tensor::run_backward(&[&got], &[&hidden, &weight, &bias], false, false);
            let (a, b) = (got.double_value(&[]), expected.double_value(&[]));
            assert!((a - b).abs() < 1e-5 * b.abs(), "{settings:?}: {a} vs {b}");
            for (g, e) in grads.iter().zip(&expected_grads) {
                let diff = (g - e).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{settings:?}: gradient differs by {diff}");
            }
            // Ignored positions get no gradient.
            assert_eq!(grads[0].narrow(1, 690, 10).abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
    }

    #[test]
    fn a_frozen_head_gets_no_gradient_and_all_ignored_labels_give_zero() {
        let (hidden, weight) = (leaves(&[2, 5, 4]), Tensor::randn([11, 4], (Kind::Float, Device::Cpu)));
        let labels = Tensor::full([2, 5], -100, (Kind::Int64, Device::Cpu));
        let loss = linear_cross_entropy(&hidden, &weight, None, &labels, 0, LossSettings::default());
        assert_eq!(loss.double_value(&[]), 0.0);
        loss.backward();
        assert_eq!(hidden.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(!weight.grad().defined());
    }
}
