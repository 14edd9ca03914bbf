//! Evaluation and prediction (HF `evaluate`, `predict`, `evaluation_loop`), and the best
//! model decision that follows each evaluation (HF `_determine_best_metric`).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use super::metrics::{speed_metrics, Tally};
use super::Trainer;
use crate::engine::callbacks::Event;
use crate::engine::libtorch;
use crate::engine::memory_metrics::Stage;
use crate::engine::models::{Outputs, Task};
use crate::engine::precision::Autocast;
use crate::error::InputError;

impl Trainer {
    /// Evaluates on the eval set: eval_loss (the run's loss, batch means weighted by batch
    /// size, as HF) and the task's metrics. Fires on_prediction_step per batch, then on_log
    /// and on_evaluate; then steps reduce_lr_on_plateau and records a new best metric.
    /// Returns the metrics and whether they are the best so far.
    pub fn evaluate(&mut self) -> Result<(Vec<(String, f64)>, bool)> {
        self.memory_stage_begins(Stage::Eval)?;
        let trained = self.swap_in_evaluation_weights()?;
        let metrics = self.evaluation_loop("eval", |_, _, _| Ok(()));
        if let Some(trained) = trained {
            tch::no_grad(|| {
                for (mut param, weights) in trained {
                    param.copy_(&weights);
                }
            });
        }
        let metrics = metrics?;
        // As in HF, the metrics given to on_evaluate carry the epoch that `log` adds.
        let metrics = self.log(metrics)?;
        if let Some(dir) = &self.report_dir {
            self.write_metric_reports(dir)?;
        }
        self.last_eval = Some(metrics.clone());
        self.fire(Event::Evaluate, &metrics)?;
        // After on_evaluate, as HF: callbacks there still see the previous best metric.
        if let Some(best) = &self.config.best_metric {
            if let Some(&(_, value)) = metrics.iter().find(|(name, _)| *name == best.key) {
                self.schedule_on_metric(value)?;
            }
        }
        let new_best = self.determine_best_metric(&metrics)?;
        // As HF: after the log line and on_evaluate, in the returned metrics only.
        let mut metrics = metrics;
        self.memory_stage_ends(Stage::Eval, &mut metrics)?;
        Ok((metrics, new_best))
    }

    /// HF `predict`: runs the model over the evaluation data, writes one JSON line per
    /// example to `output` (its index, label, predicted class and class probabilities; for
    /// token models the predicted token at each position), and returns `test_*` metrics,
    /// which on_predict receives.
    pub fn predict(&mut self, output: &Path) -> Result<Vec<(String, f64)>> {
        self.memory_stage_begins(Stage::Test)?;
        let mut metrics = self.predict_into(output)?;
        self.memory_stage_ends(Stage::Test, &mut metrics)?;
        Ok(metrics)
    }

    fn predict_into(&mut self, output: &Path) -> Result<Vec<(String, f64)>> {
        if output.extension().is_some_and(|e| e == "safetensors") {
            return self.predict_tensors(output);
        }
        let file = std::fs::File::create(output)
            .map_err(|e| InputError::new(format!("cannot write predictions to {}: {e}", output.display())))?;
        let mut out = std::io::BufWriter::new(file);
        let metrics =
            self.evaluation_loop("test", |logits, labels, start| write_predictions(&mut out, logits, labels, start))?;
        out.flush().with_context(|| format!("cannot write {}", output.display()))?;
        self.write_reports_next_to(output)?;
        self.fire(Event::Predict, &metrics)?;
        Ok(metrics)
    }

