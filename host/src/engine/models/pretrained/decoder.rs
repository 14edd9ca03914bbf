//! Llama, Mistral and Qwen2, ported from transformers: pre-norm decoder layers with
//! RMSNorm, rotary position embeddings, grouped-query attention and a gated MLP; with a
//! language-model head (`ForCausalLM`) or a classifier on the last non-padding token
//! (`ForSequenceClassification`).

use std::f64::consts::PI;

use tch::{nn, Device, Kind, Tensor};

use super::arch::{HiddenAndHead, Network};
use super::checkpointing::{Blocks, Context, Recompute};
use super::config::{Common, DecoderConfig, Rope, RopeScaling};
use super::layers::{activate, attend, last_token, merge_heads, pick_rows, split_heads, Mask};
use super::layers::{Embedding, Linear, RmsNorm};
use super::params::{Need, ParamSource};
use super::Head;

/// Which attention projections carry biases (the architecture's rule).
#[derive(Debug, Clone, Copy)]
pub struct AttentionBiases {
    /// q, k and v.
    pub qkv: bool,
    /// o.
    pub output: bool,
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

#[derive(Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// The decoder and its head.
#[derive(Debug)]
pub struct Decoder {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// The language-model head [vocab, hidden] (the embedding's weight when tied).
    lm_head: Option<Linear>,
    score: Option<Linear>,
    inv_freq: Tensor,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    act: String,
    attention_dropout: f64,
    /// The token the classifier's "last token" rule skips.
    pad: Option<i64>,
    recompute: Recompute,
}

impl Decoder {
    pub fn new(
        src: &ParamSource,
        root: &nn::Path,
        common: &Common,
        config: &DecoderConfig,
        biases: AttentionBiases,
        head: &Head,
        checkpointing: bool,
    ) -> Result<Self, String> {
        let base = root / "model";
        let (hidden, heads, kv_heads, head_dim) =
            (config.hidden_size, config.num_attention_heads, config.kv_heads(), config.head_dim());
        let (qkv_bias, o_bias) = (biases.qkv, biases.output);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let path = &base / "layers" / i;
                let attn = &path / "self_attn";
                let mlp = &path / "mlp";
                let (inner, bias) = (config.intermediate_size, config.mlp_bias);
                let linear =
                    |p: &nn::Path, inputs, outputs, bias| Linear::new(src, p, inputs, outputs, bias, Need::Required);
                Layer {
                    input_layernorm: RmsNorm::new(src, &(&path / "input_layernorm"), hidden, config.rms_norm_eps),
                    self_attn: Attention {
                        q_proj: linear(&(&attn / "q_proj"), hidden, heads * head_dim, qkv_bias),
                        k_proj: linear(&(&attn / "k_proj"), hidden, kv_heads * head_dim, qkv_bias),
                        v_proj: linear(&(&attn / "v_proj"), hidden, kv_heads * head_dim, qkv_bias),
                        o_proj: linear(&(&attn / "o_proj"), heads * head_dim, hidden, o_bias),
                    },
                    post_attention_layernorm: RmsNorm::new(
                        src,
                        &(&path / "post_attention_layernorm"),
                        hidden,
                        config.rms_norm_eps,
                    ),
                    mlp: Mlp {
                        gate_proj: linear(&(&mlp / "gate_proj"), hidden, inner, bias),
                        up_proj: linear(&(&mlp / "up_proj"), hidden, inner, bias),
                        down_proj: linear(&(&mlp / "down_proj"), inner, hidden, bias),
                    },
                }
            })
            .collect();
        let embed_tokens =
            Embedding::new(src, &(&base / "embed_tokens"), common.vocab_size, hidden, common.pad_token_id);
        let norm = RmsNorm::new(src, &(&base / "norm"), hidden, config.rms_norm_eps);
        let (lm_head, score, pad) = match head {
            Head::CausalLm if config.tie_word_embeddings => (Some(Linear::tied(&embed_tokens.weight)), None, None),
            Head::CausalLm => {
                let head = Linear::new(src, &(root / "lm_head"), hidden, common.vocab_size, false, Need::Head);
                (Some(head), None, None)
            }
            Head::SequenceClassification { num_labels, pad } => {
                (None, Some(Linear::new(src, &(root / "score"), hidden, *num_labels, false, Need::Head)), *pad)
            }
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            score,
            inv_freq: inverse_frequencies(&config.rope()?, head_dim, root.device()),
            heads,
            kv_heads,
            head_dim,
            act: config.hidden_act.clone(),
            attention_dropout: config.attention_dropout,
            pad,
            recompute: Recompute::new(checkpointing),
        })
    }

    /// The last hidden states [B, T, hidden] for token ids [B, T].
    fn hidden(&self, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let t = ids.size()[1];
        let x = self.embed_tokens.forward_input(ids, train);
        let rotary = Some(rotary(&self.inv_freq, t, x.kind()));
        let context = Context { mask: Mask::new(mask, true), rotary, train };
        self.norm.forward(&self.recompute.run(self, x, context))
    }
}

