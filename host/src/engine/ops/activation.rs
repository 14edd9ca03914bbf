//! Activations by their transformers names, resolved once when a model is built (not
//! matched by string on every call), and the gated MLP's product.

use tch::Tensor;

/// An activation function (`hidden_act`, `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Relu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Gelu,
}

impl Activation {
    /// The names transformers gives the activations the host implements.
    pub const NAMES: &'static [&'static str] = &["silu", "swish", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::Relu => x.relu(),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Gelu => x.gelu("none"),
        }
    }
}

/// The gated MLP's inner product, act(gate) * up (SwiGLU with SiLU).
pub fn gated(activation: Activation, gate: &Tensor, up: &Tensor) -> Tensor {
    gated_reference(activation, gate, up)
}

/// Two kernels: the activation, then the product.
pub fn gated_reference(activation: Activation, gate: &Tensor, up: &Tensor) -> Tensor {
    activation.apply(gate) * up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_and_others_do_not() {
        for name in Activation::NAMES {
            assert!(Activation::parse(name).is_some(), "{name}");
        }
        assert_eq!(Activation::parse("gelu_new"), Some(Activation::GeluTanh));
        assert_eq!(Activation::parse("swish2"), None);
    }
}
