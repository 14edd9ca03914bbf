//! Support code for [`export_plugin!`](crate::export_plugin): adapters from the safe traits
//! to the FFI types. Not a public API.

pub use abi_stable;

use abi_stable::{
    library::{CheckTypeLayout, LibHeader, RootModuleResult},
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RString, RVec},
};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

use crate::callback::{Callback, Metrics, TrainerState, TrainingArguments};
use crate::ffi::{
    control_from_bits, into_ptr, state_from_ffi, tensors_from_borrowed, tensors_into_owned, write_control_bits,
    CallbackBox, CallbackFfi, CallbackFfi_TO, ComponentInfo, ComponentKind, ControlBits, ErrorKind, Event, EventFfi,
    ExtensionIn, ExtensionOp, ExtensionOut, FfiError, LossBox, LossFfi, LossFfi_TO, NamedTensor, PluginInfo,
    PluginModule, PluginModuleRef, TensorPtr,
};
use crate::panic::catch;
use crate::{Loss, PluginError};

type CreateLoss =
    extern "C" fn(abi_stable::std_types::RStr<'_>, abi_stable::std_types::RStr<'_>) -> RResult<LossBox, FfiError>;
type Extension = extern "C" fn(ExtensionOp, ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError>;
type CreateCallback = extern "C" fn(
    abi_stable::std_types::RStr<'_>,
    abi_stable::std_types::RStr<'_>,
    abi_stable::std_types::RStr<'_>,
) -> RResult<CallbackBox, FfiError>;

/// The library header for a plugin's root module loader.
pub const fn lib_header(loader: extern "C" fn() -> RootModuleResult) -> LibHeader {
    // SAFETY: `loader` is made by `export_plugin!` and returns, through
    // `__call_root_module_loader`, a `PluginModuleRef` erased as abi_stable requires.
    unsafe { LibHeader::from_constructor::<PluginModuleRef>(loader, CheckTypeLayout::Yes) }
}

pub fn root_module(
    info: extern "C" fn() -> PluginInfo,
    create_loss: CreateLoss,
    create_callback: CreateCallback,
    extension: Extension,
) -> PluginModuleRef {
    PluginModule { info, create_loss, create_callback, extension }.leak_into_prefix()
}

/// The answer to an extension operation this version does not know.
pub fn unsupported(op: ExtensionOp) -> RResult<ExtensionOut, FfiError> {
    RResult::RErr(ffi_error(ErrorKind::UNSUPPORTED, format!("unsupported extension operation {}", op.0)))
}

/// Plugin-wide extension operations: none yet.
pub extern "C" fn module_extension(op: ExtensionOp, _input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
    unsupported(op)
}

/// One component for [`plugin_info`]: its name and, when its config type derives
/// `JsonSchema`, the JSON schema of its config keys.
pub type ComponentDecl = (&'static str, Option<String>);

pub use crate::adapters::{make_batch_transform, make_metric, make_model, make_optimizer, make_scheduler};

/// The components of a plugin for [`plugin_info`], by kind.
#[derive(Default)]
pub struct Declared<'a> {
    pub losses: &'a [ComponentDecl],
    pub callbacks: &'a [ComponentDecl],
    pub metrics: &'a [ComponentDecl],
    pub optimizers: &'a [ComponentDecl],
    pub schedulers: &'a [ComponentDecl],
    pub batch_transforms: &'a [ComponentDecl],
    pub models: &'a [ComponentDecl],
}

pub fn plugin_info(name: &str, version: &str, declared: Declared<'_>) -> PluginInfo {
    let component = |kind, (name, schema): &ComponentDecl| {
        let extra = match schema {
            Some(schema) => format!("{{\"config_schema\":{schema}}}"),
            None => "{}".to_owned(),
        };
        ComponentInfo { kind, name: (*name).into(), extra_json: extra.into() }
    };
    let kinds = [
        (ComponentKind::LOSS, declared.losses),
        (ComponentKind::CALLBACK, declared.callbacks),
        (ComponentKind::METRIC, declared.metrics),
        (ComponentKind::OPTIMIZER, declared.optimizers),
        (ComponentKind::SCHEDULER, declared.schedulers),
        (ComponentKind::BATCH_TRANSFORM, declared.batch_transforms),
        (ComponentKind::MODEL, declared.models),
    ];
    let components: RVec<ComponentInfo> =
        kinds.iter().flat_map(|(kind, decls)| decls.iter().map(|c| component(*kind, c))).collect();
    PluginInfo {
        name: name.into(),
        version: version.into(),
        api_version: crate::API_VERSION.into(),
        torch_version: crate::TORCH_VERSION.into(),
        components,
        extra_json: "{}".into(),
    }
}

/// The config type a component constructor takes, for [`DeclaredConfig`] /
/// [`UndeclaredConfig`] to pick from (autoref specialisation: the schema when the type
/// derives `JsonSchema`, none otherwise, so configs without it still compile).
pub struct ConfigType<C>(PhantomData<C>);

pub fn config_type_of<C, T, F: FnOnce(C) -> Result<T, PluginError>>(_ctor: &F) -> ConfigType<C> {
    ConfigType(PhantomData)
}

pub trait DeclaredConfig {
    fn config_schema(&self) -> Option<String>;
}

impl<C: schemars::JsonSchema> DeclaredConfig for ConfigType<C> {
    fn config_schema(&self) -> Option<String> {
        Some(schemars::schema_for!(C).to_value().to_string())
    }
}

pub trait UndeclaredConfig {
    fn config_schema(&self) -> Option<String>;
}

impl<C> UndeclaredConfig for &ConfigType<C> {
    fn config_schema(&self) -> Option<String> {
        None
    }
}

fn ffi_error(kind: ErrorKind, message: impl Into<String>) -> FfiError {
    FfiError { kind, message: RString::from(message.into()) }
}

pub fn unknown_component(kind: &str, name: &str) -> FfiError {
    ffi_error(ErrorKind::UNKNOWN_COMPONENT, format!("no {kind} named '{name}'"))
}

/// Runs a component constructor, catching panics.
pub fn guard_create<T>(create: impl FnOnce() -> Result<T, FfiError>) -> RResult<T, FfiError> {
    match catch(create) {
        Ok(result) => result.into(),
        Err(panic) => RResult::RErr(ffi_error(ErrorKind::PANICKED, panic)),
    }
}

/// Parses a component's JSON config into its config type; errors name the key path.
pub(crate) fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, FfiError> {
    let value: serde_json::Value = serde_json::from_str(if json.trim().is_empty() { "{}" } else { json })
        .map_err(|e| ffi_error(ErrorKind::BAD_CONFIG, format!("config is not valid JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let inner = inner.to_string();
        let message =
            if path == "." || inner.starts_with("unknown field") { inner } else { format!("{path}: {inner}") };
        ffi_error(ErrorKind::BAD_CONFIG, message)
    })
}

pub(crate) fn config_error(error: PluginError) -> FfiError {
    ffi_error(ErrorKind::BAD_CONFIG, error.message().to_owned())
}

pub fn make_loss<C, L, F>(config_json: &str, ctor: F) -> Result<LossBox, FfiError>
where
    C: DeserializeOwned,
    L: Loss,
    F: FnOnce(C) -> Result<L, PluginError>,
{
    let loss = ctor(parse_config(config_json)?).map_err(config_error)?;
    Ok(LossFfi_TO::from_value(LossAdapter(loss), TD_Opaque))
}

pub fn make_callback<C, K, F>(config_json: &str, args_json: &str, ctor: F) -> Result<CallbackBox, FfiError>
where
    C: DeserializeOwned,
    K: Callback,
    F: FnOnce(C) -> Result<K, PluginError>,
{
    let callback = ctor(parse_config(config_json)?).map_err(config_error)?;
    let args =
        TrainingArguments::from_json(args_json).map_err(|e| ffi_error(ErrorKind::FAILED, e.message().to_owned()))?;
    Ok(CallbackFfi_TO::from_value(CallbackAdapter { callback, args, last_state: TrainerState::default() }, TD_Opaque))
}

/// Turns the result of plugin code (or its panic) into an FFI result.
pub(crate) fn into_ffi<T>(outcome: Result<Result<T, PluginError>, String>) -> RResult<T, FfiError> {
    match outcome {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(error)) => {
            let kind = if error.is_config() { ErrorKind::BAD_CONFIG } else { ErrorKind::FAILED };
            RResult::RErr(ffi_error(kind, error.message().to_owned()))
        }
        Err(panic) => RResult::RErr(ffi_error(ErrorKind::PANICKED, panic)),
    }
}

struct LossAdapter<L>(L);

impl<L: Loss> LossFfi for LossAdapter<L> {
    fn compute_loss(
        &mut self,
        outputs: RSlice<'_, NamedTensor<'_>>,
        batch: RSlice<'_, NamedTensor<'_>>,
        num_items_in_batch: ROption<i64>,
    ) -> RResult<TensorPtr, FfiError> {
        into_ffi(catch(|| {
            // SAFETY: the host keeps every tensor in `outputs` and `batch` alive for the call.
            let (outputs, batch) = unsafe { (tensors_from_borrowed(outputs), tensors_from_borrowed(batch)) };
            self.0.compute_loss(&outputs, &batch, num_items_in_batch.into_option()).map(into_ptr)
        }))
    }

    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
        let loss = &mut self.0;
        match op {
            ExtensionOp::LOSS_STATE_SAVE => into_ffi(catch(|| {
                let json = loss.state().unwrap_or(serde_json::Value::Null).to_string();
                Ok(ExtensionOut { json: json.into(), tensors: RVec::new() })
            })),
            ExtensionOp::LOSS_STATE_LOAD => into_ffi(catch(|| {
                let value = serde_json::from_str(input.json.as_str())
                    .map_err(|e| PluginError::new(format!("saved loss state is not valid JSON: {e}")))?;
                loss.load_state(value)?;
                Ok(ExtensionOut { json: "null".into(), tensors: RVec::new() })
            })),
            ExtensionOp::LOSS_INPUTS => into_ffi(catch(|| {
                let json = serde_json::json!({ "hidden_states": loss.takes_hidden_states() }).to_string();
                Ok(ExtensionOut { json: json.into(), tensors: RVec::new() })
            })),
            _ => unsupported(op),
        }
    }
}

