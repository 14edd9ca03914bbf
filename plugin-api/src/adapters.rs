//! Adapters from the component traits added in 1.6 (metrics, optimizers, schedulers, batch
//! transforms, models) to the callback box they cross the boundary in. Each answers its kind's
//! extension operations and ignores trainer events. Not a public API.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::__private::{config_error, into_ffi, parse_config, unsupported};
use crate::ffi::{
    tensors_from_borrowed, tensors_into_owned, CallbackBox, CallbackFfi, CallbackFfi_TO, ControlBits, EventFfi,
    ExtensionIn, ExtensionOp, ExtensionOut, FfiError,
};
use crate::optimizer::Parameter;
use crate::panic::catch;
use crate::{
    BatchContext, BatchTransform, Metric, Model, ModelInputs, Optimizer, PluginError, Schedule, Scheduler, Tensors,
};

fn answer(json: Value, tensors: Tensors) -> ExtensionOut {
    ExtensionOut { json: json.to_string().into(), tensors: tensors_into_owned(tensors) }
}

fn done() -> ExtensionOut {
    ExtensionOut { json: "null".into(), tensors: RVec::new() }
}

fn read_json(input: &ExtensionIn<'_>, what: &str) -> Result<Value, PluginError> {
    let text = input.json.as_str();
    serde_json::from_str(if text.trim().is_empty() { "null" } else { text })
        .map_err(|e| PluginError::new(format!("{what} from the host is not valid JSON: {e}")))
}

/// The borrowed tensors of a call.
///
/// # Safety
/// The host keeps them alive for the call (every extension call does).
unsafe fn borrowed(input: &ExtensionIn<'_>) -> Tensors {
    tensors_from_borrowed(input.tensors)
}

fn number(value: &Value, key: &str) -> Result<f64, PluginError> {
    value[key].as_f64().ok_or_else(|| PluginError::new(format!("the host sent no number '{key}'")))
}

fn boxed(adapter: impl CallbackFfi + 'static) -> CallbackBox {
    CallbackFfi_TO::from_value(adapter, TD_Opaque)
}

// ---- metrics

struct MetricAdapter<M>(M);

pub fn make_metric<C, M, F>(config_json: &str, ctor: F) -> Result<CallbackBox, FfiError>
where
    C: DeserializeOwned,
    M: Metric,
    F: FnOnce(C) -> Result<M, PluginError>,
{
    Ok(boxed(MetricAdapter(ctor(parse_config(config_json)?).map_err(config_error)?)))
}

impl<M: Metric> CallbackFfi for MetricAdapter<M> {
    fn on_event(&mut self, _: EventFfi<'_>, _: &mut ControlBits) -> RResult<(), FfiError> {
        RResult::ROk(())
    }

    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
        let metric = &mut self.0;
        let outcome = match op {
            ExtensionOp::METRIC_RESET => catch(|| metric.reset().map(|()| done())),
            ExtensionOp::METRIC_UPDATE => catch(|| {
                let (mut outputs, mut batch) = (Tensors::new(), Tensors::new());
                // SAFETY: the host keeps the tensors alive for the call.
                for (name, tensor) in unsafe { borrowed(&input) }.into_entries() {
                    if let Some(name) = name.strip_prefix("outputs.") {
                        outputs.insert(name, tensor);
                    } else if let Some(name) = name.strip_prefix("batch.") {
                        batch.insert(name, tensor);
                    }
                }
                metric.update(&outputs, &batch).map(|()| done())
            }),
            ExtensionOp::METRIC_COMPUTE => catch(|| {
                let results = metric.compute()?;
                let values: serde_json::Map<String, Value> =
                    results.values.iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
                Ok(answer(json!({"values": values, "report": results.report}), Tensors::new()))
            }),
            ExtensionOp::METRIC_TOTALS => catch(|| Ok(answer(Value::Null, metric.totals()))),
            ExtensionOp::METRIC_SET_TOTALS => catch(|| {
                // SAFETY: the host keeps the tensors alive for the call.
                let totals = unsafe { borrowed(&input) };
                metric.set_totals(totals).map(|()| done())
            }),
            _ => return unsupported(op),
        };
        into_ffi(outcome)
    }
}

