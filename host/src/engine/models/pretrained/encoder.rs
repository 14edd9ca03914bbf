//! BERT and RoBERTa, ported from transformers: word, position and token-type embeddings,
//! post-norm encoder layers with bidirectional attention over the real tokens, and the
//! sequence-classification heads transformers puts on them (BERT: the pooler's tanh over
//! [CLS], dropout, `classifier`; RoBERTa: `classifier.dense`, tanh, `classifier.out_proj`
//! over <s>). RoBERTa numbers positions from its padding index + 1, skipping pads.

use tch::{nn, Kind, Tensor};

use super::arch::{Inputs, Network};
use super::checkpointing::{Blocks, Context, Recompute};
use super::config::{Common, ConfigError, EncoderConfig};
use super::layers::{Embedding, LayerNorm, Linear};
use super::params::{Need, ParamSource};
use crate::engine::models::HeadInput;
use crate::engine::ops::activation::Activation;
use crate::engine::ops::attention::{attention, merge_heads, split_heads};

#[derive(Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_dense: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output_dense: Linear,
    output_norm: LayerNorm,
}

/// The classification head on the first token.
#[derive(Debug)]
enum Classifier {
    /// BERT: `bert.pooler.dense` + tanh, then `classifier`.
    Pooled { pooler: Linear, classifier: Linear },
    /// RoBERTa: `classifier.dense` + tanh, then `classifier.out_proj`.
    Head { dense: Linear, out_proj: Linear },
}

#[derive(Debug)]
pub struct Encoder {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    classifier: Classifier,
    /// RoBERTa's padding index, from which its positions count; None for BERT.
    position_padding: Option<i64>,
    head_dim: i64,
    act: Activation,
    hidden_dropout: f64,
    attention_dropout: f64,
    classifier_dropout: f64,
    recompute: Recompute,
}

impl Encoder {
    pub fn new(
        src: &ParamSource,
        root: &nn::Path,
        roberta: bool,
        common: &Common,
        config: &EncoderConfig,
        num_labels: i64,
        checkpointing: bool,
    ) -> Result<Self, ConfigError> {
        let base = root / if roberta { "roberta" } else { "bert" };
        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        let embeddings = &base / "embeddings";
        let linear = |p: &nn::Path, inputs, outputs| Linear::new(src, p, inputs, outputs, true, Need::Required);
        let norm = |p: &nn::Path| LayerNorm::new(src, p, hidden, eps, Need::Required);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let path = &base / "encoder" / "layer" / i;
                let attention = &path / "attention";
                let inner = config.intermediate_size;
                Layer {
                    query: linear(&(&attention / "self" / "query"), hidden, hidden),
                    key: linear(&(&attention / "self" / "key"), hidden, hidden),
                    value: linear(&(&attention / "self" / "value"), hidden, hidden),
                    attention_dense: linear(&(&attention / "output" / "dense"), hidden, hidden),
                    attention_norm: norm(&(&attention / "output" / "LayerNorm")),
                    intermediate: linear(&(&path / "intermediate" / "dense"), hidden, inner),
                    output_dense: linear(&(&path / "output" / "dense"), inner, hidden),
                    output_norm: norm(&(&path / "output" / "LayerNorm")),
                }
            })
            .collect();
        let head = |p: &nn::Path, inputs, outputs| Linear::new(src, p, inputs, outputs, true, Need::Head);
        let classifier = if roberta {
            let path = root / "classifier";
            Classifier::Head {
                dense: head(&(&path / "dense"), hidden, hidden),
                out_proj: head(&(&path / "out_proj"), hidden, num_labels),
            }
        } else {
            Classifier::Pooled {
                pooler: head(&(&base / "pooler" / "dense"), hidden, hidden),
                classifier: head(&(root / "classifier"), hidden, num_labels),
            }
        };
        let padding = common.pad_token_id;
        Ok(Self {
            word_embeddings: Embedding::new(
                src,
                &(&embeddings / "word_embeddings"),
                common.vocab_size,
                hidden,
                padding,
            ),
            position_embeddings: Embedding::new(
                src,
                &(&embeddings / "position_embeddings"),
                config.max_position_embeddings,
                hidden,
                if roberta { padding } else { None },
            ),
            token_type_embeddings: Embedding::new(
                src,
                &(&embeddings / "token_type_embeddings"),
                config.type_vocab_size,
                hidden,
                None,
            ),
            embeddings_norm: norm(&(&embeddings / "LayerNorm")),
            layers,
            classifier,
            position_padding: if roberta { Some(padding.unwrap_or(1)) } else { None },
            head_dim: hidden / config.num_attention_heads,
            act: config.activation()?,
            hidden_dropout: config.hidden_dropout_prob,
            attention_dropout: config.attention_probs_dropout_prob,
            classifier_dropout: config.classifier_dropout.unwrap_or(config.hidden_dropout_prob),
            recompute: Recompute::new(checkpointing),
        })
    }

    /// Position ids [B, T]: 0..T (BERT), or RoBERTa's count of real tokens after its pad.
    fn positions(&self, ids: &Tensor) -> Tensor {
        let (b, t) = ids.size2().expect("[batch, time]");
        match self.position_padding {
            None => Tensor::arange(t, (Kind::Int64, ids.device())).expand([b, t], false),
            Some(pad) => {
                let real = ids.ne(pad).to_kind(Kind::Int);
                (real.cumsum(1, Kind::Int) * &real).to_kind(Kind::Int64) + pad
            }
        }
    }
}

