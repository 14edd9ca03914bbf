//! Transformer models over token ids: an encoder classifier and a GPT-style decoder.
//! Pre-layer-norm blocks as GPT-2's, attention by PyTorch's fused
//! `scaled_dot_product_attention`.

use anyhow::Result;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::{Model, Outputs};
use crate::engine::data::Batch;
use crate::error::InputError;

/// Sizes of a transformer.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab: i64,
    pub width: i64,
    pub layers: i64,
    pub heads: i64,
    /// The longest sequence (size of the position table).
    pub context: i64,
    pub dropout: f64,
}

/// Self-attention and a 4x-wide MLP, each behind a layer norm and added back.
#[derive(Debug)]
struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl Block {
    fn new(path: &nn::Path, width: i64, heads: i64) -> Self {
        Self {
            ln1: nn::layer_norm(path / "ln1", vec![width], Default::default()),
            qkv: nn::linear(path / "qkv", width, 3 * width, Default::default()),
            proj: nn::linear(path / "proj", width, width, Default::default()),
            ln2: nn::layer_norm(path / "ln2", vec![width], Default::default()),
            fc: nn::linear(path / "fc", width, 4 * width, Default::default()),
            out: nn::linear(path / "out", 4 * width, width, Default::default()),
            heads,
        }
    }

    /// `x` [B, T, D]; `mask` [B, 1, 1, T] true where a key may be attended to.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, causal: bool, dropout: f64, train: bool) -> Tensor {
        let (b, t, d) = x.size3().expect("[batch, time, width]");
        let h = self.ln1.forward(x);
        let qkv = self.qkv.forward(&h).view([b, t, 3, self.heads, d / self.heads]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let p = if train { dropout } else { 0.0 };
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, causal, None, false);
        let attended = attended.transpose(1, 2).reshape([b, t, d]);
        let x = x + self.proj.forward(&attended).dropout(dropout, train);
        let hidden = self.fc.forward(&self.ln2.forward(&x)).gelu("none");
        &x + self.out.forward(&hidden).dropout(dropout, train)
    }
}

/// The parameters of the embeddings, the blocks and the final layer norm.
/// (Counted in floating point, exact for any size a machine holds, and saturated for the
/// sizes none does.)
fn trunk_parameter_count(config: &Config) -> f64 {
    let (w, vocab, context) = (config.width as f64, config.vocab as f64, config.context as f64);
    // ln1, qkv, proj, ln2, fc, out: weights and biases.
    let block = 2.0 * w + (3.0 * w * w + 3.0 * w) + (w * w + w) + 2.0 * w + (4.0 * w * w + 4.0 * w) + (4.0 * w * w + w);
    vocab * w + context * w + config.layers as f64 * block + 2.0 * w
}

/// The parameters of a [`Gpt`] (its head has no bias).
pub fn gpt_parameter_count(config: &Config) -> u64 {
    (trunk_parameter_count(config) + config.width as f64 * config.vocab as f64) as u64
}

/// The parameters of an [`EncoderClassifier`].
pub fn classifier_parameter_count(config: &Config, num_labels: i64) -> u64 {
    (trunk_parameter_count(config) + (config.width as f64 + 1.0) * num_labels as f64) as u64
}

/// Token and position embeddings, the blocks and a final layer norm.
#[derive(Debug)]
struct Trunk {
    embed_tokens: nn::Embedding,
    embed_positions: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    config: Config,
    /// NEFTune's alpha (neftune_noise_alpha).
    neftune: Option<f64>,
}

impl Trunk {
    fn new(root: &nn::Path, config: &Config) -> Self {
        let blocks = root / "blocks";
        Self {
            embed_tokens: nn::embedding(root / "embed_tokens", config.vocab, config.width, Default::default()),
            embed_positions: nn::embedding(root / "embed_positions", config.context, config.width, Default::default()),
            blocks: (0..config.layers).map(|i| Block::new(&(&blocks / i), config.width, config.heads)).collect(),
            ln_f: nn::layer_norm(root / "ln_f", vec![config.width], Default::default()),
            config: config.clone(),
            neftune: None,
        }
    }

    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, causal: bool, train: bool) -> Result<Tensor> {
        let t = *ids.size().last().unwrap_or(&0);
        if t > self.config.context {
            return Err(InputError::new(format!(
                "sequences of {t} tokens are longer than max_seq_length ({}), the model's context",
                self.config.context
            ))
            .into());
        }
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        let tokens = super::neftune_noise(self.embed_tokens.forward(ids), self.neftune, train);
        let mut x = (tokens + self.embed_positions.forward(&positions)).dropout(self.config.dropout, train);
        for block in &self.blocks {
            x = block.forward(&x, mask, causal, self.config.dropout, train);
        }
        Ok(self.ln_f.forward(&x))
    }
}

