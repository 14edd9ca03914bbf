//! The default job's data: the digits set embedded in the binary, a fixed-seed split, and
//! seeded batch order.

use std::io::Read;

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// UCI optical-recognition digits (CC BY 4.0); see data/README.md.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// The seed of the train/eval split: fixed, so every run evaluates on the same examples
/// whatever its training seed.
const SPLIT_SEED: u64 = 0x5eed;

/// Examples as tensors: `input` [N, features] float, `labels` [N] int64.
pub struct Dataset {
    pub input: Tensor,
    pub labels: Tensor,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn num_features(&self) -> i64 {
        self.input.size()[1]
    }

    fn select(&self, indices: &[i64]) -> Dataset {
        let index = Tensor::from_slice(indices);
        Dataset { input: self.input.index_select(0, &index), labels: self.labels.index_select(0, &index) }
    }

    fn truncate(self, max: Option<i64>) -> Dataset {
        match max {
            Some(max) if (max as usize) < self.len() => {
                Dataset { input: self.input.narrow(0, 0, max), labels: self.labels.narrow(0, 0, max) }
            }
            _ => self,
        }
    }

    pub fn to_device(&self, device: Device) -> Dataset {
        Dataset { input: self.input.to_device(device), labels: self.labels.to_device(device) }
    }

    /// One batch by example indices.
    pub fn batch(&self, indices: &Tensor) -> (Tensor, Tensor) {
        (self.input.index_select(0, indices), self.labels.index_select(0, indices))
    }
}

/// The digits set: 1797 8x8 images scaled to [0, 1], labels 0..9.
pub fn load_digits() -> Result<Dataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .context("the embedded digits data is corrupt")?;
    let mut features = Vec::with_capacity(1797 * 64);
    let mut labels = Vec::with_capacity(1797);
    for (row, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("digits row {row}: not a number"))?;
        anyhow::ensure!(values.len() == 65, "digits row {row}: {} values, expected 65", values.len());
        features.extend(values[..64].iter().map(|v| v / 16.0));
        labels.push(values[64] as i64);
    }
    let n = labels.len() as i64;
    Ok(Dataset { input: Tensor::from_slice(&features).view([n, 64]), labels: Tensor::from_slice(&labels) })
}

/// Splits off `eval_percent` of the examples for evaluation, by a fixed seed.
pub fn split(data: &Dataset, eval_percent: f64, max_train: Option<i64>, max_eval: Option<i64>) -> (Dataset, Dataset) {
    let n = data.len();
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
    let n_eval = ((n as f64) * eval_percent / 100.0).round().clamp(1.0, (n - 1) as f64) as usize;
    let (eval_idx, train_idx) = order.split_at(n_eval);
    (data.select(train_idx).truncate(max_train), data.select(eval_idx).truncate(max_eval))
}

/// The order of training examples in `epoch`: a permutation determined by the seed and the
/// epoch alone, so a run (or a resumed run) can recompute any epoch's order directly.
pub fn epoch_order(len: usize, data_seed: u64, epoch: u64) -> Vec<i64> {
    let mut order: Vec<i64> = (0..len as i64).collect();
    let seed = data_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch;
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// Batches of `batch_size` indices from `order`; the last one may be short unless dropped.
pub fn batches(order: &[i64], batch_size: usize, drop_last: bool) -> Vec<Tensor> {
    order.chunks(batch_size).filter(|chunk| !drop_last || chunk.len() == batch_size).map(Tensor::from_slice).collect()
}

/// Label items that count toward a loss (labels other than -100).
pub fn count_label_items(labels: &Tensor) -> i64 {
    labels.ne(-100).sum(Kind::Int64).int64_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_and_split_deterministically() {
        let data = load_digits().unwrap();
        assert_eq!(data.len(), 1797);
        assert_eq!(data.num_features(), 64);
        let (train, eval) = split(&data, 20.0, None, None);
        assert_eq!((train.len(), eval.len()), (1438, 359));
        let (train2, _) = split(&data, 20.0, None, None);
        assert!(train.labels.equal(&train2.labels));
        assert_eq!(data.input.max().double_value(&[]), 1.0);
    }

    #[test]
    fn epoch_order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(10, 1, 0), epoch_order(10, 1, 0));
        assert_ne!(epoch_order(10, 1, 0), epoch_order(10, 1, 1));
        let mut sorted = epoch_order(10, 1, 3);
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
}