struct CallbackAdapter<K> {
    callback: K,
    args: TrainingArguments,
    /// The state of the last event, for the extension operations (which carry none).
    last_state: TrainerState,
}

impl<K: Callback> CallbackFfi for CallbackAdapter<K> {
    fn on_event(&mut self, event: EventFfi<'_>, bits: &mut ControlBits) -> RResult<(), FfiError> {
        let state = state_from_ffi(&event.state);
        self.last_state = state.clone();
        let mut control = control_from_bits(*bits);
        let args = &self.args;
        let cb = &mut self.callback;
        let outcome = catch(|| {
            let metrics =
                || -> Metrics { event.metrics.iter().map(|m| (m.name.as_str().to_owned(), m.value)).collect() };
            let (s, c) = (&state, &mut control);
            match event.event {
                Event::INIT_END => cb.on_init_end(args, s, c),
                Event::TRAIN_BEGIN => cb.on_train_begin(args, s, c),
                Event::TRAIN_END => cb.on_train_end(args, s, c),
                Event::EPOCH_BEGIN => cb.on_epoch_begin(args, s, c),
                Event::EPOCH_END => cb.on_epoch_end(args, s, c),
                Event::STEP_BEGIN => cb.on_step_begin(args, s, c),
                Event::SUBSTEP_END => cb.on_substep_end(args, s, c),
                Event::PRE_OPTIMIZER_STEP => cb.on_pre_optimizer_step(args, s, c),
                Event::OPTIMIZER_STEP => cb.on_optimizer_step(args, s, c),
                Event::STEP_END => cb.on_step_end(args, s, c),
                Event::EVALUATE => cb.on_evaluate(args, s, c, &metrics()),
                Event::PREDICT => cb.on_predict(args, s, c, &metrics()),
                Event::SAVE => cb.on_save(args, s, c),
                Event::LOG => cb.on_log(args, s, c, &metrics()),
                Event::PREDICTION_STEP => cb.on_prediction_step(args, s, c),
                // An event added after this plugin was built: nothing to do.
                _ => Ok(()),
            }
        });
        let result = into_ffi(outcome);
        if result.is_ok() {
            write_control_bits(&control, bits);
        }
        result
    }

    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError> {
        let callback = &mut self.callback;
        match op {
            ExtensionOp::CALLBACK_STATE_SAVE => into_ffi(catch(|| {
                let json = callback.state().unwrap_or(serde_json::Value::Null).to_string();
                Ok(ExtensionOut { json: json.into(), tensors: tensors_into_owned(callback.state_tensors()) })
            })),
            ExtensionOp::CALLBACK_STATE_LOAD => into_ffi(catch(|| {
                let value = serde_json::from_str(input.json.as_str())
                    .map_err(|e| PluginError::new(format!("saved callback state is not valid JSON: {e}")))?;
                callback.load_state(value)?;
                if !input.tensors.is_empty() {
                    // SAFETY: the host keeps the tensors alive for the call.
                    callback.load_state_tensors(unsafe { tensors_from_borrowed(input.tensors) })?;
                }
                Ok(ExtensionOut { json: "null".into(), tensors: RVec::new() })
            })),
            ExtensionOp::CALLBACK_PARAMETERS => {
                let (args, state) = (&self.args, &self.last_state);
                into_ffi(catch(|| {
                    // SAFETY: the host keeps the parameters alive for the call.
                    let parameters = unsafe { tensors_from_borrowed(input.tensors) };
                    callback.on_parameters(args, state, &parameters)?;
                    Ok(ExtensionOut { json: "null".into(), tensors: RVec::new() })
                }))
            }
            ExtensionOp::CALLBACK_EVAL_WEIGHTS => {
                let (args, state) = (&self.args, &self.last_state);
                into_ffi(catch(|| {
                    let weights = callback.evaluation_weights(args, state)?;
                    let tensors = weights.map(tensors_into_owned).unwrap_or_default();
                    Ok(ExtensionOut { json: "null".into(), tensors })
                }))
            }
            ExtensionOp::CALLBACK_WANTS => {
                let json = serde_json::json!({
                    "gradients": K::WANTS_GRADIENTS,
                    "extra_logs": K::WANTS_EXTRA_LOGS,
                    "parameters": K::WANTS_PARAMETERS,
                });
                RResult::ROk(ExtensionOut { json: json.to_string().into(), tensors: RVec::new() })
            }
            ExtensionOp::CALLBACK_GRADIENTS => {
                let (args, state) = (&self.args, &self.last_state);
                into_ffi(catch(|| {
                    // SAFETY: the host keeps the gradients alive for the call.
                    let gradients = unsafe { tensors_from_borrowed(input.tensors) };
                    let skip = callback.on_gradients(args, state, &gradients)?;
                    let json = serde_json::json!({ "skip_step": skip }).to_string();
                    Ok(ExtensionOut { json: json.into(), tensors: RVec::new() })
                }))
            }
            ExtensionOp::CALLBACK_EXTRA_LOGS => {
                let (args, state) = (&self.args, &self.last_state);
                into_ffi(catch(|| {
                    let logs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(input.json.as_str())
                        .map_err(|e| PluginError::new(format!("logs from the host are not a JSON object: {e}")))?;
                    let metrics: Metrics = logs.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect();
                    let extra: serde_json::Map<String, serde_json::Value> =
                        callback.extra_logs(args, state, &metrics)?.into_iter().map(|(k, v)| (k, v.into())).collect();
                    Ok(ExtensionOut { json: serde_json::Value::Object(extra).to_string().into(), tensors: RVec::new() })
                }))
            }
            _ => unsupported(op),
        }
    }
}

