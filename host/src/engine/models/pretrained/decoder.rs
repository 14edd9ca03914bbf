//! The Llama-style decoder (Llama, Mistral, Qwen2 and 3, Gemma 1 and 2, Phi-3), ported
//! from transformers: layers with RMSNorm, rotary position embeddings, grouped-query
//! attention and a gated MLP, each layer shaped by the [`LayerSpec`] its architecture
//! fills in (norm kind, q/k norms, sandwich norms, soft-capping, fused projections,
//! window, RoPE set) and the model by its [`ModelSpec`]; with a language-model head
//! (`ForCausalLM`) or a classifier on the last non-padding token
//! (`ForSequenceClassification`).

use tch::{nn, Tensor};

use super::arch::{Inputs, KvCache, Network};
use super::checkpointing::{Blocks, Context, Recompute};
use super::config::{Common, ConfigError, DecoderConfig};
use super::layers::DecoderHead;
use super::layers::{Embedding, Linear, RmsNorm};
use super::params::{Need, ParamSource};
use super::Head;
use crate::engine::models::HeadInput;
use crate::engine::ops::activation::{gated, Activation};
use crate::engine::ops::attention::{attention, merge_heads, soft_capped_attention, split_heads, Mask};
use crate::engine::ops::norm::NormKind;
use crate::engine::ops::rope::{apply_rotary, Frequencies, Rope, RopeTables};

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
    /// Which of the model's RoPE frequency sets ([`ModelSpec::ropes`]) the layer uses.
    pub rope: usize,
    /// The attention scale.
    pub scale: f64,
    /// How the layer's RMSNorms scale.
    pub norm: NormKind,
    /// An RMSNorm of each query and key head over head_dim, before RoPE (Qwen 3).
    pub qk_norm: bool,
    /// Norms on the attention and MLP outputs as well, before each residual add (Gemma
    /// 2's sandwich: input, post-attention, pre-feedforward and post-feedforward norms).
    pub sandwich_norms: bool,
    /// Attention scores soft-capped, `cap * tanh(scores / cap)` (Gemma 2).
    pub attention_soft_cap: Option<f64>,
    /// q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj`, as the checkpoint
    /// stores them (Phi-3).
    pub fused_projections: bool,
    /// Dropout on the attention and MLP outputs before each residual add (Phi-3's
    /// resid_pdrop).
    pub residual_dropout: f64,
}

impl LayerSpec {
    /// Llama's layer, from config.json: biases where attention_bias says, no window.
    pub fn llama(config: &DecoderConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            biases: AttentionBiases { qkv: config.attention_bias, output: config.attention_bias },
            activation: config.activation()?,
            window: None,
            rope: 0,
            scale: (config.head_dim() as f64).powf(-0.5),
            norm: NormKind::Rms,
            qk_norm: false,
            sandwich_norms: false,
            attention_soft_cap: None,
            fused_projections: false,
            residual_dropout: 0.0,
        })
    }
}

/// What the whole decoder has once: its RoPE frequency sets, the input embedding's scale,
/// the final norm and the logits' soft cap.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// RoPE settings, one per id a [`LayerSpec::rope`] names.
    pub ropes: Vec<Rope>,
    /// How many of each head's dimensions rotate (partial_rotary_factor x head_dim).
    pub rotary_dim: i64,
    /// A factor on the token embeddings (Gemma's sqrt(hidden_size)).
    pub embedding_scale: Option<f64>,
    pub norm: NormKind,
    /// final_logit_softcapping (Gemma 2).
    pub logit_soft_cap: Option<f64>,
}

impl ModelSpec {
    /// Llama's: one RoPE set over whole heads (a partial_rotary_factor is refused: these
    /// ports rotate whole heads), no embedding scale, no cap.
    pub fn llama(config: &DecoderConfig) -> Result<Self, ConfigError> {
        let rotary_dim = config.rotary_dim()?;
        if rotary_dim != config.head_dim() {
            let fraction = rotary_dim as f64 / config.head_dim() as f64;
            return Err(ConfigError::unsupported("partial_rotary_factor", fraction, "of this model_type; phi3 has it"));
        }
        Ok(Self {
            ropes: vec![config.rope()?],
            rotary_dim,
            embedding_scale: None,
            norm: NormKind::Rms,
            logit_soft_cap: None,
        })
    }
}

