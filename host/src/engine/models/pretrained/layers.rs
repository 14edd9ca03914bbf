//! The building blocks the ports share, with transformers' parameter names: linear layers
//! (and GPT-2's transposed Conv1D), embeddings, norms, activations and attention.

use tch::{nn, Kind, Tensor};

use super::lora::Lora;
use super::params::{Init, Need, ParamSource};

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
}

impl Embedding {
    pub fn new(src: &ParamSource, path: &nn::Path, count: i64, width: i64, padding_idx: Option<i64>) -> Self {
        let weight = src.param(path, "weight", &[count, width], Need::Required, Init::Normal);
        Self { weight, padding_idx: padding_idx.filter(|&p| (0..count).contains(&p)), neftune: None }
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, self.padding_idx.unwrap_or(-1), false, false)
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

/// Llama's RMSNorm: normalized in float32, then scaled by the weight in the input's dtype.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(src: &ParamSource, path: &nn::Path, width: i64, eps: f64) -> Self {
        Self { weight: src.param(path, "weight", &[width], Need::Required, Init::Ones), eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (x32 * (variance + self.eps).rsqrt()).to_kind(kind)
    }
}

/// An activation by its transformers name (`hidden_act`, `activation_function`); the
/// config checks refuse names not here.
pub fn activate(name: &str, x: &Tensor) -> Tensor {
    match name {
        "silu" | "swish" => x.silu(),
        "relu" => x.relu(),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
        _ => x.gelu("none"),
    }
}

/// Which keys each query may attend to, in the form SDPA runs fastest with.
#[derive(Debug)]
pub enum Mask {
    /// Every key (no padding, bidirectional).
    All,
    /// Keys up to the query's position (no padding): SDPA's `is_causal`, which its fused
    /// kernels take.
    Causal,
    /// [B, 1, T, T], true where a query may attend to a key.
    Explicit(Tensor),
}

impl Mask {
    /// The mask for a batch: padding keys hidden (`mask` [B, T], 1 for real tokens) and,
    /// when `causal`, later positions too. As transformers, a batch without padding gets
    /// no mask tensor at all. A row with no key left (a padding query before any real
    /// token) may attend to every key, so that it gives numbers rather than NaN (its
    /// output is never used).
    pub fn new(mask: Option<&Tensor>, causal: bool) -> Self {
        let Some(mask) = mask.filter(|m| m.eq_tensor(&m.zeros_like()).any().int64_value(&[]) != 0) else {
            return if causal { Mask::Causal } else { Mask::All };
        };
        let (batch, length) = mask.size2().expect("[batch, time]");
        let keys = mask.ne(0).view([batch, 1, 1, length]);
        let combined = if causal {
            let causal = Tensor::ones([length, length], (Kind::Bool, mask.device())).tril(0);
            keys.logical_and(&causal.view([1, 1, length, length]))
        } else {
            keys.expand([batch, 1, length, length], false)
        };
        let empty = combined.any_dim(-1, true).logical_not();
        Mask::Explicit(combined.logical_or(&empty))
    }
}

/// Scaled dot-product attention over [B, H, T, D] queries and [B, H / groups, T, D] keys
/// and values (grouped-query attention when `groups` > 1).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask, dropout: f64, scale: f64, groups: i64) -> Tensor {
    match mask {
        Mask::Explicit(mask) => {
            let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
            Tensor::scaled_dot_product_attention(q, &k, &v, Some(mask), dropout, false, Some(scale), false)
        }
        Mask::Causal | Mask::All => {
            let causal = matches!(mask, Mask::Causal);
            Tensor::scaled_dot_product_attention::<&Tensor>(q, k, v, None, dropout, causal, Some(scale), groups > 1)
        }
    }
}

/// [B, T, H*D] -> [B, H, T, D].
pub fn split_heads(x: &Tensor, head_dim: i64) -> Tensor {
    let (b, t, _) = x.size3().expect("[batch, time, width]");
    x.view([b, t, -1, head_dim]).transpose(1, 2)
}

/// [B, H, T, D] -> [B, T, H*D].
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, _, t, _) = x.size4().expect("[batch, heads, time, dim]");
    x.transpose(1, 2).reshape([b, t, -1])
}

/// Each key/value head repeated for the query heads that share it (grouped-query attention).
fn repeat_kv(x: &Tensor, times: i64) -> Tensor {
    if times == 1 {
        return x.shallow_clone();
    }
    let (b, h, t, d) = x.size4().expect("[batch, heads, time, dim]");
    x.unsqueeze(2).expand([b, h, times, t, d], false).reshape([b, h * times, t, d])
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