// ---- optimizers

struct OptimizerAdapter<O>(O);

pub fn make_optimizer<C, O, F>(config_json: &str, ctor: F) -> Result<CallbackBox, FfiError>
where
    C: DeserializeOwned,
    O: Optimizer,
    F: FnOnce(C) -> Result<O, PluginError>,
{
    Ok(boxed(OptimizerAdapter(ctor(parse_config(config_json)?).map_err(config_error)?)))
}

impl<O: Optimizer> CallbackFfi for OptimizerAdapter<O> {
    fn on_event(&mut self, _: EventFfi<'_>, _: &mut ControlBits) -> RResult<(), FfiError> {
        RResult::ROk(())
    }

    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
        let optimizer = &mut self.0;
        let outcome = match op {
            ExtensionOp::OPTIMIZER_STEP => catch(|| {
                let request = read_json(&input, "the step")?;
                let lr = number(&request, "lr")?;
                let decays: Vec<f64> = request["weight_decay"]
                    .as_array()
                    .map(|v| v.iter().map(|d| d.as_f64().unwrap_or(0.0)).collect())
                    .unwrap_or_default();
                // SAFETY: the host keeps the parameters alive for the call.
                let tensors = unsafe { borrowed(&input) };
                let parameters: Vec<Parameter<'_>> = tensors
                    .iter()
                    .enumerate()
                    .map(|(i, (name, tensor))| Parameter {
                        name,
                        tensor,
                        weight_decay: decays.get(i).copied().unwrap_or(0.0),
                    })
                    .collect();
                optimizer.step(&parameters, lr).map(|()| done())
            }),
            ExtensionOp::OPTIMIZER_STATE_SAVE => catch(|| {
                let (json, tensors) = optimizer.state();
                Ok(answer(json, tensors))
            }),
            ExtensionOp::OPTIMIZER_STATE_LOAD => catch(|| {
                let state = read_json(&input, "the saved optimizer state")?;
                // SAFETY: the host keeps the tensors alive for the call.
                let tensors = unsafe { borrowed(&input) };
                optimizer.load_state(state, tensors).map(|()| done())
            }),
            _ => return unsupported(op),
        };
        into_ffi(outcome)
    }
}

// ---- schedulers

struct SchedulerAdapter<S>(S);

pub fn make_scheduler<C, S, F>(config_json: &str, ctor: F) -> Result<CallbackBox, FfiError>
where
    C: DeserializeOwned,
    S: Scheduler,
    F: FnOnce(C) -> Result<S, PluginError>,
{
    Ok(boxed(SchedulerAdapter(ctor(parse_config(config_json)?).map_err(config_error)?)))
}

impl<S: Scheduler> CallbackFfi for SchedulerAdapter<S> {
    fn on_event(&mut self, _: EventFfi<'_>, _: &mut ControlBits) -> RResult<(), FfiError> {
        RResult::ROk(())
    }

    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
        let scheduler = &mut self.0;
        let outcome = match op {
            ExtensionOp::SCHEDULER_LR => catch(|| {
                let request = read_json(&input, "the step")?;
                let schedule = Schedule {
                    base_lr: number(&request, "base_lr")?,
                    max_steps: number(&request, "max_steps")? as i64,
                    warmup_steps: number(&request, "warmup_steps")? as i64,
                };
                let lr = scheduler.lr(number(&request, "step")? as i64, &schedule)?;
                Ok(answer(json!({ "lr": lr }), Tensors::new()))
            }),
            ExtensionOp::SCHEDULER_METRIC => catch(|| {
                let value = number(&read_json(&input, "the metric")?, "value")?;
                scheduler.on_metric(value).map(|()| done())
            }),
            ExtensionOp::CALLBACK_STATE_SAVE => {
                catch(|| Ok(answer(scheduler.state().unwrap_or(Value::Null), Tensors::new())))
            }
            ExtensionOp::CALLBACK_STATE_LOAD => catch(|| {
                let state = read_json(&input, "the saved scheduler state")?;
                scheduler.load_state(state).map(|()| done())
            }),
            _ => return unsupported(op),
        };
        into_ffi(outcome)
    }
}