/// The attention projections: separate, or q, k and v as one product (split after it).
#[derive(Debug)]
enum Projections {
    Separate { q_proj: Linear, k_proj: Linear, v_proj: Linear },
    Fused { qkv_proj: Linear },
}

#[derive(Debug)]
struct Attention {
    projections: Projections,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
}

/// The gated MLP's input projections: separate, or gate and up as one product.
#[derive(Debug)]
enum GateUp {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused { gate_up_proj: Linear },
}

#[derive(Debug)]
struct Mlp {
    gate_up: GateUp,
    down_proj: Linear,
}

/// Norms besides Llama's two: Gemma 2's sandwich.
#[derive(Debug)]
struct Sandwich {
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
}

#[derive(Debug)]
struct Layer {
    spec: LayerSpec,
    input_layernorm: RmsNorm,
    self_attn: Attention,
    /// Llama: the norm before the MLP; with sandwich norms, the norm of the attention's
    /// output (transformers keeps the name for both).
    post_attention_layernorm: RmsNorm,
    sandwich: Option<Sandwich>,
    mlp: Mlp,
}

/// The decoder and its head.
#[derive(Debug)]
pub struct Decoder {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    head: DecoderHead,
    /// RoPE's frequencies, one set per [`LayerSpec::rope`] id.
    inv_freqs: Vec<Frequencies>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    attention_dropout: f64,
    logit_soft_cap: Option<f64>,
    recompute: Recompute,
}

/// A decoder's shape: config.json's sizes, the model's spec and each layer's.
pub struct Shape<'a> {
    pub config: &'a DecoderConfig,
    pub model: ModelSpec,
    pub layers: Vec<LayerSpec>,
}

