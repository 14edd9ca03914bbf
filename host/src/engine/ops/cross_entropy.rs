//! The language-model loss without the full logits (see `plugin_api::ops`, where it
//! lives so that plugin losses that take hidden states run the same code; a fused kernel
//! for one device would be chosen here, with that code as its reference twin).

pub use plugin_api::ops::{linear_cross_entropy, LossSettings};
