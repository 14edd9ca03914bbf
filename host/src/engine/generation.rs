//! How `host generate` picks each next token, as transformers' `generate` does: greedy
//! (argmax), or sampling, where the float32 scores pass its warpers in its order
//! (temperature, top-k, top-p) and `torch.multinomial` draws from their softmax with the
//! seeded generator, so that a seed gives transformers' tokens.

use tch::{Kind, Tensor};

/// Sampling settings (transformers' GenerationConfig defaults: 1.0, 50, 1.0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    /// 0: no top-k filter.
    pub top_k: i64,
    pub top_p: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: 50, top_p: 1.0 }
    }
}

impl Sampling {
    /// Refuses settings transformers refuses, naming them.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be a positive number (got {})", self.temperature));
        }
        if self.top_k < 0 {
            return Err(format!("top_k must be 0 (off) or a positive number of tokens (got {})", self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1] (got {})", self.top_p));
        }
        Ok(())
    }

    /// The scores [vocab] after the warpers: filtered tokens at -inf.
    pub fn warp(&self, scores: &Tensor) -> Tensor {
        let mut scores = scores.to_kind(Kind::Float).unsqueeze(0);
        if self.temperature != 1.0 {
            scores /= self.temperature;
        }
        if self.top_k != 0 {
            let vocab = scores.size()[1];
            let (values, _) = scores.topk(self.top_k.min(vocab), -1, true, true);
            let kth = values.narrow(1, values.size()[1] - 1, 1);
            scores = scores.masked_fill(&scores.lt_tensor(&kth), f64::NEG_INFINITY);
        }
        if self.top_p < 1.0 {
            let (sorted, indices) = scores.sort(-1, false);
            let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
            let remove = cumulative.le(1.0 - self.top_p);
            // The most likely token always stays.
            let last = remove.size()[1] - 1;
            let _ = remove.narrow(1, last, 1).fill_(0);
            let remove = remove.scatter(1, &indices, &remove);
            scores = scores.masked_fill(&remove, f64::NEG_INFINITY);
        }
        scores.squeeze_dim(0)
    }

    /// A token drawn from the warped scores' softmax.
    pub fn draw(&self, scores: &Tensor) -> i64 {
        let probabilities = self.warp(scores).softmax(-1, Kind::Float).unsqueeze(0);
        probabilities.multinomial(1, false).int64_value(&[0, 0])
    }
}

/// The most likely token.
pub fn greedy(scores: &Tensor) -> i64 {
    scores.argmax(-1, false).int64_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finite(scores: &Tensor) -> Vec<bool> {
        Vec::<bool>::try_from(&scores.isfinite()).unwrap()
    }

    #[test]
    fn warpers_filter_as_transformers_in_its_order() {
        let scores = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 0.0, 2.0]);
        // top-k 3 keeps ties with the third (two 2.0s): 4 tokens.
        let top_k = Sampling { top_k: 3, ..Default::default() }.warp(&scores);
        assert_eq!(finite(&top_k), [false, true, true, false, true]);
        // top-p: softmax of [1,3,2,0,2] = [.08,.59,.22,.03,.22]; 0.5 keeps the 3.0 alone.
        let top_p = Sampling { top_k: 0, top_p: 0.5, ..Default::default() }.warp(&scores);
        assert_eq!(finite(&top_p), [false, true, false, false, false]);
        let top_p = Sampling { top_k: 0, top_p: 0.7, ..Default::default() }.warp(&scores);
        assert_eq!(finite(&top_p).iter().filter(|&&f| f).count(), 2);
        let warm = Sampling { temperature: 2.0, top_k: 0, top_p: 1.0 }.warp(&scores);
        assert_eq!(Vec::<f32>::try_from(&warm).unwrap(), [0.5, 1.5, 1.0, 0.0, 1.0]);
        assert!(Sampling { temperature: 0.0, ..Default::default() }.check().is_err());
        assert!(Sampling { top_p: 1.5, ..Default::default() }.check().is_err());
    }

    #[test]
    fn a_seed_draws_the_same_tokens_and_top_k_1_is_greedy() {
        let _generator = crate::engine::rng::lock_generator();
        let scores = Tensor::from_slice(&[0.5f32, 0.4, 0.3, 0.2, 0.1, 0.0]);
        let sampling = Sampling::default();
        let draws = |seed| {
            tch::manual_seed(seed);
            (0..20).map(|_| sampling.draw(&scores)).collect::<Vec<_>>()
        };
        assert_eq!(draws(3), draws(3));
        assert!(draws(3).iter().collect::<std::collections::BTreeSet<_>>().len() > 1);
        let one = Sampling { top_k: 1, ..Default::default() };
        assert!((0..10).all(|_| one.draw(&scores) == greedy(&scores)));
    }
}
