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