impl Network for Encoder {
    fn input_embeddings(&mut self) -> &mut Embedding {
        &mut self.word_embeddings
    }

    /// A classifier: no language-model head.
    fn head_input(&self, _: &Inputs, _: bool) -> Option<HeadInput> {
        None
    }

    fn logits(&self, inputs: &Inputs, train: bool) -> Tensor {
        let ids = inputs.ids;
        let types = match inputs.token_types {
            Some(types) => types.shallow_clone(),
            None => ids.zeros_like(),
        };
        let embedded = self.word_embeddings.forward_input(ids, train)
            + self.token_type_embeddings.forward(&types)
            + self.position_embeddings.forward(&self.positions(ids));
        let x = self.embeddings_norm.forward(&embedded).dropout(self.hidden_dropout, train);
        let context = Context::plain(inputs.attention_mask(false, None), train);
        let x = self.recompute.run(self, x, context);
        let first = x.select(1, 0);
        match &self.classifier {
            Classifier::Pooled { pooler, classifier } => {
                let pooled = pooler.forward(&first, train).tanh();
                classifier.forward(&pooled.dropout(self.classifier_dropout, train), train)
            }
            Classifier::Head { dense, out_proj } => {
                let h = dense.forward(&first.dropout(self.classifier_dropout, train), train).tanh();
                out_proj.forward(&h.dropout(self.classifier_dropout, train), train)
            }
        }
    }
}

impl Blocks for Encoder {
    fn count(&self) -> usize {
        self.layers.len()
    }

    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor {
        let (layer, train) = (&self.layers[index], context.train);
        let attention_dropout = if train { self.attention_dropout } else { 0.0 };
        let scale = (self.head_dim as f64).powf(-0.5);
        let [q, k, v] =
            [&layer.query, &layer.key, &layer.value].map(|l| split_heads(&l.forward(x, train), self.head_dim));
        let attended = merge_heads(&attention(&q, &k, &v, context.mask(None), attention_dropout, scale, 1));
        let projected = layer.attention_dense.forward(&attended, train).dropout(self.hidden_dropout, train);
        let x = layer.attention_norm.forward(&(projected + x));
        let inner = self.act.apply(&layer.intermediate.forward(&x, train));
        let out = layer.output_dense.forward(&inner, train).dropout(self.hidden_dropout, train);
        layer.output_norm.forward(&(out + &x))
    }
}
