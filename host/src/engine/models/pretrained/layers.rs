//! The modules the ports share, with transformers' parameter names: linear layers (and
//! GPT-2's transposed Conv1D), embeddings and norms, over the ops in `engine::ops`; and
//! the classifier's last-token pick.

use tch::{nn, Kind, Tensor};

use super::lora::Lora;
use super::params::{Init, Need, ParamSource};
use super::Head;
use crate::engine::models::HeadInput;
use crate::engine::ops::norm::NormKind;

/// `nn.Linear`: weight [out, in], optional bias; y = x W^T + b.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A LoRA adapter on the layer.
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn new(src: &ParamSource, path: &nn::Path, inputs: i64, outputs: i64, bias: bool, need: Need) -> Self {
        Self {
            weight: src.param(path, "weight", &[outputs, inputs], need, Init::Normal),
            bias: bias.then(|| src.param(path, "bias", &[outputs], need, Init::Zeros)),
            lora: src.adapter(path, inputs, outputs),
        }
    }

    /// A layer over an existing weight (a tied output head), without an adapter.
    pub fn tied(weight: &Tensor) -> Self {
        Self { weight: weight.shallow_clone(), bias: None, lora: None }
    }

    /// `train` enables the adapter's dropout.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            Some(lora) => y + lora.delta(x, train),
            None => y,
        }
    }

    /// The layer as an output head over `x`, for a loss that computes the logits itself.
    /// With an adapter, x W^T + B(u) (u = the adapter's scaled down projection) is one
    /// product of [x, u] with [W, B]: the loss's gradients then reach x, A and B through
    /// autograd (at the cost of a copy of the head for the joined weight).
    pub fn head_input(&self, x: Tensor, train: bool) -> HeadInput {
        let bias = self.bias.as_ref().map(Tensor::shallow_clone);
        let Some(lora) = &self.lora else {
            return HeadInput { hidden: x, weight: self.weight.shallow_clone(), bias, soft_cap: None };
        };
        let down = lora.down(&x, train).to_kind(x.kind());
        let hidden = Tensor::cat(&[&x, &down], -1);
        let weight = Tensor::cat(&[&self.weight, &lora.b.to_kind(self.weight.kind())], 1);
        HeadInput { hidden, weight, bias, soft_cap: None }
    }
}

/// GPT-2's `Conv1D`: weight [in, out] (stored transposed), bias; y = x W + b.
#[derive(Debug)]
pub struct Conv1D {
    pub weight: Tensor,
    pub bias: Tensor,
    /// A LoRA adapter (PEFT's fan_in_fan_out: lora_A is [r, in] as for a Linear).
    pub lora: Option<Lora>,
}

impl Conv1D {
    pub fn new(src: &ParamSource, path: &nn::Path, inputs: i64, outputs: i64) -> Self {
        Self {
            weight: src.param(path, "weight", &[inputs, outputs], Need::Required, Init::Normal),
            bias: src.param(path, "bias", &[outputs], Need::Required, Init::Zeros),
            lora: src.adapter(path, inputs, outputs),
        }
    }

    /// `train` enables the adapter's dropout.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.project(x);
        match &self.lora {
            Some(lora) => y + lora.delta(x, train),
            None => y,
        }
    }

    fn project(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let width = size[size.len() - 1];
        let y = self.bias.addmm(&x.reshape([-1, width]), &self.weight);
        let mut shape = size[..size.len() - 1].to_vec();
        shape.push(self.weight.size()[1]);
        y.reshape(shape)
    }
}

/// `nn.Embedding`, with its padding row (which gets no gradient) where the model has one.
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
    pub padding_idx: Option<i64>,
    /// NEFTune's alpha, on the model's input embedding (neftune_noise_alpha).
    pub neftune: Option<f64>,
    /// A factor on every row (Gemma's sqrt(hidden_size)), rounded as transformers rounds
    /// it: to float32, then to the weight's dtype.
    pub scale: Option<f64>,
}

impl Embedding {
    pub fn new(src: &ParamSource, path: &nn::Path, count: i64, width: i64, padding_idx: Option<i64>) -> Self {
        let weight = src.param(path, "weight", &[count, width], Need::Required, Init::Normal);
        Self { weight, padding_idx: padding_idx.filter(|&p| (0..count).contains(&p)), neftune: None, scale: None }
    }