impl Decoder {
    pub fn new(
        src: &ParamSource,
        root: &nn::Path,
        common: &Common,
        shape: Shape,
        head: &Head,
        checkpointing: bool,
    ) -> Result<Self, ConfigError> {
        let Shape { config, model, layers: specs } = shape;
        let base = root / "model";
        let (hidden, heads, kv_heads, head_dim) =
            (config.hidden_size, config.num_attention_heads, config.kv_heads(), config.head_dim());
        let eps = config.rms_norm_eps;
        let layers = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let path = &base / "layers" / i as i64;
                let (attn, mlp) = (&path / "self_attn", &path / "mlp");
                let (inner, bias) = (config.intermediate_size, config.mlp_bias);
                let linear =
                    |p: &nn::Path, inputs, outputs, bias| Linear::new(src, p, inputs, outputs, bias, Need::Required);
                let norm = |p: &nn::Path, width| RmsNorm::new(src, p, width, eps, spec.norm);
                let (qkv_bias, o_bias) = (spec.biases.qkv, spec.biases.output);
                let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
                // Made in transformers' order, so that errors name the first weight.
                let input_layernorm = norm(&(&path / "input_layernorm"), hidden);
                let projections = if spec.fused_projections {
                    Projections::Fused {
                        qkv_proj: linear(&(&attn / "qkv_proj"), hidden, q_width + 2 * kv_width, qkv_bias),
                    }
                } else {
                    Projections::Separate {
                        q_proj: linear(&(&attn / "q_proj"), hidden, q_width, qkv_bias),
                        k_proj: linear(&(&attn / "k_proj"), hidden, kv_width, qkv_bias),
                        v_proj: linear(&(&attn / "v_proj"), hidden, kv_width, qkv_bias),
                    }
                };
                let gate_up = if spec.fused_projections {
                    GateUp::Fused { gate_up_proj: linear(&(&mlp / "gate_up_proj"), hidden, 2 * inner, bias) }
                } else {
                    GateUp::Separate {
                        gate_proj: linear(&(&mlp / "gate_proj"), hidden, inner, bias),
                        up_proj: linear(&(&mlp / "up_proj"), hidden, inner, bias),
                    }
                };
                Layer {
                    input_layernorm,
                    self_attn: Attention {
                        projections,
                        o_proj: linear(&(&attn / "o_proj"), q_width, hidden, o_bias),
                        q_norm: spec.qk_norm.then(|| norm(&(&attn / "q_norm"), head_dim)),
                        k_norm: spec.qk_norm.then(|| norm(&(&attn / "k_norm"), head_dim)),
                    },
                    post_attention_layernorm: norm(&(&path / "post_attention_layernorm"), hidden),
                    sandwich: spec.sandwich_norms.then(|| Sandwich {
                        pre_feedforward_layernorm: norm(&(&path / "pre_feedforward_layernorm"), hidden),
                        post_feedforward_layernorm: norm(&(&path / "post_feedforward_layernorm"), hidden),
                    }),
                    mlp: Mlp { gate_up, down_proj: linear(&(&mlp / "down_proj"), inner, hidden, bias) },
                    spec,
                }
            })
            .collect();
        let embed_tokens =
            Embedding::new(src, &(&base / "embed_tokens"), common.vocab_size, hidden, common.pad_token_id)
                .scaled(model.embedding_scale);
        let norm = RmsNorm::new(src, &(&base / "norm"), hidden, eps, model.norm);
        let tied = config.tie_word_embeddings.then_some(&embed_tokens.weight);
        let head = DecoderHead::new(src, root, head, hidden, common.vocab_size, tied);
        let inv_freqs = model.ropes.iter().map(|rope| rope.frequencies(model.rotary_dim, root.device())).collect();
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            head,
            inv_freqs,
            heads,
            kv_heads,
            head_dim,
            attention_dropout: config.attention_dropout,
            logit_soft_cap: model.logit_soft_cap,
            recompute: Recompute::new(checkpointing),
        })
    }

    /// The last hidden states [B, T, hidden] for token ids [B, T].
    fn hidden(&self, inputs: &Inputs, train: bool) -> Tensor {
        let ids = inputs.ids;
        let t = ids.size()[1];
        let x = self.embed_tokens.forward_input(ids, train);
        // Once per forward pass: RoPE's tables for each frequency set, and the mask for
        // each attention window some layer uses.
        let rotary = self
            .inv_freqs
            .iter()
            .map(|set| match inputs.positions {
                Some(positions) => RopeTables::at(set.for_length(t), positions, x.kind(), set.attention_factor),
                None => RopeTables::scaled(set.for_length(t), t, x.kind(), set.attention_factor),
            })
            .collect();
        let masks = self.windows().into_iter().map(|w| (w, inputs.attention_mask(true, w))).collect();
        let context = Context { masks, rotary, train };
        self.norm.forward(&self.recompute.run(self, x, context))
    }

    /// The attention windows the layers use, each once (None: no window).
    fn windows(&self) -> Vec<Option<i64>> {
        let mut windows: Vec<Option<i64>> = self.layers.iter().map(|l| l.spec.window).collect();
        windows.sort_unstable();
        windows.dedup();
        windows
    }

    /// Queries, keys and values [B, heads, T, head_dim] of the normed input `h`.
    fn qkv(&self, attn: &Attention, h: &Tensor, train: bool) -> (Tensor, Tensor, Tensor) {
        let (q, k, v) = match &attn.projections {
            Projections::Separate { q_proj, k_proj, v_proj } => {
                (q_proj.forward(h, train), k_proj.forward(h, train), v_proj.forward(h, train))
            }
            Projections::Fused { qkv_proj } => {
                let qkv = qkv_proj.forward(h, train);
                let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
                let parts = qkv.split_with_sizes([q_width, kv_width, kv_width], -1);
                let [q, k, v]: [Tensor; 3] = parts.try_into().expect("three parts");
                (q, k, v)
            }
        };
        let head_norm = |x: Tensor, norm: &Option<RmsNorm>| match norm {
            // Over head_dim, before the heads move in front of time (as transformers).
            Some(norm) => {
                let (b, t, _) = x.size3().expect("[batch, time, width]");
                norm.forward(&x.view([b, t, -1, self.head_dim])).transpose(1, 2)
            }
            None => split_heads(&x, self.head_dim),
        };
        (head_norm(q, &attn.q_norm), head_norm(k, &attn.k_norm), split_heads(&v, self.head_dim))
    }
}

