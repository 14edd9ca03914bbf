//! OPT, ported from transformers (`OPTForCausalLM`, `OPTForSequenceClassification`):
//! token embeddings (projected in where narrower than the layers) plus learned positions,
//! counted from the attention mask and offset by 2 as OPT's table is; pre- or post-norm
//! layers of biased attention (queries scaled before the product, as OPT does) and a
//! ReLU MLP; the head over the final LayerNorm (pre-norm models) and project_out.

use tch::{nn, Kind, Tensor};

use super::arch::{Inputs, KvCache, Network};
use super::checkpointing::{Blocks, Context, Recompute};
use super::config::{Common, ConfigError, OptConfig};
use super::layers::DecoderHead;
use super::layers::{Embedding, LayerNorm, Linear};
use super::params::{Need, ParamSource};
use super::Head;
use crate::engine::models::HeadInput;
use crate::engine::ops::activation::Activation;
use crate::engine::ops::attention::{attention, merge_heads, split_heads, Mask};

/// OPT's position table has two rows before position 0.
const POSITION_OFFSET: i64 = 2;

/// nn.LayerNorm's default epsilon, which OPT keeps.
const EPS: f64 = 1e-5;

#[derive(Debug)]
struct Layer {
    self_attn_layer_norm: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    final_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

#[derive(Debug)]
pub struct Opt {
    embed_tokens: Embedding,
    embed_positions: Embedding,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    layers: Vec<Layer>,
    final_layer_norm: Option<LayerNorm>,
    head: DecoderHead,
    head_dim: i64,
    pre_norm: bool,
    act: Activation,
    dropout: f64,
    attention_dropout: f64,
    recompute: Recompute,
}

impl Opt {
    pub fn new(
        src: &ParamSource,
        root: &nn::Path,
        common: &Common,
        config: &OptConfig,
        head: &Head,
        checkpointing: bool,
    ) -> Result<Self, ConfigError> {
        let base = root / "model" / "decoder";
        let (width, embed_width) = (config.hidden_size, config.embedding_width());
        let bias = config.enable_bias;
        let linear = |p: &nn::Path, inputs, outputs, bias| Linear::new(src, p, inputs, outputs, bias, Need::Required);
        let norm = |p: &nn::Path| LayerNorm::new(src, p, width, EPS, Need::Required);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let path = &base / "layers" / i;
                let attn = &path / "self_attn";
                Layer {
                    q_proj: linear(&(&attn / "q_proj"), width, width, bias),
                    k_proj: linear(&(&attn / "k_proj"), width, width, bias),
                    v_proj: linear(&(&attn / "v_proj"), width, width, bias),
                    out_proj: linear(&(&attn / "out_proj"), width, width, bias),
                    self_attn_layer_norm: norm(&(&path / "self_attn_layer_norm")),
                    fc1: linear(&(&path / "fc1"), width, config.ffn_dim, bias),
                    fc2: linear(&(&path / "fc2"), config.ffn_dim, width, bias),
                    final_layer_norm: norm(&(&path / "final_layer_norm")),
                }
            })
            .collect();
        let embed_tokens =
            Embedding::new(src, &(&base / "embed_tokens"), common.vocab_size, embed_width, common.pad_token_id);
        let positions = config.max_position_embeddings + POSITION_OFFSET;
        let embed_positions = Embedding::new(src, &(&base / "embed_positions"), positions, width, None);
        let projected = embed_width != width;
        let project_in = projected.then(|| linear(&(&base / "project_in"), embed_width, width, false));
        let project_out = projected.then(|| linear(&(&base / "project_out"), width, embed_width, false));
        let final_layer_norm = config.final_layer_norm().then(|| norm(&(&base / "final_layer_norm")));
        let tied = config.tie_word_embeddings.then_some(&embed_tokens.weight);
        let head = DecoderHead::new(src, root, head, embed_width, common.vocab_size, tied);
        Ok(Self {
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            head,
            head_dim: width / config.num_attention_heads,
            pre_norm: config.do_layer_norm_before,
            act: config.activation()?,
            dropout: config.dropout,
            attention_dropout: config.attention_dropout,
            recompute: Recompute::new(checkpointing),
        })
    }

    /// The last hidden states [B, T, embedding width] for token ids [B, T].
    fn hidden(&self, inputs: &Inputs, train: bool) -> Tensor {
        let (ids, mask) = (inputs.ids, inputs.mask);
        // Positions count the real tokens: padding before them (left padding) does not
        // move them, and padding itself takes row 1 (position -1 plus the offset). Packed
        // rows bring their own, restarting per example.
        let ones;
        let real = match mask {
            Some(mask) => mask,
            None => {
                ones = ids.ones_like();
                &ones
            }
        };
        let real = real.to_kind(Kind::Int64);
        let positions = match inputs.positions {
            Some(positions) => (positions + 1) * &real - 1 + POSITION_OFFSET,
            None => real.cumsum(1, Kind::Int64) * &real - 1 + POSITION_OFFSET,
        };
        let tokens = self.embed_tokens.forward_input(ids, train);
        let tokens = match &self.project_in {
            Some(project) => project.forward(&tokens, train),
            None => tokens,
        };
        let x = tokens + self.embed_positions.forward(&positions);
        let context = Context::plain(inputs.attention_mask(true, None), train);
        let x = self.recompute.run(self, x, context);
        self.finish(x, train)
    }

    /// After the layers: the final norm and the projection out, where the model has them.
    fn finish(&self, x: Tensor, train: bool) -> Tensor {
        let x = match &self.final_layer_norm {
            Some(norm) => norm.forward(&x),
            None => x,
        };
        match &self.project_out {
            Some(project) => project.forward(&x, train),
            None => x,
        }
    }
}

