//! GPT-2, ported from transformers: learned positions, pre-norm blocks whose projections
//! are `Conv1D` (weights stored [in, out]), the language-model head (`GPT2LMHeadModel`:
//! the token embedding when tie_word_embeddings, as by default, else its own `lm_head`),
//! or a classifier on the last non-padding token (`GPT2ForSequenceClassification`).

use tch::{nn, Tensor};

use super::arch::{Inputs, KvCache, Network};
use super::checkpointing::{Blocks, Context, Recompute};
use super::config::{Common, ConfigError, Gpt2Config};
use super::layers::DecoderHead;
use super::layers::{Conv1D, Embedding, LayerNorm};
use super::params::{Need, ParamSource};
use super::Head;
use crate::engine::models::HeadInput;
use crate::engine::ops::activation::Activation;
use crate::engine::ops::attention::{attention, merge_heads, split_heads, Mask};

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    scale: f64,
}

#[derive(Debug)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: DecoderHead,
    width: i64,
    head_dim: i64,
    act: Activation,
    resid_pdrop: f64,
    embd_pdrop: f64,
    attn_pdrop: f64,
    recompute: Recompute,
}

impl Gpt2 {
    pub fn new(
        src: &ParamSource,
        root: &nn::Path,
        common: &Common,
        config: &Gpt2Config,
        head: &Head,
        checkpointing: bool,
    ) -> Result<Self, ConfigError> {
        let base = root / "transformer";
        let width = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * width);
        let eps = config.layer_norm_epsilon;
        let head_dim = width / config.n_head;
        let blocks = (0..config.n_layer)
            .map(|i| {
                let path = &base / "h" / i;
                let mut scale = if config.scale_attn_weights { (head_dim as f64).powf(-0.5) } else { 1.0 };
                if config.scale_attn_by_inverse_layer_idx {
                    scale /= (i + 1) as f64;
                }
                Block {
                    ln_1: LayerNorm::new(src, &(&path / "ln_1"), width, eps, Need::Required),
                    c_attn: Conv1D::new(src, &(&path / "attn" / "c_attn"), width, 3 * width),
                    attn_proj: Conv1D::new(src, &(&path / "attn" / "c_proj"), width, width),
                    ln_2: LayerNorm::new(src, &(&path / "ln_2"), width, eps, Need::Required),
                    c_fc: Conv1D::new(src, &(&path / "mlp" / "c_fc"), width, inner),
                    mlp_proj: Conv1D::new(src, &(&path / "mlp" / "c_proj"), inner, width),
                    scale,
                }
            })
            .collect();
        let wte = Embedding::new(src, &(&base / "wte"), common.vocab_size, width, None);
        let tied = config.tie_word_embeddings.then_some(&wte.weight);
        let head = DecoderHead::new(src, root, head, width, common.vocab_size, tied);
        Ok(Self {
            wte,
            wpe: Embedding::new(src, &(&base / "wpe"), config.n_positions, width, None),
            blocks,
            ln_f: LayerNorm::new(src, &(&base / "ln_f"), width, eps, Need::Required),
            head,
            width,
            head_dim,
            act: config.activation()?,
            resid_pdrop: config.resid_pdrop,
            embd_pdrop: config.embd_pdrop,
            attn_pdrop: config.attn_pdrop,
            recompute: Recompute::new(checkpointing),
        })
    }

    /// The last hidden states [B, T, width] for token ids [B, T].
    fn hidden(&self, inputs: &Inputs, train: bool) -> Tensor {
        let ids = inputs.ids;
        let t = ids.size()[1];
        let positions = match inputs.positions {
            Some(positions) => positions.shallow_clone(),
            None => Tensor::arange(t, (tch::Kind::Int64, ids.device())),
        };
        let mask = inputs.attention_mask(true, None);
        let x = (self.wte.forward_input(ids, train) + self.wpe.forward(&positions)).dropout(self.embd_pdrop, train);
        let context = Context::plain(mask, train);
        self.ln_f.forward(&self.recompute.run(self, x, context))
    }
}

impl Network for Gpt2 {
    fn input_embeddings(&mut self) -> &mut Embedding {
        &mut self.wte
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
        let x = self.wte.forward_input(ids, false) + self.wpe.forward(&cache.positions(new, device));
        let context = Context::plain(Mask::after(start, new, None, device), false);
        let x = cache.run(self.blocks.len(), x, |index, x, slot| self.layer(index, x, &context, Some(slot)));
        Some(self.head.logits(&self.ln_f.forward(&x), ids, false))
    }
}

impl Blocks for Gpt2 {
    fn count(&self) -> usize {
        self.blocks.len()
    }

    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor {
        self.layer(index, x, context, None)
    }
}

impl Gpt2 {
    /// Block `index` over `x`; with a KV cache slot, after the positions it holds.
    fn layer(
        &self,
        index: usize,
        x: &Tensor,
        context: &Context,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (block, train) = (&self.blocks[index], context.train);
        let attn_dropout = if train { self.attn_pdrop } else { 0.0 };
        let qkv = block.c_attn.forward(&block.ln_1.forward(x), train).split(self.width, 2);
        let [q, k, v] = [0, 1, 2].map(|i| split_heads(&qkv[i], self.head_dim));
        let (k, v) = KvCache::extend(cache, k, v);
        let out = attention(&q, &k, &v, context.mask(None), attn_dropout, block.scale, 1);
        let x = x + block.attn_proj.forward(&merge_heads(&out), train).dropout(self.resid_pdrop, train);
        let hidden = self.act.apply(&block.c_fc.forward(&block.ln_2.forward(&x), train));
        &x + block.mlp_proj.forward(&hidden, train).dropout(self.resid_pdrop, train)
    }
}
