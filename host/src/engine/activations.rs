//! What a training step's activations take, estimated from a transformer's sizes before
//! the model is built (the memory check refuses a batch that cannot fit).

/// A transformer's sizes, as the activation estimate takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerShape {
    pub layers: i64,
    pub width: i64,
    pub heads: i64,
}

/// What a training step's activations take for one micro-batch: `batch` rows of
/// `sequence` tokens in elements of `element_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct StepActivations {
    pub batch: i64,
    pub sequence: i64,
    pub bytes: u64,
}

/// The activations a transformer's training step keeps for its backward pass, after
/// Korthikanti et al. ("Reducing Activation Recomputation in Large Transformer Models",
/// 2022): a layer keeps about s b h (34 + 5 a s / h) bytes in 16-bit precision, scaled
/// here to `element_bytes`. With gradient checkpointing each layer keeps its input, and
/// one layer's whole set lives while it is recomputed.
pub fn activation_bytes(
    shape: TransformerShape,
    batch: i64,
    sequence: i64,
    element_bytes: u64,
    checkpointing: bool,
) -> u64 {
    let (s, b, h, a) = (sequence as f64, batch as f64, shape.width as f64, shape.heads as f64);
    let scale = element_bytes as f64 / 2.0;
    let layer = s * b * h * (34.0 + 5.0 * a * s / h.max(1.0)) * scale;
    let layers = shape.layers.max(0) as f64;
    let total = match checkpointing {
        true => layers * s * b * h * element_bytes as f64 + layer,
        false => layers * layer,
    };
    total.min(u64::MAX as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_follow_the_layer_count_and_checkpointing_keeps_layer_inputs() {
        let shape = TransformerShape { layers: 2, width: 64, heads: 4 };
        // One layer: 32 x 8 x 64 x (34 + 5 x 4 x 32 / 64) bytes in 16-bit, doubled for float32.
        let layer = 32 * 8 * 64 * (34 + 10) * 2;
        assert_eq!(activation_bytes(shape, 8, 32, 4, false), 2 * layer);
        assert_eq!(activation_bytes(shape, 8, 32, 4, true), 2 * 32 * 8 * 64 * 4 + layer);
        assert_eq!(activation_bytes(shape, 8, 32, 2, false), layer);
    }
}