/// The gated MLP over the normed input `h`.
fn mlp(mlp: &Mlp, activation: Activation, h: &Tensor, train: bool) -> Tensor {
    let inner = match &mlp.gate_up {
        GateUp::Separate { gate_proj, up_proj } => {
            gated(activation, &gate_proj.forward(h, train), &up_proj.forward(h, train))
        }
        GateUp::Fused { gate_up_proj } => {
            let both = gate_up_proj.forward(h, train).chunk(2, -1);
            gated(activation, &both[0], &both[1])
        }
    };
    mlp.down_proj.forward(&inner, train)
}

impl Network for Decoder {
    fn input_embeddings(&mut self) -> &mut Embedding {
        &mut self.embed_tokens
    }

    fn head_input(&self, inputs: &Inputs, train: bool) -> Option<HeadInput> {
        let head = self.head.language_model()?;
        let input = head.head_input(self.hidden(inputs, train), train);
        Some(HeadInput { soft_cap: self.logit_soft_cap, ..input })
    }

    fn reads_packed_positions(&self) -> bool {
        true
    }

    fn logits_after(&self, ids: &Tensor, cache: &mut KvCache) -> Option<Tensor> {
        self.head.language_model()?;
        let (start, new) = (cache.length, ids.size()[1]);
        let device = ids.device();
        let x = self.embed_tokens.forward_input(ids, false);
        let positions = cache.positions(new, device);
        let rotary = self
            .inv_freqs
            .iter()
            .map(|set| RopeTables::at(set.for_length(start + new), &positions, x.kind(), set.attention_factor))
            .collect();
        let masks = self.windows().into_iter().map(|w| (w, Mask::after(start, new, w, device))).collect();
        let context = Context { masks, rotary, train: false };
        let x = cache.run(self.layers.len(), x, |index, x, slot| self.layer(index, x, &context, Some(slot)));
        let logits = self.head.logits(&self.norm.forward(&x), ids, false);
        Some(match self.logit_soft_cap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        })
    }

    fn logits(&self, inputs: &Inputs, train: bool) -> Tensor {
        let logits = self.head.logits(&self.hidden(inputs, train), inputs.ids, train);
        match (self.logit_soft_cap, &self.head) {
            (Some(cap), DecoderHead::LanguageModel(_)) => (logits / cap).tanh() * cap,
            _ => logits,
        }
    }
}

impl Blocks for Decoder {
    fn count(&self) -> usize {
        self.layers.len()
    }

    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor {
        self.layer(index, x, context, None)
    }
}

impl Decoder {
    /// Layer `index` over `x`; with a KV cache slot, the keys and values of earlier
    /// positions come before `x`'s own, which join them.
    fn layer(
        &self,
        index: usize,
        x: &Tensor,
        context: &Context,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let layer = &self.layers[index];
        let (spec, train) = (&layer.spec, context.train);
        let rotary = &context.rotary[spec.rope];
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let (q, k, v) = self.qkv(&layer.self_attn, &layer.input_layernorm.forward(x), train);
        let (q, k) = (apply_rotary(&q, rotary), apply_rotary(&k, rotary));
        let (k, v) = KvCache::extend(cache, k, v);
        let (groups, mask) = (self.heads / self.kv_heads, context.mask(spec.window));
        let out = match spec.attention_soft_cap {
            Some(cap) => soft_capped_attention([&q, &k, &v], mask, dropout, spec.scale, groups, cap),
            None => attention(&q, &k, &v, mask, dropout, spec.scale, groups),
        };
        let attended = layer.self_attn.o_proj.forward(&merge_heads(&out), train);
        let residual = |y: Tensor| y.dropout(spec.residual_dropout, train && spec.residual_dropout > 0.0);
        match &layer.sandwich {
            None => {
                let x = x + residual(attended);
                let h = layer.post_attention_layernorm.forward(&x);
                &x + residual(mlp(&layer.mlp, spec.activation, &h, train))
            }
            Some(sandwich) => {
                let x = x + residual(layer.post_attention_layernorm.forward(&attended));
                let h = sandwich.pre_feedforward_layernorm.forward(&x);
                let out = sandwich.post_feedforward_layernorm.forward(&mlp(&layer.mlp, spec.activation, &h, train));
                &x + residual(out)
            }
        }
    }
}
