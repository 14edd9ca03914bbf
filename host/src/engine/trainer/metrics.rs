//! Evaluation metrics: the totals kept on the device (loss, accuracy, macro F1), and HF's
//! speed metrics.

use tch::{Device, Kind, Tensor};

/// HF's `speed_metrics`: `{prefix}_runtime` (rounded to 4 decimals) and the samples and
/// steps per second (3 decimals).
pub(super) fn speed_metrics(prefix: &str, runtime: f64, samples: f64, steps: f64) -> Vec<(String, f64)> {
    vec![
        (format!("{prefix}_runtime"), round_to(runtime, 4)),
        (format!("{prefix}_samples_per_second"), round_to(samples / runtime, 3)),
        (format!("{prefix}_steps_per_second"), round_to(steps / runtime, 3)),
    ]
}

/// Python's `round(value, digits)` as speed_metrics uses it.
pub(super) fn round_to(value: f64, digits: i32) -> f64 {
    (value * 10f64.powi(digits)).round() / 10f64.powi(digits)
}

/// Evaluation totals, kept on the device so that no batch waits for a read.
pub(super) struct Tally {
    pub(super) loss_sum: Tensor,
    /// Per class: true positives, predictions, labels (class-id labels only).
    classes: Option<[Tensor; 3]>,
    correct: Tensor,
    counted: Tensor,
    /// Labels were not class ids (regression, multi-label): no accuracy or F1.
    not_classes: bool,
}

