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

/// The smallest chunk, in logits elements (16 MB in float32): big enough for efficient
/// matrix products.
const MIN_CHUNK_ELEMENTS: i64 = 1 << 22;

/// What the loss does to the head's logits besides the cross entropy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSettings {
    /// HF's LabelSmoother: the target puts smoothing / vocab on every token.
    pub smoothing: f64,
    /// Logits soft-capped to (-cap, cap) by cap * tanh(logits / cap) before the loss
    /// (Gemma 2's final_logit_softcapping).
    pub soft_cap: Option<f64>,
}

/// How the positions whose label is -100 are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ignored {
    /// Only the labelled rows are computed: their number is read from the device.
    Skipped,
    /// Every row is computed and the ignored ones are masked: no read from the device, so
    /// an accelerator's queue never waits for the host.
    Masked,
}

/// Rows per chunk: a chunk's float32 logits no larger than the head's float32 gradient
/// (vocab x width), which the loss holds anyway, and no smaller than the minimum chunk. A
/// batch whose logits fit in that is one chunk.
fn chunk_rows(vocab: i64, width: i64) -> i64 {
    (MIN_CHUNK_ELEMENTS / vocab).max(width).max(1)
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
    // On the CPU the labelled rows are picked (no device to wait for); on an accelerator
    // they are masked, so that the step has no device-to-host read.
    let ignored = if hidden.device().is_cuda() { Ignored::Masked } else { Ignored::Skipped };
    linear_cross_entropy_with(hidden, weight, bias, labels, num_items, settings, ignored)
}

