//! `classification_report`: evaluation metrics for classifiers, as scikit-learn's
//! `classification_report`, `confusion_matrix` and `top_k_accuracy_score` compute them.
//!
//! It keeps one confusion matrix and the top-k hit counts on the device while the
//! evaluation runs (memory does not grow with the evaluation set) and, in a distributed
//! run, lets the host sum them over the ranks. Results, logged as `eval_<name>`:
//! `accuracy`, `macro_precision`, `macro_recall`, `macro_f1`, `weighted_f1`, and
//! `top_<k>_accuracy` for each k of `top_k`. The report (`<output_dir>/classification_report.json`)
//! holds scikit-learn's `classification_report(output_dict=True)`, the confusion matrix
//! (rows: true labels, columns: predictions) and the top-k accuracies.
//!
//! As scikit-learn, the classes reported are those that occur in the labels or the
//! predictions, and a precision or recall with nothing to divide is 0 (`zero_division`'s
//! default). Token classifiers' labels of `ignore_index` are left out.

use plugin_api::prelude::*;
use plugin_api::serde_json::{json, Map, Value};

/// The most classes a confusion matrix is kept for.
const MAX_CLASSES: i64 = 4096;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// The k of each top-k accuracy reported (the label among the k highest scores).
    top_k: Vec<i64>,
    /// Names for the classes in the report, in class order (scikit-learn's
    /// target_names); default: the class ids.
    target_names: Option<Vec<String>>,
    /// Label value whose items are left out.
    ignore_index: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self { top_k: vec![5], target_names: None, ignore_index: -100 }
    }
}

struct Report {
    config: Config,
    /// [classes, classes] counts: row = label, column = prediction.
    confusion: Option<Tensor>,
    /// Per k of `top_k`: items whose label is among the k best scores.
    top_k_hits: Option<Tensor>,
}

impl Report {
    fn new(config: Config) -> Result<Self, PluginError> {
        if config.top_k.iter().any(|&k| k < 1) {
            return Err(PluginError::config(format!("top_k values must be at least 1 (got {:?})", config.top_k)));
        }
        Ok(Self { config, confusion: None, top_k_hits: None })
    }
}

/// scikit-learn's precision, recall and F-score of one class from its counts, with
/// `zero_division` 0.
fn scores(hits: f64, predicted: f64, support: f64) -> (f64, f64, f64) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    (ratio(hits, predicted), ratio(hits, support), ratio(2.0 * hits, predicted + support))
}

impl Metric for Report {
    fn reset(&mut self) -> Result<(), PluginError> {
        self.confusion = None;
        self.top_k_hits = None;
        Ok(())
    }

    fn update(&mut self, outputs: &Tensors, batch: &Tensors) -> Result<(), PluginError> {
        let logits = outputs.require("logits")?;
        let labels = batch.require("labels")?;
        if labels.is_floating_point() {
            return Err(PluginError::new(
                "labels are not class ids (float labels): classification_report needs a classifier's labels",
            ));
        }
        let classes = *logits.size().last().unwrap_or(&0);
        if classes > MAX_CLASSES {
            // A confusion matrix of a vocabulary (a language model's logits) would not fit.
            return Err(PluginError::config(format!(
                "the logits have {classes} classes; classification_report is for classifiers (at most {MAX_CLASSES} classes)"
            )));
        }
        let scores = logits.detach().reshape([-1, classes]);
        let labels = labels.reshape([-1]);
        if labels.size()[0] != scores.size()[0] {
            return Err(PluginError::new(format!(
                "labels {:?} do not match the logits {:?} (one label per row of logits)",
                batch.require("labels")?.size(),
                logits.size()
            )));
        }
        let kept = labels.ne(self.config.ignore_index);
        let (scores, labels) = (scores.index_select(0, &kept.nonzero().squeeze_dim(1)), labels.masked_select(&kept));
        let predicted = scores.argmax(-1, false);
        let device = scores.device();
        let cells = (&labels * classes + &predicted).bincount::<Tensor>(None, classes * classes);
        let confusion = cells.reshape([classes, classes]).to_kind(Kind::Int64);
        let hits: Vec<Tensor> = self
            .config
            .top_k
            .iter()
            .map(|&k| {
                let best = scores.topk(k.min(classes), -1, true, true).1;
                best.eq_tensor(&labels.unsqueeze(1)).any_dim(1, false).sum(Kind::Int64)
            })
            .collect();
        let hits = if hits.is_empty() { Tensor::zeros([0], (Kind::Int64, device)) } else { Tensor::stack(&hits, 0) };
        self.confusion = Some(match self.confusion.take() {
            Some(total) if total.size() == confusion.size() => total + confusion,
            Some(total) => {
                return Err(PluginError::new(format!(
                    "the logits changed from {} to {classes} classes during one evaluation",
                    total.size()[0]
                )))
            }
            None => confusion,
        });
        self.top_k_hits = Some(match self.top_k_hits.take() {
            Some(total) => total + hits,
            None => hits,
        });
        Ok(())
    }