impl Network for Opt {
    fn input_embeddings(&mut self) -> &mut Embedding {
        &mut self.embed_tokens
    }

    fn head_input(&self, inputs: &Inputs, train: bool) -> Option<HeadInput> {
        let head = self.head.language_model()?;
        Some(head.head_input(self.hidden(inputs, train), train))
    }

    fn logits(&self, inputs: &Inputs, train: bool) -> Tensor {
        self.head.logits(&self.hidden(inputs, train), inputs.ids, train)
    }

    fn reads_packed_positions(&self) -> bool {
        true
    }

    fn logits_after(&self, ids: &Tensor, cache: &mut KvCache) -> Option<Tensor> {
        self.head.language_model()?;
        let (start, new, device) = (cache.length, ids.size()[1], ids.device());
        // No padding while generating: position t is row t + the offset.
        let positions = cache.positions(new, device) + POSITION_OFFSET;
        let tokens = self.embed_tokens.forward_input(ids, false);
        let tokens = match &self.project_in {
            Some(project) => project.forward(&tokens, false),
            None => tokens,
        };
        let x = tokens + self.embed_positions.forward(&positions);
        let context = Context::plain(Mask::after(start, new, None, device), false);
        let x = cache.run(self.layers.len(), x, |index, x, slot| self.layer(index, x, &context, Some(slot)));
        Some(self.head.logits(&self.finish(x, false), ids, false))
    }
}

impl Blocks for Opt {
    fn count(&self) -> usize {
        self.layers.len()
    }

    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor {
        self.layer(index, x, context, None)
    }
}

impl Opt {
    /// Layer `index` over `x`; with a KV cache slot, after the positions it holds.
    fn layer(
        &self,
        index: usize,
        x: &Tensor,
        context: &Context,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (layer, train) = (&self.layers[index], context.train);
        let attention_dropout = if train { self.attention_dropout } else { 0.0 };
        let pre = |norm: &LayerNorm, x: &Tensor| if self.pre_norm { norm.forward(x) } else { x.shallow_clone() };
        let post = |norm: &LayerNorm, x: Tensor| if self.pre_norm { x } else { norm.forward(&x) };
        let h = pre(&layer.self_attn_layer_norm, x);
        // OPT scales the queries before the product, not the scores after it.
        let q = split_heads(&(layer.q_proj.forward(&h, train) * (self.head_dim as f64).powf(-0.5)), self.head_dim);
        let k = split_heads(&layer.k_proj.forward(&h, train), self.head_dim);
        let v = split_heads(&layer.v_proj.forward(&h, train), self.head_dim);
        let (k, v) = KvCache::extend(cache, k, v);
        let out = attention(&q, &k, &v, context.mask(None), attention_dropout, 1.0, 1);
        let attended = layer.out_proj.forward(&merge_heads(&out), train).dropout(self.dropout, train);
        let x = post(&layer.self_attn_layer_norm, x + attended);
        let h = pre(&layer.final_layer_norm, &x);
        let inner = self.act.apply(&layer.fc1.forward(&h, train));
        let out = layer.fc2.forward(&inner, train).dropout(self.dropout, train);
        post(&layer.final_layer_norm, &x + out)
    }
}