    /// The embedding with every row multiplied by `scale`.
    pub fn scaled(self, scale: Option<f64>) -> Self {
        Self { scale, ..self }
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let rows = Tensor::embedding(&self.weight, ids, self.padding_idx.unwrap_or(-1), false, false);
        match self.scale {
            Some(scale) => {
                let factor = Tensor::from(scale as f32).to_kind(self.weight.kind()).to_device(rows.device());
                rows * factor
            }
            None => rows,
        }
    }

    /// The model's input embedding of token ids: with NEFTune noise in training.
    pub fn forward_input(&self, ids: &Tensor, train: bool) -> Tensor {
        crate::engine::models::neftune_noise(self.forward(ids), self.neftune, train)
    }
}

/// `nn.LayerNorm` with weight and bias.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(src: &ParamSource, path: &nn::Path, width: i64, eps: f64, need: Need) -> Self {
        Self {
            weight: src.param(path, "weight", &[width], need, Init::Ones),
            bias: src.param(path, "bias", &[width], need, Init::Zeros),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let width = *x.size().last().unwrap_or(&0);
        x.layer_norm([width], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// An RMSNorm over the last `width` dimensions, scaled as its [`NormKind`] says.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub kind: NormKind,
}

impl RmsNorm {
    pub fn new(src: &ParamSource, path: &nn::Path, width: i64, eps: f64, kind: NormKind) -> Self {
        // A missing weight starts as the identity: ones, or zeros under the unit offset.
        let init = if kind == NormKind::RmsUnitOffset { Init::Zeros } else { Init::Ones };
        Self { weight: src.param(path, "weight", &[width], Need::Required, init), eps, kind }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.kind.apply(x, &self.weight, self.eps)
    }
}

/// A decoder's head over its last hidden states: the language model's (`lm_head`, or the
/// token embedding when tied) or a classifier (`score`) on each row's last token that is
/// not padding, as transformers' decoders classify.
#[derive(Debug)]
pub enum DecoderHead {
    LanguageModel(Linear),
    Classifier { score: Linear, pad: Option<i64> },
}

impl DecoderHead {
    /// The head `head` asks for over hidden states `width` wide; `tied` is the token
    /// embedding a tied language-model head reuses.
    pub fn new(src: &ParamSource, root: &nn::Path, head: &Head, width: i64, vocab: i64, tied: Option<&Tensor>) -> Self {
        match head {
            Head::CausalLm => DecoderHead::LanguageModel(match tied {
                Some(weight) => Linear::tied(weight),
                None => Linear::new(src, &(root / "lm_head"), width, vocab, false, Need::Head),
            }),
            Head::SequenceClassification { num_labels, pad } => DecoderHead::Classifier {
                score: Linear::new(src, &(root / "score"), width, *num_labels, false, Need::Head),
                pad: *pad,
            },
        }
    }

    /// The language model's head, for the loss without logits.
    pub fn language_model(&self) -> Option<&Linear> {
        match self {
            DecoderHead::LanguageModel(head) => Some(head),
            DecoderHead::Classifier { .. } => None,
        }
    }

    /// [B, T, vocab] token logits, or [B, labels] from each row's last real token.
    pub fn logits(&self, hidden: &Tensor, ids: &Tensor, train: bool) -> Tensor {
        match self {
            DecoderHead::LanguageModel(head) => head.forward(hidden, train),
            DecoderHead::Classifier { score, pad } => score.forward(&pick_rows(hidden, &last_token(ids, *pad)), train),
        }
    }
}

/// The index of each row's last token that is not `pad` (transformers' rule for
/// sequence classification with decoders), or the last position without a pad token.
pub fn last_token(input_ids: &Tensor, pad: Option<i64>) -> Tensor {
    let length = *input_ids.size().last().unwrap_or(&1);
    let Some(pad) = pad else {
        return Tensor::full([input_ids.size()[0]], length - 1, (Kind::Int64, input_ids.device()));
    };
    let indices = Tensor::arange(length, (Kind::Int64, input_ids.device()));
    (indices * input_ids.ne(pad).to_kind(Kind::Int64)).argmax(-1, false)
}

/// Row `index[b]` of each batch item of `x` [B, T, ...].
pub fn pick_rows(x: &Tensor, index: &Tensor) -> Tensor {
    let batch = Tensor::arange(x.size()[0], (Kind::Int64, x.device()));
    x.index(&[Some(batch), Some(index.shallow_clone())])
}