    fn totals(&self) -> Tensors {
        let mut totals = Tensors::new();
        if let (Some(confusion), Some(hits)) = (&self.confusion, &self.top_k_hits) {
            totals.insert("confusion", confusion.shallow_clone());
            totals.insert("top_k_hits", hits.shallow_clone());
        }
        totals
    }

    fn set_totals(&mut self, totals: Tensors) -> Result<(), PluginError> {
        self.confusion = Some(totals.require("confusion")?.shallow_clone());
        self.top_k_hits = Some(totals.require("top_k_hits")?.shallow_clone());
        Ok(())
    }

    fn compute(&mut self) -> Result<MetricResults, PluginError> {
        let (Some(confusion), Some(hits)) = (&self.confusion, &self.top_k_hits) else {
            return Ok(MetricResults::default());
        };
        let cpu = plugin_api::tch::Device::Cpu;
        let matrix: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&confusion.to_device(cpu))?;
        let hits: Vec<i64> = Vec::<i64>::try_from(&hits.to_device(cpu))?;
        let classes = matrix.len();
        let support: Vec<f64> = matrix.iter().map(|row| row.iter().sum::<i64>() as f64).collect();
        let predicted: Vec<f64> = (0..classes).map(|c| matrix.iter().map(|row| row[c]).sum::<i64>() as f64).collect();
        // scikit-learn reports the classes present in the labels or the predictions.
        let present: Vec<usize> = (0..classes).filter(|&c| support[c] > 0.0 || predicted[c] > 0.0).collect();
        let total: f64 = support.iter().sum();
        let correct: f64 = (0..classes).map(|c| matrix[c][c] as f64).sum();
        let accuracy = if total > 0.0 { correct / total } else { 0.0 };

        let mut report = Map::new();
        let (mut macro_sums, mut weighted_sums) = ([0.0; 3], [0.0; 3]);
        for &c in &present {
            let (p, r, f) = scores(matrix[c][c] as f64, predicted[c], support[c]);
            for (i, value) in [p, r, f].into_iter().enumerate() {
                macro_sums[i] += value;
                weighted_sums[i] += value * support[c];
            }
            let name = match &self.config.target_names {
                Some(names) => names.get(c).cloned().ok_or_else(|| {
                    PluginError::config(format!(
                        "target_names has {} names but the model has {classes} classes",
                        names.len()
                    ))
                })?,
                None => c.to_string(),
            };
            report.insert(name, json!({"precision": p, "recall": r, "f1-score": f, "support": support[c]}));
        }
        let n = present.len().max(1) as f64;
        let macro_avg = macro_sums.map(|s| s / n);
        let weighted_avg = weighted_sums.map(|s| if total > 0.0 { s / total } else { 0.0 });
        report.insert("accuracy".into(), json!(accuracy));
        for (key, [p, r, f]) in [("macro avg", macro_avg), ("weighted avg", weighted_avg)] {
            report.insert(key.into(), json!({"precision": p, "recall": r, "f1-score": f, "support": total}));
        }

        let mut values = Metrics::new();
        values.insert("accuracy", accuracy);
        values.insert("macro_precision", macro_avg[0]);
        values.insert("macro_recall", macro_avg[1]);
        values.insert("macro_f1", macro_avg[2]);
        values.insert("weighted_f1", weighted_avg[2]);
        let mut top_k = Map::new();
        for (&k, &hit) in self.config.top_k.iter().zip(&hits) {
            let value = if total > 0.0 { hit as f64 / total } else { 0.0 };
            values.insert(format!("top_{k}_accuracy"), value);
            top_k.insert(k.to_string(), json!(value));
        }
        let report = json!({
            "labels": present,
            "classification_report": Value::Object(report),
            "confusion_matrix": present.iter().map(|&r| present.iter().map(|&c| matrix[r][c]).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "top_k_accuracy": Value::Object(top_k),
        });
        Ok(MetricResults { values, report: Some(report) })
    }
}

export_plugin! {
    metrics: { "classification_report" => Report::new },
}