// The export macro hard-codes abi_stable's root module symbol name; keep them in step.
#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, "_1as_0lib_1header_0root_bmodule_bloader");
    }
}

#[cfg(test)]
mod adapter_tests {
    use super::*;
    use crate::ffi::{CallbackFfi, StateFfi};
    use crate::TrainerControl;

    struct Counter(u64);

    impl Callback for Counter {
        fn on_step_end(
            &mut self,
            _: &TrainingArguments,
            _: &TrainerState,
            c: &mut TrainerControl,
        ) -> Result<(), PluginError> {
            self.0 += 1;
            c.should_save = true;
            Ok(())
        }
        fn state(&self) -> Option<serde_json::Value> {
            Some(serde_json::json!(self.0))
        }
        fn load_state(&mut self, state: serde_json::Value) -> Result<(), PluginError> {
            self.0 = state.as_u64().ok_or_else(|| PluginError::new("not a count"))?;
            Ok(())
        }
    }

    fn event(code: Event, numbers: &[f64]) -> EventFfi<'_> {
        EventFfi {
            event: code,
            state: StateFfi { numbers: numbers.into(), best_model_checkpoint: "".into() },
            metrics: RSlice::from_slice(&[]),
        }
    }

    fn input(json: &str) -> ExtensionIn<'_> {
        ExtensionIn { json: json.into(), tensors: RSlice::from_slice(&[]) }
    }

    #[test]
    fn events_it_does_not_know_are_ignored() {
        let mut adapter = CallbackAdapter {
            callback: Counter(0),
            args: TrainingArguments::default(),
            last_state: TrainerState::default(),
        };
        let mut bits = ControlBits::default();
        assert!(adapter.on_event(event(Event(999), &[]), &mut bits).is_ok());
        assert_eq!((adapter.callback.0, bits.0), (0, 0));
        assert!(adapter.on_event(event(Event::STEP_END, &[]), &mut bits).is_ok());
        assert_eq!((adapter.callback.0, bits.0), (1, ControlBits::SHOULD_SAVE));
    }

    #[test]
    fn state_round_trips_and_unknown_operations_are_unsupported() {
        let mut adapter = CallbackAdapter {
            callback: Counter(41),
            args: TrainingArguments::default(),
            last_state: TrainerState::default(),
        };
        let saved = adapter.extension(ExtensionOp::CALLBACK_STATE_SAVE, input("")).unwrap();
        assert_eq!(saved.json.as_str(), "41");
        adapter.extension(ExtensionOp::CALLBACK_STATE_LOAD, input("5")).unwrap();
        assert_eq!(adapter.callback.0, 5);
        let err = adapter.extension(ExtensionOp(77), input("")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UNSUPPORTED);
        let wants = adapter.extension(ExtensionOp::CALLBACK_WANTS, input("")).unwrap();
        assert_eq!(wants.json.as_str(), r#"{"extra_logs":false,"gradients":false,"parameters":false}"#);
    }
}