/// A GPT-style causal language model: logits [B, T, vocab] for the next token at each
/// position.
#[derive(Debug)]
pub struct Gpt {
    trunk: Trunk,
    lm_head: nn::Linear,
}

impl Gpt {
    pub fn new(root: &nn::Path, config: &Config) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            trunk: Trunk::new(root, config),
            lm_head: nn::linear(root / "lm_head", config.width, config.vocab, no_bias),
        }
    }

    /// Logits for token ids [B, T] (no batch needed: greedy generation calls this).
    pub fn logits(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        // Causal attention alone: with right padding, no real token sees a pad.
        Ok(self.lm_head.forward(&self.trunk.forward(ids, None, true, train)?))
    }
}

impl Model for Gpt {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        Ok(Outputs::logits(self.logits(batch.require("input_ids", "gpt")?, train)?))
    }

    fn generate(&self, prompt: &Tensor, new_tokens: i64, stop: Option<i64>) -> Option<Result<Tensor>> {
        Some(greedy(self, prompt, new_tokens, stop))
    }

    fn embedding_weights(&self) -> Option<&'static [&'static str]> {
        Some(EMBEDDINGS)
    }

    fn enable_neftune(&mut self, alpha: f64) -> bool {
        self.trunk.neftune = Some(alpha);
        true
    }

    fn decays(&self, name: &str) -> bool {
        decays(name)
    }
}

/// The token and position tables (left out of the FLOP count, as transformers does).
const EMBEDDINGS: &[&str] = &["embed_tokens.weight", "embed_positions.weight"];

/// HF's weight-decay rule, which leaves out every `nn.LayerNorm` by type: here the blocks'
/// ln1, ln2 and the final ln_f, whose names the name rule alone would not catch.
fn decays(name: &str) -> bool {
    let layer_norm = name.split('.').any(|part| matches!(part, "ln1" | "ln2" | "ln_f"));
    crate::engine::optim::decays(name) && !layer_norm
}

/// Greedy completion of one prompt [T]: the prompt and up to `new_tokens` tokens.
fn greedy(model: &Gpt, prompt: &Tensor, new_tokens: i64, stop: Option<i64>) -> Result<Tensor> {
    let mut ids = prompt.shallow_clone();
    tch::no_grad(|| {
        for _ in 0..new_tokens {
            let t = ids.size()[0];
            let window = ids.narrow(0, (t - model.trunk.config.context).max(0), t.min(model.trunk.config.context));
            let logits = model.logits(&window.unsqueeze(0), false)?;
            let next = logits.get(0).get(-1).argmax(-1, false);
            let token = next.int64_value(&[]);
            ids = Tensor::cat(&[ids, next.view([1])], 0);
            if Some(token) == stop {
                break;
            }
        }
        Ok(ids)
    })
}

/// A transformer encoder classifier: bidirectional attention over the non-padding tokens,
/// a mean over them, and a linear classifier (`head`).
#[derive(Debug)]
pub struct EncoderClassifier {
    trunk: Trunk,
    head: nn::Linear,
}

impl EncoderClassifier {
    pub fn new(root: &nn::Path, config: &Config, num_labels: i64) -> Self {
        Self {
            trunk: Trunk::new(root, config),
            head: nn::linear(root / "head", config.width, num_labels, Default::default()),
        }
    }
}

impl Model for EncoderClassifier {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        let ids = batch.require("input_ids", "transformer")?;
        let keep = match batch.get("attention_mask") {
            Some(mask) => mask.ne(0),
            None => ids.ones_like().to_kind(Kind::Bool),
        };
        let (b, t) = ids.size2()?;
        let attend = keep.view([b, 1, 1, t]);
        let hidden = self.trunk.forward(ids, Some(&attend), false, train)?;
        let weights = keep.to_kind(hidden.kind()).unsqueeze(-1);
        let pooled = (hidden * &weights).sum_dim_intlist(1, false, None)
            / weights.sum_dim_intlist(1, false, None).clamp_min(1.0);
        Ok(Outputs::logits(self.head.forward(&pooled)))
    }

    fn embedding_weights(&self) -> Option<&'static [&'static str]> {
        Some(EMBEDDINGS)
    }

    fn enable_neftune(&mut self, alpha: f64) -> bool {
        self.trunk.neftune = Some(alpha);
        true
    }

    fn decays(&self, name: &str) -> bool {
        decays(name)
    }
}