// ---- batch transforms

struct TransformAdapter<T>(T);

pub fn make_batch_transform<C, T, F>(config_json: &str, ctor: F) -> Result<CallbackBox, FfiError>
where
    C: DeserializeOwned,
    T: BatchTransform,
    F: FnOnce(C) -> Result<T, PluginError>,
{
    Ok(boxed(TransformAdapter(ctor(parse_config(config_json)?).map_err(config_error)?)))
}

impl<T: BatchTransform> CallbackFfi for TransformAdapter<T> {
    fn on_event(&mut self, _: EventFfi<'_>, _: &mut ControlBits) -> RResult<(), FfiError> {
        RResult::ROk(())
    }

    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
        let transform = &mut self.0;
        let outcome = match op {
            ExtensionOp::BATCH_TRANSFORM => catch(|| {
                let request = read_json(&input, "the batch context")?;
                let context = BatchContext {
                    global_step: number(&request, "global_step")? as i64,
                    epoch: number(&request, "epoch")?,
                    num_labels: request["num_labels"].as_i64(),
                };
                // SAFETY: the host keeps the batch alive for the call.
                let batch = unsafe { borrowed(&input) };
                Ok(answer(Value::Null, transform.transform(&batch, &context)?))
            }),
            _ => return unsupported(op),
        };
        into_ffi(outcome)
    }
}

// ---- models

struct ModelAdapter<M>(M);

pub fn make_model<C, M, F>(config_json: &str, ctor: F) -> Result<CallbackBox, FfiError>
where
    C: DeserializeOwned,
    M: Model,
    F: FnOnce(C) -> Result<M, PluginError>,
{
    Ok(boxed(ModelAdapter(ctor(parse_config(config_json)?).map_err(config_error)?)))
}

/// Splits `<prefix>.<name>` tensors by prefix.
fn split(tensors: Tensors, prefixes: [&str; 2]) -> [Tensors; 2] {
    let mut parts = [Tensors::new(), Tensors::new()];
    for (name, tensor) in tensors.into_entries() {
        for (part, prefix) in parts.iter_mut().zip(prefixes) {
            if let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) {
                part.insert(rest, tensor.shallow_clone());
            }
        }
    }
    parts
}