fn linear_cross_entropy_with(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    labels: &Tensor,
    num_items: i64,
    settings: LossSettings,
    ignored: Ignored,
) -> Tensor {
    let smoothing = settings.smoothing;
    let width = *hidden.size().last().expect("hidden states have a width");
    let vocab = weight.size()[0];
    let rows = hidden.reshape([-1, width]);
    let labels = labels.reshape([-1]).to_device(rows.device());
    let scale = 1.0 / num_items.max(1) as f64;
    let (value, grad_hidden, grad_weight, grad_bias) = tch::no_grad(|| {
        let labelled = labels.ne(-100);
        let (x, y, mask, kept) = match ignored {
            Ignored::Skipped => {
                let kept = labelled.nonzero().squeeze_dim(1);
                (rows.detach().index_select(0, &kept), labels.index_select(0, &kept), None, Some(kept))
            }
            Ignored::Masked => {
                let mask = labelled.to_kind(Kind::Float).unsqueeze(1);
                (rows.detach(), labels.masked_fill(&labelled.logical_not(), 0), Some(mask), None)
            }
        };
        let chunk = chunk_rows(vocab, width);
        let count = x.size()[0];
        let mut value = Tensor::zeros([], (Kind::Float, rows.device()));
        let grad_x = Tensor::empty([count, width], (Kind::Float, rows.device()));
        let mut grad_weight = weight.requires_grad().then(|| weight.zeros_like().to_kind(Kind::Float));
        let mut grad_bias = bias.filter(|b| b.requires_grad()).map(|b| b.zeros_like().to_kind(Kind::Float));
        for start in (0..count).step_by(chunk as usize) {
            let length = chunk.min(count - start);
            let (xc, yc) = (x.narrow(0, start, length), y.narrow(0, start, length));
            let mask = mask.as_ref().map(|m| m.narrow(0, start, length));
            // As transformers: the head's logits in the model's precision (autocast's where
            // it is on), upcast for the loss.
            let logits = xc.linear(weight, bias);
            let compute = logits.kind();
            let logits = logits.to_kind(Kind::Float);
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
            let mut per_row = (&log_z - &picked) * (1.0 - smoothing);
            if smoothing > 0.0 {
                per_row += (&log_z - logits.mean_dim(1, true, Kind::Float)) * smoothing;
            }
            if let Some(mask) = &mask {
                per_row *= mask;
            }
            value += per_row.sum(Kind::Float);
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
            if let Some(mask) = &mask {
                let _ = grad_logits.g_mul_(mask);
            }
            let mut rows_out = grad_x.narrow(0, start, length);
            if compute == Kind::Float {
                // Float32 throughout: the products write into the gradients themselves.
                let _ = grad_logits.mm_out(&rows_out, weight);
                if let Some(g) = grad_weight.as_mut() {
                    let _ = g.addmm_(&grad_logits.tr(), &xc);
                }
            } else {
                let grad_logits = grad_logits.to_kind(compute);
                rows_out.copy_(&grad_logits.matmul(weight));
                if let Some(g) = grad_weight.as_mut() {
                    *g += grad_logits.tr().matmul(&xc.to_kind(weight.kind())).to_kind(Kind::Float);
                }
            }
            if let Some(g) = grad_bias.as_mut() {
                *g += grad_logits.sum_dim_intlist([0].as_slice(), false, Kind::Float);
            }
        }
        let grad_rows = match kept {
            Some(kept) => {
                let mut grad_rows = Tensor::zeros([rows.size()[0], width], (Kind::Float, rows.device()));
                if count > 0 {
                    let _ = grad_rows.index_copy_(0, &kept, &grad_x);
                }
                grad_rows
            }
            None => grad_x,
        };
        (value * scale, grad_rows, grad_weight, grad_bias)
    });
    // A loss whose value is `value` and whose gradients are the ones computed above:
    // surrogate - surrogate.detach() is zero and carries the surrogate's gradients. Dot
    // products: no weight-sized temporary in the forward pass.
    let dot = |parameter: &Tensor, gradient: &Tensor| {
        parameter.to_kind(Kind::Float).reshape([-1]).dot(&gradient.reshape([-1]))
    };
    let mut terms = vec![dot(&rows, &grad_hidden)];
    if let Some(g) = grad_weight {
        terms.push(dot(weight, &g));
    }
    if let (Some(b), Some(g)) = (bias, grad_bias) {
        terms.push(dot(b, &g));
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
            for ignored in [Ignored::Skipped, Ignored::Masked] {
                let got = linear_cross_entropy_with(&hidden, &weight, Some(&bias), &labels, items, settings, ignored);
                let grads = Tensor::run_backward(&[&got], &[&hidden, &weight, &bias], false, false);
                let (a, b) = (got.double_value(&[]), expected.double_value(&[]));
                assert!((a - b).abs() < 1e-5 * b.abs(), "{settings:?} {ignored:?}: {a} vs {b}");
                for (g, e) in grads.iter().zip(&expected_grads) {
                    let diff = (g - e).abs().max().double_value(&[]);
                    assert!(diff < 1e-6, "{settings:?} {ignored:?}: gradient differs by {diff}");
                }
                // Ignored positions get no gradient.
                assert_eq!(grads[0].narrow(1, 690, 10).abs().sum(Kind::Float).double_value(&[]), 0.0);
            }
        }
    }

    #[test]
    fn chunks_are_as_large_as_the_heads_gradient_and_a_small_batch_is_one() {
        // TinyLlama's head (32000 x 2048): 2048 rows a chunk, a batch of 4 x 1024 in two.
        assert_eq!(chunk_rows(32000, 2048), 2048);
        // GPT-2's (50257 x 768): 768 rows; a narrow head keeps the 16 MB minimum.
        assert_eq!(chunk_rows(50257, 768), 768);
        assert_eq!(chunk_rows(9000, 16), (1 << 22) / 9000);
    }

    #[test]
    fn bfloat16_weights_give_the_full_logits_loss_within_bfloat16_rounding() {
        tch::manual_seed(5);
        let hidden = Tensor::randn([2, 40, 16], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
        let weight = Tensor::randn([300, 16], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::randint(300, [2, 40], (Kind::Int64, Device::Cpu));
        let settings = LossSettings::default();
        let logits = hidden.linear::<Tensor>(&weight, None).to_kind(Kind::Float).reshape([-1, 300]);
        let expected =
            logits.cross_entropy_loss::<Tensor>(&labels.reshape([-1]), None, Reduction::Sum, -100, 0.0) / 80.0;
        let expected_grads = Tensor::run_backward(&[&expected], &[&hidden, &weight], false, false);
        for ignored in [Ignored::Skipped, Ignored::Masked] {
            let got = linear_cross_entropy_with(&hidden, &weight, None, &labels, 80, settings, ignored);
            let grads = Tensor::run_backward(&[&got], &[&hidden, &weight], false, false);
            let (a, b) = (got.double_value(&[]), expected.double_value(&[]));
            assert!((a - b).abs() < 1e-5 * b.abs(), "{ignored:?}: {a} vs {b}");
            for (g, e) in grads.iter().zip(&expected_grads) {
                assert_eq!(g.kind(), Kind::BFloat16);
                let scale = e.to_kind(Kind::Float).abs().max().double_value(&[]);
                let diff = (g.to_kind(Kind::Float) - e.to_kind(Kind::Float)).abs().max().double_value(&[]);
                assert!(diff <= 1e-2 * scale, "{ignored:?}: gradient differs by {diff} (largest {scale})");
            }
        }
    }

    #[test]
    fn a_frozen_head_gets_no_gradient_and_all_ignored_labels_give_zero() {
        for ignored in [Ignored::Skipped, Ignored::Masked] {
            let (hidden, weight) = (leaves(&[2, 5, 4]), Tensor::randn([11, 4], (Kind::Float, Device::Cpu)));
            let labels = Tensor::full([2, 5], -100, (Kind::Int64, Device::Cpu));
            let loss = linear_cross_entropy_with(&hidden, &weight, None, &labels, 0, LossSettings::default(), ignored);
            assert_eq!(loss.double_value(&[]), 0.0);
            loss.backward();
            assert_eq!(hidden.grad().abs().sum(Kind::Float).double_value(&[]), 0.0, "{ignored:?}");
            assert!(!weight.grad().defined());
        }
    }
}