    /// `predict` into a safetensors file, as HF's `PredictionOutput`: `predictions` (the
    /// logits) and `label_ids`, batches of token models padded to the longest with -100.
    fn predict_tensors(&mut self, output: &Path) -> Result<Vec<(String, f64)>> {
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        let metrics = self.evaluation_loop("test", |batch_logits, batch_labels, _| {
            logits.push(batch_logits.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu));
            labels.push(batch_labels.to_device(tch::Device::Cpu));
            Ok(())
        })?;
        let tensors = [("predictions", padded_concat(&logits)), ("label_ids", padded_concat(&labels))]
            .map(|(name, tensor)| (name.to_owned(), tensor));
        crate::engine::weights::write::write_file(&tensors, output)
            .map_err(|e| InputError::new(format!("cannot write predictions to {}: {e:#}", output.display())))?;
        self.write_reports_next_to(output)?;
        self.fire(Event::Predict, &metrics)?;
        Ok(metrics)
    }

    /// HF `_determine_best_metric`: whether `metrics` improve on the best so far (and if
    /// so, records them as the best, at this step).
    fn determine_best_metric(&mut self, metrics: &[(String, f64)]) -> Result<bool> {
        let Some(best) = &self.config.best_metric else { return Ok(false) };
        let Some(value) = metrics.iter().find(|(n, _)| *n == best.key).map(|(_, v)| *v) else {
            // As HF: a best-model metric that evaluation does not give is an error.
            let names: Vec<&str> = metrics.iter().map(|(n, _)| n.as_str()).collect();
            return Err(InputError::new(format!(
                "metric_for_best_model '{}' is not among this model's evaluation metrics ({}); choose one of them",
                best.key,
                names.join(", ")
            ))
            .into());
        };
        let better = best.improves_on(value, self.run.state.best_metric);
        if better {
            self.run.state.best_metric = Some(value);
            self.run.state.best_global_step = Some(self.run.state.global_step);
        }
        Ok(better)
    }

    /// Runs the model over the evaluation data in batches and returns `{prefix}_*` metrics:
    /// the loss (the run's loss, batch means weighted by batch size, as HF), then by task
    /// accuracy and macro F1 (classification) or accuracy and perplexity (causal LM).
    /// `per_batch` sees each batch's logits and labels. Fires on_prediction_step per batch.
    fn evaluation_loop(
        &mut self,
        prefix: &str,
        mut per_batch: impl FnMut(&Tensor, &Tensor, i64) -> Result<()>,
    ) -> Result<Vec<(String, f64)>> {
        let started = Instant::now();
        let n = self.eval.len();
        // In a distributed run each rank evaluates its block and the totals are summed.
        let (first, share) = self.eval_share();
        let (first, end) = (first as i64, (first + share) as i64);
        let bs = self.config.args.per_device_eval_batch_size;
        let mut tally = Tally::new(self.device);
        let mut batches = 0usize;
        let with_plugin_metrics = !self.config.args.prediction_loss_only;
        if with_plugin_metrics {
            for metric in &mut self.metrics {
                metric.reset()?;
            }
        }
        for start in (first..end).step_by(bs as usize) {
            let len = bs.min(end - start);
            let what = || format!("evaluation (per_device_eval_batch_size {bs})");
            // Autocast stays on until the batch is done with, as in the forward pass.
            let (logits, labels, _autocast) =
                libtorch::guard(what, || self.evaluation_batch(start, len, &mut tally, with_plugin_metrics))?;
            batches += 1;
            per_batch(&logits, &labels, start)?;
            self.fire(Event::PredictionStep, &[])?;
        }
        if self.dist.is_some() {
            let totals = tally.totals();
            self.sum_tensors_across_ranks(&totals.iter().collect::<Vec<_>>(), "summing the evaluation metrics")?;
            tally.set_totals(totals);
            batches = self.sum_across_ranks(batches as f64, "summing the evaluation metrics")? as usize;
        }
        let runtime = started.elapsed().as_secs_f64();
        if self.eval.total_label_items() == 0 {
            // Nothing labelled (texts to classify): no loss and no score, as HF without
            // labels.
            return Ok(speed_metrics(prefix, runtime, n as f64, batches as f64));
        }
        let mut metrics = vec![(format!("{prefix}_loss"), tally.loss_sum.double_value(&[]) / n.max(1) as f64)];
        if self.config.args.prediction_loss_only {
            metrics.extend(speed_metrics(prefix, runtime, n as f64, batches as f64));
            return Ok(metrics);
        }
        if let Some(accuracy) = tally.accuracy() {
            metrics.push((format!("{prefix}_accuracy"), accuracy));
        }
        match self.model.task {
            Task::Classification => {
                if let Some(f1) = tally.macro_f1() {
                    metrics.push((format!("{prefix}_f1"), f1));
                }
            }
            // As HF's run_clm: the exponential of the mean loss.
            Task::CausalLm => {
                metrics.push((format!("{prefix}_perplexity"), metrics[0].1.exp()));
                if let Some(exact) = self.exact_match()? {
                    metrics.push((format!("{prefix}_exact_match"), exact));
                }
            }
        }
        for (name, value) in self.plugin_metric_results()? {
            // A plugin's metric of the same name replaces the built-in one.
            let key = format!("{prefix}_{name}");
            metrics.retain(|(k, _)| *k != key);
            metrics.push((key, value));
        }
        metrics.extend(speed_metrics(prefix, runtime, n as f64, batches as f64));
        Ok(metrics)
    }

    /// The metric plugins' results, their totals summed over the ranks first; their
    /// reports are kept for [`write_metric_reports`](Self::write_metric_reports).
    fn plugin_metric_results(&mut self) -> Result<Vec<(String, f64)>> {
        let mut values = Vec::new();
        self.metric_reports.clear();
        for i in 0..self.metrics.len() {
            if self.dist.is_some() {
                let totals = self.metrics[i].totals()?;
                if !totals.is_empty() {
                    let summed: Vec<Tensor> = totals.iter().map(|(_, t)| t.to_device(self.device)).collect();
                    self.sum_tensors_across_ranks(&summed.iter().collect::<Vec<_>>(), "summing a metric's totals")?;
                    let names = totals.into_iter().map(|(name, _)| name);
                    self.metrics[i].set_totals(names.zip(summed).collect())?;
                }
            }
            let results = self.metrics[i].compute()?;
            values.extend(results.values);
            if let Some(report) = results.report {
                self.metric_reports.push((self.metrics[i].name().to_owned(), report));
            }
        }
        Ok(values)
    }

    /// Writes each metric plugin's last report as JSON: `<dir>/<metric>.json`.
    pub fn write_metric_reports(&self, dir: &Path) -> Result<()> {
        for (name, report) in &self.metric_reports {
            write_report(&dir.join(format!("{name}.json")), name, report)?;
        }
        Ok(())
    }

    /// Where a prediction's report from metric `name` goes: beside the predictions file,
    /// `predictions.jsonl` -> `predictions.<name>.json`.
    pub fn report_next_to(predictions: &Path, name: &str) -> std::path::PathBuf {
        predictions.with_extension(format!("{name}.json"))
    }

    fn write_reports_next_to(&self, predictions: &Path) -> Result<()> {
        for (name, report) in &self.metric_reports {
            write_report(&Self::report_next_to(predictions, name), name, report)?;
        }
        Ok(())
    }

    /// The metric plugins' last reports, by metric.
    pub fn metric_reports(&self) -> &[(String, serde_json::Value)] {
        &self.metric_reports
    }

    /// The model and the loss over the examples `start..start + len`, added to `tally`;
    /// returns the logits and labels, and autocast (on while it lives).
    fn evaluation_batch(
        &mut self,
        start: i64,
        len: i64,
        tally: &mut Tally,
        plugin_metrics: bool,
    ) -> Result<(Tensor, Tensor, Autocast)> {
        let batch = self.eval.slice(start, len);
        let autocast = Autocast::enter(self.precision, self.device)?;
        let outputs: Outputs = tch::no_grad(|| self.model.net.forward(&batch, false))?;
        let logits = outputs.get_logits();
        let labels = batch.labels();
        // The training loss's own evaluation form (HF's LabelSmoother, when on, too).
        let loss = tch::no_grad(|| self.loss.compute(&outputs, &batch, None, false))?;
        tally.add(&loss, len, logits, labels);
        if plugin_metrics {
            for metric in &mut self.metrics {
                metric.update(&outputs, &batch)?;
            }
        }
        Ok((logits.shallow_clone(), labels.shallow_clone(), autocast))
    }

    /// The share of evaluation texts whose greedy completion after the separator token
    /// reproduces the rest of the text exactly (generation_separator); `None` without one.
    fn exact_match(&self) -> Result<Option<f64>> {
        // Every rank answers, even one whose share has no text, so that the sums match up.
        let Some(separator) = self.eval.separator_token else { return Ok(None) };
        let (mut matched, mut asked) = (0usize, 0usize);
        let (first, share) = self.eval_share();
        for index in first as i64..(first + share) as i64 {
            let Some(tokens) = self.eval.tokens(index) else { return Ok(None) };
            let ids = Vec::<i64>::try_from(&tokens.to_device(Device::Cpu))?;
            let Some(at) = ids.iter().position(|&id| id == separator) else { continue };
            let (prompt, target) = (tokens.narrow(0, 0, at as i64 + 1), &ids[at + 1..]);
            let Some(generated) = self.model.net.generate(&prompt, target.len() as i64, self.eval.end_token) else {
                return Ok(None);
            };
            let generated = Vec::<i64>::try_from(&generated?.to_device(Device::Cpu))?;
            asked += 1;
            matched += usize::from(generated[at + 1..] == *target);
        }
        let matched = self.sum_across_ranks(matched as f64, "summing exact matches")?;
        let asked = self.sum_across_ranks(asked as f64, "summing exact matches")?;
        Ok((asked > 0.0).then(|| matched / asked))
    }

    /// Puts in place the weights a callback wants evaluations to use (EMA weights, say);
    /// returns the trained weights to put back afterwards.
    fn swap_in_evaluation_weights(&mut self) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        let Some(weights) = self.callbacks.evaluation_weights()? else { return Ok(None) };
        let mut saved = Vec::new();
        tch::no_grad(|| -> Result<()> {
            for param in self.optimizer.params() {
                let replacement = weights
                    .require(&param.name)
                    .map_err(|e| anyhow::anyhow!("evaluation weights from a callback: {}", e.message()))?;
                anyhow::ensure!(
                    replacement.size() == param.tensor.size(),
                    "evaluation weights from a callback: {} has shape {:?}, the model {:?}",
                    param.name,
                    replacement.size(),
                    param.tensor.size()
                );
                let trained = param.tensor.detach().copy();
                param.tensor.shallow_clone().copy_(&replacement.to_device(param.tensor.device()));
                saved.push((param.tensor.shallow_clone(), trained));
            }
            Ok(())
        })?;
        Ok(Some(saved))
    }
}