impl<M: Model> CallbackFfi for ModelAdapter<M> {
    fn on_event(&mut self, _: EventFfi<'_>, _: &mut ControlBits) -> RResult<(), FfiError> {
        RResult::ROk(())
    }

    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
        let model = &mut self.0;
        let outcome = match op {
            ExtensionOp::MODEL_INIT => catch(|| {
                let request = read_json(&input, "the model inputs")?;
                let fields = request["fields"]
                    .as_array()
                    .map(|fields| {
                        fields
                            .iter()
                            .filter_map(|f| {
                                let name = f[0].as_str()?.to_owned();
                                let shape = f[1].as_array()?.iter().filter_map(Value::as_i64).collect();
                                Some((name, shape))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let inputs = ModelInputs { fields, num_labels: request["num_labels"].as_i64() };
                let weights = model.init(&inputs)?;
                let mut out = Tensors::new();
                for (prefix, part) in [("parameter", weights.parameters), ("buffer", weights.buffers)] {
                    for (name, tensor) in part.into_entries() {
                        out.insert(format!("{prefix}.{name}"), tensor);
                    }
                }
                Ok(answer(Value::Null, out))
            }),
            ExtensionOp::MODEL_FORWARD => catch(|| {
                let train = read_json(&input, "the forward request")?["train"].as_bool().unwrap_or(false);
                // SAFETY: the host keeps the weights and the batch alive for the call.
                let [weights, batch] = split(unsafe { borrowed(&input) }, ["weight", "batch"]);
                Ok(answer(Value::Null, model.forward(&weights, &batch, train)?))
            }),
            _ => return unsupported(op),
        };
        into_ffi(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{tensor_views, tensors_from_owned, ErrorKind};
    use crate::{MetricResults, ModelWeights};
    use tch::Tensor;

    fn call(adapter: &mut dyn CallbackFfi, op: ExtensionOp, json: &str, tensors: &Tensors) -> (Value, Tensors) {
        let views = tensor_views(tensors);
        let input = ExtensionIn { json: json.into(), tensors: views.as_slice().into() };
        let out = adapter.extension(op, input).unwrap();
        // SAFETY: the adapter handed these over.
        let tensors = unsafe { tensors_from_owned(out.tensors) };
        (serde_json::from_str(out.json.as_str()).unwrap(), tensors)
    }

    /// Counts the batch rows it sees and the outputs' names.
    #[derive(Default)]
    struct Rows {
        rows: i64,
        names: Vec<String>,
    }

    impl Metric for Rows {
        fn reset(&mut self) -> Result<(), PluginError> {
            self.rows = 0;
            Ok(())
        }
        fn update(&mut self, outputs: &Tensors, batch: &Tensors) -> Result<(), PluginError> {
            self.rows += batch.require("labels")?.size()[0];
            self.names = outputs.names().chain(batch.names()).map(str::to_owned).collect();
            Ok(())
        }
        fn compute(&mut self) -> Result<MetricResults, PluginError> {
            let mut results = MetricResults::default();
            results.values.insert("rows", self.rows as f64);
            results.report = Some(json!({ "names": self.names }));
            Ok(results)
        }
    }

    #[test]
    fn metric_calls_split_outputs_from_the_batch_and_answer_values_and_report() {
        let mut adapter = MetricAdapter(Rows::default());
        let mut tensors = Tensors::new();
        tensors.insert("outputs.logits", Tensor::zeros([3, 2], tch::kind::FLOAT_CPU));
        tensors.insert("batch.labels", Tensor::zeros([3], tch::kind::INT64_CPU));
        for _ in 0..2 {
            call(&mut adapter, ExtensionOp::METRIC_UPDATE, "{}", &tensors);
        }
        let (answer, _) = call(&mut adapter, ExtensionOp::METRIC_COMPUTE, "{}", &Tensors::new());
        assert_eq!(answer, json!({"values": {"rows": 6.0}, "report": {"names": ["logits", "labels"]}}));
        call(&mut adapter, ExtensionOp::METRIC_RESET, "{}", &Tensors::new());
        let (answer, _) = call(&mut adapter, ExtensionOp::METRIC_COMPUTE, "{}", &Tensors::new());
        assert_eq!(answer["values"]["rows"], 0.0);
        let views = tensor_views(&tensors);
        let input = ExtensionIn { json: "".into(), tensors: views.as_slice().into() };
        assert_eq!(adapter.extension(ExtensionOp::OPTIMIZER_STEP, input).unwrap_err().kind, ErrorKind::UNSUPPORTED);
    }

    /// Plain SGD with decoupled weight decay, recording what it was given.
    #[derive(Default)]
    struct Sgd {
        seen: Vec<(String, f64)>,
    }

    impl Optimizer for Sgd {
        fn step(&mut self, parameters: &[Parameter<'_>], lr: f64) -> Result<(), PluginError> {
            for p in parameters {
                self.seen.push((p.name.to_owned(), p.weight_decay));
                let mut t = p.tensor.shallow_clone();
                let _ = t.g_mul_scalar_(1.0 - lr * p.weight_decay);
            }
            Ok(())
        }
        fn state(&self) -> (Value, Tensors) {
            (json!({ "seen": self.seen.len() }), Tensors::new())
        }
        fn load_state(&mut self, _: Value, _: Tensors) -> Result<(), PluginError> {
            Ok(())
        }
    }

    #[test]
    fn optimizer_steps_get_each_parameter_with_its_weight_decay() {
        let mut adapter = OptimizerAdapter(Sgd::default());
        let mut params = Tensors::new();
        params.insert("w", Tensor::ones([2], tch::kind::FLOAT_CPU));
        params.insert("b", Tensor::ones([2], tch::kind::FLOAT_CPU));
        call(&mut adapter, ExtensionOp::OPTIMIZER_STEP, r#"{"lr": 0.5, "weight_decay": [0.1, 0.0]}"#, &params);
        assert_eq!(adapter.0.seen, [("w".to_owned(), 0.1), ("b".to_owned(), 0.0)]);
        assert!((params.get("w").unwrap().double_value(&[0]) - 0.95).abs() < 1e-7, "updated in place");
        let (state, _) = call(&mut adapter, ExtensionOp::OPTIMIZER_STATE_SAVE, "{}", &Tensors::new());
        assert_eq!(state, json!({"seen": 2}));
    }

    struct Halving;

    impl Scheduler for Halving {
        fn lr(&mut self, step: i64, schedule: &Schedule) -> Result<f64, PluginError> {
            Ok(schedule.base_lr * 0.5f64.powi(step as i32) + schedule.max_steps as f64 * 0.0)
        }
    }

    #[test]
    fn schedulers_answer_the_rate_and_stateless_ones_save_null() {
        let mut adapter = SchedulerAdapter(Halving);
        let request = r#"{"step": 2, "base_lr": 0.8, "max_steps": 10, "warmup_steps": 0}"#;
        let (answer, _) = call(&mut adapter, ExtensionOp::SCHEDULER_LR, request, &Tensors::new());
        assert_eq!(answer, json!({"lr": 0.2}));
        let (state, _) = call(&mut adapter, ExtensionOp::CALLBACK_STATE_SAVE, "", &Tensors::new());
        assert_eq!(state, Value::Null);
    }

    /// y = x w: one parameter, one buffer counting forward passes.
    struct Linear;

    impl Model for Linear {
        fn init(&mut self, inputs: &ModelInputs) -> Result<ModelWeights, PluginError> {
            let features = inputs.shape("input")?[0];
            let mut weights = ModelWeights::default();
            weights.parameters.insert("layer.w", Tensor::ones([features, 2], tch::kind::FLOAT_CPU));
            weights.buffers.insert("count", Tensor::zeros([1], tch::kind::FLOAT_CPU));
            Ok(weights)
        }
        fn forward(&mut self, weights: &Tensors, batch: &Tensors, _train: bool) -> Result<Tensors, PluginError> {
            let _ = weights.require("count")?.shallow_clone().g_add_scalar_(1.0);
            let mut out = Tensors::new();
            out.insert("logits", batch.require("input")?.matmul(weights.require("layer.w")?));
            Ok(out)
        }
    }

    #[test]
    fn models_declare_prefixed_weights_and_get_them_back_by_name() {
        let mut adapter = ModelAdapter(Linear);
        let request = r#"{"fields": [["input", [3]], ["labels", []]], "num_labels": 2}"#;
        let (_, weights) = call(&mut adapter, ExtensionOp::MODEL_INIT, request, &Tensors::new());
        assert_eq!(weights.names().collect::<Vec<_>>(), ["parameter.layer.w", "buffer.count"]);
        let count = Tensor::zeros([1], tch::kind::FLOAT_CPU);
        let mut tensors = Tensors::new();
        tensors.insert("weight.layer.w", Tensor::ones([3, 2], tch::kind::FLOAT_CPU) * 2.0);
        tensors.insert("weight.count", count.shallow_clone());
        tensors.insert("batch.input", Tensor::ones([4, 3], tch::kind::FLOAT_CPU));
        let (_, outputs) = call(&mut adapter, ExtensionOp::MODEL_FORWARD, r#"{"train": true}"#, &tensors);
        assert_eq!(outputs.get("logits").unwrap().size(), [4, 2]);
        assert_eq!(outputs.get("logits").unwrap().double_value(&[0, 0]), 6.0);
        assert_eq!(count.double_value(&[0]), 1.0, "buffers are the host's, updated in place");
        let empty = Tensors::new();
        let views = tensor_views(&empty);
        let input =
            ExtensionIn { json: r#"{"fields": [], "num_labels": null}"#.into(), tensors: views.as_slice().into() };
        let error = adapter.extension(ExtensionOp::MODEL_INIT, input).unwrap_err();
        assert_eq!(
            (error.kind, error.message.as_str()),
            (ErrorKind::BAD_CONFIG, "the data has no field 'input' (fields: )")
        );
    }
}
