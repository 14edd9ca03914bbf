//! The Llama-style decoder (Llama, Mistral, Qwen2), ported from transformers: pre-norm
//! layers with RMSNorm, rotary position embeddings, grouped-query attention and a gated
//! MLP, each layer shaped by the [`LayerSpec`] its architecture fills in; with a
//! language-model head (`ForCausalLM`) or a classifier on the last non-padding token
//! (`ForSequenceClassification`).

use tch::{nn, Tensor};

use super::arch::Network;
use super::checkpointing::{Blocks, Context, Recompute};
use super::config::{Common, DecoderConfig};
use super::layers::{last_token, pick_rows};
use super::layers::{Embedding, Linear, RmsNorm};
use super::params::{Need, ParamSource};
use super::Head;
use crate::engine::models::HeadInput;
use crate::engine::ops::activation::{gated, Activation};
use crate::engine::ops::attention::{attention, merge_heads, split_heads, Mask};
use crate::engine::ops::rope::{apply_rotary, RopeTables};

/// Which attention projections carry biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionBiases {
    /// q, k and v.
    pub qkv: bool,
    /// o.
    pub output: bool,
}

/// One decoder layer's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub biases: AttentionBiases,
    /// The gated MLP's activation: down(act(gate(x)) * up(x)).
    pub activation: Activation,
    /// How many positions back a query sees, itself included (None: every earlier one).
    pub window: Option<i64>,
    /// Which of the model's RoPE frequency sets the layer uses.
    pub rope: usize,
    /// The attention scale.
    pub scale: f64,
}

impl LayerSpec {
    /// Llama's layer, from config.json: biases where attention_bias says, no window.
    pub fn llama(config: &DecoderConfig) -> Result<Self, String> {
        Ok(Self {
            biases: AttentionBiases { qkv: config.attention_bias, output: config.attention_bias },
            activation: config.activation()?,
            window: None,
            rope: 0,
            scale: (config.head_dim() as f64).powf(-0.5),
        })
    }
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
    spec: LayerSpec,
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
    /// RoPE's inverse frequencies, one set per [`LayerSpec::rope`] id.
    inv_freqs: Vec<Tensor>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    attention_dropout: f64,
    /// The token the classifier's "last token" rule skips.
    pad: Option<i64>,
    recompute: Recompute,
}

impl Decoder {
    /// `specs` holds one spec per layer (config.json's num_hidden_layers of them).
    pub fn new(
        src: &ParamSource,
        root: &nn::Path,
        common: &Common,
        config: &DecoderConfig,
        specs: Vec<LayerSpec>,
        head: &Head,
        checkpointing: bool,
    ) -> Result<Self, String> {
        let base = root / "model";
        let (hidden, heads, kv_heads, head_dim) =
            (config.hidden_size, config.num_attention_heads, config.kv_heads(), config.head_dim());
        let eps = config.rms_norm_eps;
        let layers = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let path = &base / "layers" / i as i64;
                let attn = &path / "self_attn";
                let mlp = &path / "mlp";
                let (inner, bias) = (config.intermediate_size, config.mlp_bias);
                let linear =
                    |p: &nn::Path, inputs, outputs, bias| Linear::new(src, p, inputs, outputs, bias, Need::Required);
                let (qkv_bias, o_bias) = (spec.biases.qkv, spec.biases.output);
                Layer {
                    input_layernorm: RmsNorm::new(src, &(&path / "input_layernorm"), hidden, eps),
                    self_attn: Attention {
                        q_proj: linear(&(&attn / "q_proj"), hidden, heads * head_dim, qkv_bias),
                        k_proj: linear(&(&attn / "k_proj"), hidden, kv_heads * head_dim, qkv_bias),
                        v_proj: linear(&(&attn / "v_proj"), hidden, kv_heads * head_dim, qkv_bias),
                        o_proj: linear(&(&attn / "o_proj"), heads * head_dim, hidden, o_bias),
                    },
                    post_attention_layernorm: RmsNorm::new(src, &(&path / "post_attention_layernorm"), hidden, eps),
                    mlp: Mlp {
                        gate_proj: linear(&(&mlp / "gate_proj"), hidden, inner, bias),
                        up_proj: linear(&(&mlp / "up_proj"), hidden, inner, bias),
                        down_proj: linear(&(&mlp / "down_proj"), inner, hidden, bias),
                    },
                    spec,
                }
            })
            .collect();
        let embed_tokens =
            Embedding::new(src, &(&base / "embed_tokens"), common.vocab_size, hidden, common.pad_token_id);
        let norm = RmsNorm::new(src, &(&base / "norm"), hidden, eps);
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
            inv_freqs: vec![config.rope()?.inverse_frequencies(head_dim, root.device())],
            heads,
            kv_heads,
            head_dim,
            attention_dropout: config.attention_dropout,
            pad,
            recompute: Recompute::new(checkpointing),
        })
    }

    /// The last hidden states [B, T, hidden] for token ids [B, T].
    fn hidden(&self, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let t = ids.size()[1];
        let x = self.embed_tokens.forward_input(ids, train);
        // Once per forward pass: RoPE's tables for each frequency set, and the mask for
        // each attention window some layer uses.
        let rotary = self.inv_freqs.iter().map(|inv_freq| RopeTables::new(inv_freq, t, x.kind())).collect();
        let mut windows: Vec<Option<i64>> = self.layers.iter().map(|l| l.spec.window).collect();
        windows.sort_unstable();
        windows.dedup();
        let masks = windows.into_iter().map(|w| (w, Mask::new(ids, mask, true, w))).collect();
        let context = Context { masks, rotary, train };
        self.norm.forward(&self.recompute.run(self, x, context))
    }
}

impl Network for Decoder {
    fn input_embeddings(&mut self) -> &mut Embedding {
        &mut self.embed_tokens
    }

    fn head_input(&self, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> Option<HeadInput> {
        let head = self.lm_head.as_ref()?;
        Some(head.head_input(self.hidden(ids, mask, train), train))
    }

    fn logits(&self, ids: &Tensor, mask: Option<&Tensor>, _: Option<&Tensor>, train: bool) -> Tensor {
        let hidden = self.hidden(ids, mask, train);
        match (&self.lm_head, &self.score) {
            (Some(head), _) => head.forward(&hidden, train),
            (None, Some(score)) => score.forward(&pick_rows(&hidden, &last_token(ids, self.pad)), train),
            (None, None) => unreachable!("a decoder has a head"),
        }
    }
}

impl Blocks for Decoder {
    fn count(&self) -> usize {
        self.layers.len()
    }

    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor {
        let layer = &self.layers[index];
        let (spec, train) = (&layer.spec, context.train);
        let rotary = &context.rotary[spec.rope];
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let h = layer.input_layernorm.forward(x);
        let attn = &layer.self_attn;
        let q = apply_rotary(&split_heads(&attn.q_proj.forward(&h, train), self.head_dim), rotary);
        let k = apply_rotary(&split_heads(&attn.k_proj.forward(&h, train), self.head_dim), rotary);
        let v = split_heads(&attn.v_proj.forward(&h, train), self.head_dim);
        let groups = self.heads / self.kv_heads;
        let out = attention(&q, &k, &v, context.mask(spec.window), dropout, spec.scale, groups);
        let x = x + attn.o_proj.forward(&merge_heads(&out), train);
        let h = layer.post_attention_layernorm.forward(&x);
        let mlp = &layer.mlp;
        let inner = gated(spec.activation, &mlp.gate_proj.forward(&h, train), &mlp.up_proj.forward(&h, train));
        x + mlp.down_proj.forward(&inner, train)
    }
}