impl Network for Decoder {
    fn input_embeddings(&mut self) -> &mut Embedding {
        &mut self.embed_tokens
    }

    fn hidden_and_head(&self, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> Option<HiddenAndHead<'_>> {
        let head = self.lm_head.as_ref().filter(|head| head.lora.is_none())?;
        let hidden = self.hidden(ids, mask, train);
        Some(HiddenAndHead { hidden, weight: &head.weight, bias: head.bias.as_ref() })
    }

    fn logits(&self, ids: &Tensor, mask: Option<&Tensor>, _: Option<&Tensor>, train: bool) -> Tensor {
        let hidden = self.hidden(ids, mask, train);
        match (&self.lm_head, &self.score) {
            (Some(head), _) => head.forward(&hidden, train),
            (None, Some(score)) => score.forward(&pick_rows(&hidden, &last_token(ids, self.pad)), train),
            (None, None) => unreachable!("a decoder has a head"),
        }
    }

    fn backward_blocks(&self) -> anyhow::Result<()> {
        self.recompute.backward(self)
    }
}

impl Blocks for Decoder {
    fn count(&self) -> usize {
        self.layers.len()
    }

    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor {
        let layer = &self.layers[index];
        let train = context.train;
        let (cos, sin) = context.rotary.as_ref().expect("decoders have rotary positions");
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let scale = (self.head_dim as f64).powf(-0.5);
        let h = layer.input_layernorm.forward(x);
        let attn = &layer.self_attn;
        let q = apply_rotary(&split_heads(&attn.q_proj.forward(&h, train), self.head_dim), cos, sin);
        let k = apply_rotary(&split_heads(&attn.k_proj.forward(&h, train), self.head_dim), cos, sin);
        let v = split_heads(&attn.v_proj.forward(&h, train), self.head_dim);
        let out = attend(&q, &k, &v, &context.mask, dropout, scale, self.heads / self.kv_heads);
        let x = x + attn.o_proj.forward(&merge_heads(&out), train);
        let h = layer.post_attention_layernorm.forward(&x);
        let mlp = &layer.mlp;
        let gated = activate(&self.act, &mlp.gate_proj.forward(&h, train)) * mlp.up_proj.forward(&h, train);
        x + mlp.down_proj.forward(&gated, train)
    }
}

/// RoPE's inverse frequencies [head_dim / 2], in float32 as transformers computes them.
fn inverse_frequencies(rope: &Rope, dim: i64, device: Device) -> Tensor {
    let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim as f64;
    let inv_freq = Tensor::pow_scalar(rope.theta, &exponents).reciprocal();
    match rope.scaling {
        RopeScaling::None => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / factor,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            let wavelen = inv_freq.reciprocal() * (2.0 * PI);
            let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / factor));
            let smooth = (wavelen.reciprocal() * old - low_freq_factor) / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
            let medium = wavelen.ge(high_freq_wavelen).logical_and(&wavelen.le(low_freq_wavelen));
            smoothed.where_self(&medium, &scaled)
        }
    }
}

/// cos and sin [1, 1, T, head_dim] for positions 0..T, in `kind`.
fn rotary(inv_freq: &Tensor, length: i64, kind: Kind) -> (Tensor, Tensor) {
    let positions = Tensor::arange(length, (Kind::Float, inv_freq.device()));
    let freqs = positions.outer(inv_freq);
    let emb = Tensor::cat(&[&freqs, &freqs], -1).view([1, 1, length, -1]);
    (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
}

/// x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
    x * cos + rotated * sin
}