fn write_report(path: &Path, name: &str, report: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(report)? + "\n";
    crate::engine::output::write_text_atomically(path, &text)
        .map_err(|e| InputError::new(format!("cannot write the {name} report to {}: {e:#}", path.display())).into())
}

/// One JSON line per example of a prediction batch: its index and label, and the
/// predicted class with the class probabilities, or for token models the predicted token
/// at each position (class probabilities would be vocabulary-sized).
fn write_predictions(out: &mut impl Write, logits: &Tensor, labels: &Tensor, start: i64) -> Result<()> {
    let predicted = logits.argmax(-1, false);
    if logits.dim() > 2 {
        let predicted = Vec::<Vec<i64>>::try_from(&predicted.flatten(1, -1))?;
        let labels = Vec::<Vec<i64>>::try_from(&labels.flatten(1, -1))?;
        for (i, (prediction, label)) in predicted.iter().zip(&labels).enumerate() {
            let line = serde_json::json!({"index": start as usize + i, "label": label, "prediction": prediction});
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let probabilities = logits.to_kind(Kind::Float).softmax(-1, Kind::Float);
    let predicted = Vec::<i64>::try_from(&predicted)?;
    let rows = Vec::<Vec<f32>>::try_from(&probabilities)?;
    let labels: Vec<serde_json::Value> = if labels.is_floating_point() {
        Vec::<Vec<f64>>::try_from(&labels.to_kind(Kind::Double).reshape([labels.size()[0], -1]))?
            .into_iter()
            .map(|row| if row.len() == 1 { serde_json::json!(row[0]) } else { serde_json::json!(row) })
            .collect()
    } else {
        Vec::<i64>::try_from(&labels.reshape([-1]))?.into_iter().map(|l| serde_json::json!(l)).collect()
    };
    for (i, ((prediction, label), probabilities)) in predicted.iter().zip(&labels).zip(&rows).enumerate() {
        let line = serde_json::json!({
            "index": start as usize + i,
            "label": label,
            "prediction": prediction,
            "probabilities": probabilities,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Batches joined along the first dimension, each padded with -100 to the longest second
/// dimension (HF's `nested_concat`).
fn padded_concat(batches: &[Tensor]) -> Tensor {
    let longest = batches.iter().filter(|t| t.dim() > 1).map(|t| t.size()[1]).max();
    let padded: Vec<Tensor> = batches
        .iter()
        .map(|t| match longest {
            Some(longest) if t.size()[1] < longest => {
                let mut shape = t.size();
                shape[1] = longest;
                let out = Tensor::full(shape.as_slice(), -100, (t.kind(), t.device()));
                out.narrow(1, 0, t.size()[1]).copy_(t);
                out
            }
            _ => t.shallow_clone(),
        })
        .collect();
    Tensor::cat(&padded, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_are_padded_to_the_longest_batch_with_minus_100() {
        let short = Tensor::ones([2, 3], (Kind::Int64, Device::Cpu));
        let long = Tensor::zeros([1, 5], (Kind::Int64, Device::Cpu));
        let joined = padded_concat(&[short, long]);
        assert_eq!(joined.size(), [3, 5]);
        assert_eq!(Vec::<i64>::try_from(joined.get(0)).unwrap(), [1, 1, 1, -100, -100]);
        assert_eq!(Vec::<i64>::try_from(joined.get(2)).unwrap(), [0, 0, 0, 0, 0]);
    }

    #[test]
    fn prediction_lines_give_classes_with_probabilities_and_tokens_per_position() {
        let mut out = Vec::new();
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 0.0]).view([2, 2]);
        write_predictions(&mut out, &logits, &Tensor::from_slice(&[1i64, 1]), 10).unwrap();
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["index"], 10);
        assert_eq!(lines[0]["prediction"], 1);
        assert_eq!(lines[1]["prediction"], 0);
        let p = lines[0]["probabilities"].as_array().unwrap();
        assert!((p[1].as_f64().unwrap() - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-6);
        let mut out = Vec::new();
        let tokens = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([1, 2, 2]);
        write_predictions(&mut out, &tokens, &Tensor::from_slice(&[1i64, -100]).view([1, 2]), 0).unwrap();
        let line: serde_json::Value = serde_json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
        assert_eq!(line, serde_json::json!({"index": 0, "label": [1, -100], "prediction": [1, 0]}));
    }
}