impl Tally {
    pub(super) fn new(device: Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Int64, device));
        Self {
            loss_sum: Tensor::zeros([], (Kind::Double, device)),
            classes: None,
            correct: zero(),
            counted: zero(),
            not_classes: false,
        }
    }

    pub(super) fn add(&mut self, loss: &Tensor, len: i64, logits: &Tensor, labels: &Tensor) {
        self.loss_sum += loss.detach().to_kind(Kind::Double) * len as f64;
        let classes = *logits.size().last().unwrap_or(&0);
        let class_ids = !labels.is_floating_point() && logits.size()[..logits.dim() - 1] == labels.size()[..];
        if !class_ids || classes < 1 {
            self.not_classes = true;
            return;
        }
        let predicted = logits.argmax(-1, false).reshape([-1]);
        let labels = labels.reshape([-1]);
        let valid = labels.ne(-100);
        self.correct += predicted.eq_tensor(&labels).logical_and(&valid).sum(Kind::Int64);
        self.counted += valid.sum(Kind::Int64);
        // Per-class counts for F1 (skipped for vocabulary-sized token outputs).
        if classes <= 4096 {
            let (predicted, labels) = (predicted.masked_select(&valid), labels.masked_select(&valid));
            let hits = predicted.masked_select(&predicted.eq_tensor(&labels));
            let count = |t: &Tensor| t.bincount::<Tensor>(None, classes).to_kind(Kind::Int64);
            let counts = [count(&hits), count(&predicted), count(&labels)];
            self.classes = Some(match self.classes.take() {
                None => counts,
                Some([a, b, c]) => [a + &counts[0], b + &counts[1], c + &counts[2]],
            });
        }
    }

    /// The totals as tensors to sum across ranks: [loss, correct, counted] and the
    /// per-class counts when kept (every rank evaluates at least one batch, so all ranks
    /// give the same shapes).
    pub(super) fn totals(&self) -> Vec<Tensor> {
        let scalars = Tensor::stack(
            &[&self.loss_sum, &self.correct.to_kind(Kind::Double), &self.counted.to_kind(Kind::Double)],
            0,
        );
        let mut totals = vec![scalars];
        totals.extend(self.classes.as_ref().map(|counts| Tensor::stack(counts, 0)));
        totals
    }

    /// Takes back the summed [`totals`](Self::totals).
    pub(super) fn set_totals(&mut self, totals: Vec<Tensor>) {
        self.loss_sum = totals[0].get(0);
        self.correct = totals[0].get(1).to_kind(Kind::Int64);
        self.counted = totals[0].get(2).to_kind(Kind::Int64);
        if let Some(counts) = totals.get(1) {
            self.classes = Some([counts.get(0), counts.get(1), counts.get(2)]);
        }
    }

    pub(super) fn accuracy(&self) -> Option<f64> {
        if self.not_classes {
            return None;
        }
        Some(self.correct.double_value(&[]) / (self.counted.int64_value(&[]).max(1)) as f64)
    }

    /// Macro F1 over the classes that occur in the labels or the predictions (as
    /// scikit-learn's `f1_score(average="macro")`).
    pub(super) fn macro_f1(&self) -> Option<f64> {
        if self.not_classes {
            return None;
        }
        let [hits, predicted, labels] = self.classes.as_ref()?;
        let (hits, predicted, labels) = (
            Vec::<i64>::try_from(hits).ok()?,
            Vec::<i64>::try_from(predicted).ok()?,
            Vec::<i64>::try_from(labels).ok()?,
        );
        let scores: Vec<f64> = (0..hits.len())
            .filter(|&c| predicted[c] + labels[c] > 0)
            .map(|c| 2.0 * hits[c] as f64 / (predicted[c] + labels[c]) as f64)
            .collect();
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Reduction;

    /// The built-in training loss over logits, as the trainer computes it.
    fn builtin_training_loss(logits: &Tensor, labels: &Tensor, items: i64, smoothing: f64) -> anyhow::Result<Tensor> {
        use crate::engine::loss::{CrossEntropy, Loss};
        let mut fields = plugin_api::Tensors::new();
        fields.insert("labels", labels.shallow_clone());
        let batch = crate::engine::data::Batch::from_plugin(fields).unwrap();
        let outputs = crate::engine::models::Outputs::logits(logits.shallow_clone());
        CrossEntropy { smoothing }.compute(&outputs, &batch, Some(items), true)
    }

    /// Labels with -100 here and there, split into uneven micro-batches.
    fn problem() -> (Tensor, Tensor, Tensor) {
        let _generator = crate::engine::rng::lock_generator();
        tch::manual_seed(3);
        let weight = Tensor::randn([5, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let input = Tensor::randn([9, 4], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, -100, 4, 2, -100, -100, 1, 3, 0]);
        (weight, input, labels)
    }

    fn grad_of(weight: &Tensor, loss: Tensor) -> Tensor {
        let mut grad = weight.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
        loss.backward();
        weight.grad().copy()
    }

    #[test]
    fn macro_f1_and_accuracy_match_scikit_learn() {
        // y_true [0, 0, 1, 2, 2, 2, -100], y_pred [0, 1, 1, 2, 0, 2, 1]: scikit-learn's
        // f1_score(average="macro") over the six counted items is (1/2 + 2/3 + 4/5) / 3.
        let mut tally = Tally::new(Device::Cpu);
        let predicted = Tensor::from_slice(&[0i64, 1, 1, 2, 0, 2, 1]);
        let logits = predicted.one_hot(4).to_kind(Kind::Float);
        let labels = Tensor::from_slice(&[0i64, 0, 1, 2, 2, 2, -100]);
        tally.add(&Tensor::from(0.5f32), 7, &logits.narrow(0, 0, 4), &labels.narrow(0, 0, 4));
        tally.add(&Tensor::from(0.5f32), 7, &logits.narrow(0, 4, 3), &labels.narrow(0, 4, 3));
        let expected = (1.0 / 2.0 + 2.0 / 3.0 + 4.0 / 5.0) / 3.0;
        assert!((tally.macro_f1().unwrap() - expected).abs() < 1e-12);
        assert!((tally.accuracy().unwrap() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn accumulated_micro_batches_equal_one_big_batch() {
        let (weight, input, labels) = problem();
        let items = crate::engine::data::count_label_items(&labels);
        assert_eq!(items, 6);
        let full = builtin_training_loss(&input.matmul(&weight.tr()), &labels, items, 0.0).unwrap();
        // The full-batch value is PyTorch's mean over the label items.
        let mean = input.matmul(&weight.tr()).cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
        assert!((full.double_value(&[]) - mean.double_value(&[])).abs() < 1e-6);
        let full_grad = grad_of(&weight, full);

        let mut accumulated = weight.zeros_like();
        for (start, len) in [(0, 4), (4, 3), (7, 2)] {
            let (x, y) = (input.narrow(0, start, len), labels.narrow(0, start, len));
            accumulated += grad_of(&weight, builtin_training_loss(&x.matmul(&weight.tr()), &y, items, 0.0).unwrap());
        }
        let difference = (accumulated - full_grad).abs().max().double_value(&[]);
        assert!(difference < 1e-6, "gradients differ by {difference}");
    }
}
