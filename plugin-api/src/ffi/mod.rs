//! The plugin ABI: the types that cross the boundary between the host and a plugin
//! library, and the conversions between them and the types plugin authors use. Hidden from
//! the documentation: plugin code never needs it (`export_plugin!` and the host do).
//!
//! Everything here is checked by `abi_stable` when the host loads a plugin, so its shape is
//! the plugin ABI.
//!
//! The shape is frozen for a whole major version. abi_stable refuses to load a library
//! whose prefix types (the root module, `sabi_trait` vtables) have fewer fields than the
//! host's, so adding a field or a method would lock out every plugin built before it
//! (abi_stable issue #118). The API grows instead through values, which the checker does
//! not see:
//! - `Event`, `ControlBits`, `ErrorKind`, `ComponentKind` and `ExtensionOp` are integers
//!   with named values; new values may be added. A plugin ignores events it does not know
//!   and answers `ErrorKind::UNSUPPORTED` to extension operations it does not know.
//! - Trainer state travels as a slice of numbers indexed by `StateIndex`: new fields are
//!   appended, and a plugin reads only the indices it knows (missing ones read as absent).
//! - New operations go through the `extension` entry points (module, loss, callback): an
//!   operation code, JSON and named tensors in, JSON and named tensors out.
//! - Free-form metadata travels as JSON, whose unknown keys are ignored.
//!
//! History: 1.0.0, the frozen shape (kept in tests/compat/plugin-api-1.0.0); 1.1.0, state
//! operations for callbacks and losses (`ExtensionOp::*_STATE_SAVE`/`_LOAD`) and the state
//! field `is_hyper_param_search`; 1.2.0, callbacks that see gradients before each optimizer
//! step (and may skip it) and callbacks that add entries to the logs; 1.3.0, callbacks that
//! see the parameters after each optimizer step, give the weights to evaluate with, and
//! keep tensors in their state; 1.4.0, components declare their config keys (a JSON schema
//! in `ComponentInfo::extra_json`); 1.5.0, `TrainingArguments::best_metric` (no ABI change);
//! 1.6.0, five new component kinds (metrics, optimizers, schedulers, batch transforms,
//! models),
//! created through `create_callback` under a kind prefix and driven by new extension
//! operations.

// sabi_trait expands to impls inside a const block; harmless, and not ours to change.
#![allow(non_local_definitions)]

mod convert;

pub use convert::*;

use std::ffi::c_void;

use abi_stable::{
    sabi_trait,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// The `abi_stable` root module that every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Who the plugin is, what it was built against, and what it provides.
    pub info: extern "C" fn() -> PluginInfo,
    /// Builds the loss component `name` from its JSON config.
    pub create_loss: extern "C" fn(name: RStr<'_>, config_json: RStr<'_>) -> RResult<LossBox, FfiError>,
    /// Builds the callback component `name` from its JSON config; `args_json` holds the
    /// resolved training arguments (HF TrainingArguments names).
    pub create_callback:
        extern "C" fn(name: RStr<'_>, config_json: RStr<'_>, args_json: RStr<'_>) -> RResult<CallbackBox, FfiError>,
    /// Plugin-wide operations added after 1.0 (see `ExtensionOp`).
    #[sabi(last_prefix_field)]
    pub extension: extern "C" fn(op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError>,
}

impl abi_stable::library::RootModule for PluginModuleRef {
    abi_stable::declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "host_plugin";
    const NAME: &'static str = "host_plugin";
    const VERSION_STRINGS: abi_stable::sabi_types::VersionStrings = abi_stable::package_version_strings!();
}

/// Identity of a plugin library.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginInfo {
    /// The plugin's own name and version (its crate's, by default).
    pub name: RString,
    pub version: RString,
    /// The plugin-api version the plugin was compiled against.
    pub api_version: RString,
    /// The libtorch version the plugin was compiled against (e.g. `2.11.0+cu130`).
    pub torch_version: RString,
    pub components: RVec<ComponentInfo>,
    /// A JSON object for metadata added in later versions; `{}` when there is none.
    pub extra_json: RString,
}

/// One loss or callback that a plugin provides.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct ComponentInfo {
    pub kind: ComponentKind,
    pub name: RString,
    /// A JSON object for metadata added in later versions; `{}` when there is none.
    pub extra_json: RString,
}

/// What a component is.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentKind(pub u32);

impl ComponentKind {
    pub const LOSS: Self = Self(0);
    pub const CALLBACK: Self = Self(1);
    /// Since 1.6. The kinds below are created through `create_callback`, with the name
    /// prefixed by the kind (`metric:accuracy`, see [`ComponentKind::prefix`]); their
    /// calls go through the callback box's `extension` entry point.
    pub const METRIC: Self = Self(2);
    pub const OPTIMIZER: Self = Self(3);
    pub const SCHEDULER: Self = Self(4);
    pub const BATCH_TRANSFORM: Self = Self(5);
    pub const MODEL: Self = Self(6);

    /// What goes before the component's name in `create_callback` for the kinds added in
    /// 1.6 (`None` for losses and callbacks, which keep their own entry points).
    pub fn prefix(self) -> Option<&'static str> {
        match self {
            Self::METRIC => Some("metric:"),
            Self::OPTIMIZER => Some("optimizer:"),
            Self::SCHEDULER => Some("scheduler:"),
            Self::BATCH_TRANSFORM => Some("batch_transform:"),
            Self::MODEL => Some("model:"),
            _ => None,
        }
    }
}

/// An error returned across the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiError {
    pub kind: ErrorKind,
    pub message: RString,
}

/// Why a plugin call failed; the host words its message and exit code by it.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The plugin returned an error.
    pub const FAILED: Self = Self(0);
    /// The plugin panicked; the panic was caught inside the plugin.
    pub const PANICKED: Self = Self(1);
    /// The user's config for a component was rejected (a user mistake).
    pub const BAD_CONFIG: Self = Self(2);
    /// No component of that kind and name in this plugin (a user mistake).
    pub const UNKNOWN_COMPONENT: Self = Self(3);
    /// The plugin does not know this extension operation (it was built before it existed).
    pub const UNSUPPORTED: Self = Self(4);
}

/// A borrowed libtorch tensor: a `torch::Tensor*` as tch holds it. The host and the plugin
/// share one libtorch, so both sides may use it; ownership rules are per call.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct TensorPtr(pub *mut c_void);

/// A named tensor in the model outputs or the batch.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct NamedTensor<'a> {
    pub name: RStr<'a>,
    pub tensor: TensorPtr,
}

/// A named tensor whose ownership passes to the receiver with the value it is part of.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct OwnedTensor {
    pub name: RString,
    pub tensor: TensorPtr,
}

/// An operation added to the API after its shape was frozen; see the module docs.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionOp(pub u32);

impl ExtensionOp {
    /// Since 1.1, callbacks: returns the callback's state as JSON (`null` when stateless).
    pub const CALLBACK_STATE_SAVE: Self = Self(1);
    /// Since 1.1, callbacks: restores the state given as JSON.
    pub const CALLBACK_STATE_LOAD: Self = Self(2);
    /// Since 1.1, losses: returns the loss's state as JSON (`null` when stateless).
    pub const LOSS_STATE_SAVE: Self = Self(3);
    /// Since 1.1, losses: restores the state given as JSON.
    pub const LOSS_STATE_LOAD: Self = Self(4);
    /// Since 1.2, callbacks: which optional inputs the callback wants, as JSON
    /// (`{"gradients": bool, "extra_logs": bool}`; since 1.3 also `"parameters": bool`).
    pub const CALLBACK_WANTS: Self = Self(5);
    /// Since 1.2, callbacks: the gradients (named tensors, read-only) before an optimizer
    /// step; answers `{"skip_step": bool}`.
    pub const CALLBACK_GRADIENTS: Self = Self(6);
    /// Since 1.2, callbacks: the logs about to be written (a JSON object); answers an
    /// object of entries to add.
    pub const CALLBACK_EXTRA_LOGS: Self = Self(7);
    /// Since 1.3, callbacks: the parameters (named tensors, read-only) after each optimizer
    /// step.
    pub const CALLBACK_PARAMETERS: Self = Self(8);
    /// Since 1.3, callbacks: before an evaluation, the weights to evaluate with (named
    /// tensors, owned by the host), or none; the host puts them in place and restores the
    /// trained weights afterwards.
    pub const CALLBACK_EVAL_WEIGHTS: Self = Self(9);
    /// Since 1.6, metrics: an evaluation starts.
    pub const METRIC_RESET: Self = Self(10);
    /// Since 1.6, metrics: one evaluation batch; tensors named `outputs.<name>` and
    /// `batch.<name>`.
    pub const METRIC_UPDATE: Self = Self(11);
    /// Since 1.6, metrics: the results, `{"values": {name: number}, "report": any}`.
    pub const METRIC_COMPUTE: Self = Self(12);
    /// Since 1.6, metrics: the running totals to sum across ranks (tensors out).
    pub const METRIC_TOTALS: Self = Self(13);
    /// Since 1.6, metrics: the totals summed across ranks (tensors in).
    pub const METRIC_SET_TOTALS: Self = Self(14);
    /// Since 1.7, losses: which outputs the loss takes, `{"hidden_states": bool}`.
    pub const LOSS_INPUTS: Self = Self(15);
    /// Since 1.6, optimizers: one step; the parameters as tensors (borrowed, updated in
    /// place), `{"lr": number, "weight_decay": [number per tensor]}`.
    pub const OPTIMIZER_STEP: Self = Self(20);
    /// Since 1.6, optimizers: the state, JSON and tensors out.
    pub const OPTIMIZER_STATE_SAVE: Self = Self(21);
    /// Since 1.6, optimizers: restores the state, JSON and tensors in.
    pub const OPTIMIZER_STATE_LOAD: Self = Self(22);
    /// Since 1.6, schedulers: `{"step", "base_lr", "max_steps", "warmup_steps"}` in,
    /// `{"lr": number}` out. Schedulers save and load their state with
    /// `CALLBACK_STATE_SAVE`/`_LOAD`.
    pub const SCHEDULER_LR: Self = Self(30);
    /// Since 1.6, schedulers: `{"value": number}`, an evaluation's metric_for_best_model.
    pub const SCHEDULER_METRIC: Self = Self(31);
    /// Since 1.6, batch transforms: a training batch (tensors, borrowed) and
    /// `{"global_step", "epoch", "num_labels"}` in, the new batch (tensors, owned) out.
    pub const BATCH_TRANSFORM: Self = Self(40);
    /// Since 1.6, models: `{"fields": [[name, [shape]]], "num_labels": number|null}` in; the
    /// initial weights out, named `parameter.<name>` and `buffer.<name>`.
    pub const MODEL_INIT: Self = Self(50);
    /// Since 1.6, models: `{"train": bool}` and tensors `weight.<name>` and `batch.<name>`
    /// (borrowed) in; the outputs (owned) out.
    pub const MODEL_FORWARD: Self = Self(51);
}

/// What an extension operation receives: JSON and borrowed tensors.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ExtensionIn<'a> {
    pub json: RStr<'a>,
    pub tensors: RSlice<'a, NamedTensor<'a>>,
}

/// What an extension operation returns: JSON and tensors now owned by the caller.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct ExtensionOut {
    pub json: RString,
    pub tensors: RVec<OwnedTensor>,
}

/// The loss interface as it crosses the boundary.
#[sabi_trait]
pub trait LossFfi {
    /// `outputs` and `batch` are borrowed for the call. On success the returned tensor
    /// is owned by the caller (the plugin gives up its handle).
    fn compute_loss(
        &mut self,
        outputs: RSlice<'_, NamedTensor<'_>>,
        batch: RSlice<'_, NamedTensor<'_>>,
        num_items_in_batch: ROption<i64>,
    ) -> RResult<TensorPtr, FfiError>;

    /// Operations added after 1.0 (see `ExtensionOp`).
    #[sabi(last_prefix_field)]
    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError>;
}

/// An owned loss component.
pub type LossBox = LossFfi_TO<'static, abi_stable::std_types::RBox<()>>;

/// The callback interface as it crosses the boundary: one entry point, dispatched on the
/// event code, so new events never change the vtable.
#[sabi_trait]
pub trait CallbackFfi {
    fn on_event(&mut self, event: EventFfi<'_>, control: &mut ControlBits) -> RResult<(), FfiError>;

    /// Operations added after 1.0 (see `ExtensionOp`).
    #[sabi(last_prefix_field)]
    fn extension(&mut self, op: ExtensionOp, input: ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError>;
}

/// An owned callback component.
pub type CallbackBox = CallbackFfi_TO<'static, abi_stable::std_types::RBox<()>>;

/// A Trainer event, with Hugging Face `TrainerCallback` names.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event(pub u32);

impl Event {
    pub const INIT_END: Self = Self(0);
    pub const TRAIN_BEGIN: Self = Self(1);
    pub const TRAIN_END: Self = Self(2);
    pub const EPOCH_BEGIN: Self = Self(3);
    pub const EPOCH_END: Self = Self(4);
    pub const STEP_BEGIN: Self = Self(5);
    pub const SUBSTEP_END: Self = Self(6);
    pub const PRE_OPTIMIZER_STEP: Self = Self(7);
    pub const OPTIMIZER_STEP: Self = Self(8);
    pub const STEP_END: Self = Self(9);
    pub const EVALUATE: Self = Self(10);
    pub const PREDICT: Self = Self(11);
    pub const SAVE: Self = Self(12);
    pub const LOG: Self = Self(13);
    pub const PREDICTION_STEP: Self = Self(14);

    /// Every event this version knows, in code order.
    pub const ALL: [Self; 15] = [
        Self::INIT_END,
        Self::TRAIN_BEGIN,
        Self::TRAIN_END,
        Self::EPOCH_BEGIN,
        Self::EPOCH_END,
        Self::STEP_BEGIN,
        Self::SUBSTEP_END,
        Self::PRE_OPTIMIZER_STEP,
        Self::OPTIMIZER_STEP,
        Self::STEP_END,
        Self::EVALUATE,
        Self::PREDICT,
        Self::SAVE,
        Self::LOG,
        Self::PREDICTION_STEP,
    ];

    /// The `TrainerCallback` method name (`on_step_end`, ...), or `None` for a code this
    /// version does not know.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 15] = [
            "on_init_end",
            "on_train_begin",
            "on_train_end",
            "on_epoch_begin",
            "on_epoch_end",
            "on_step_begin",
            "on_substep_end",
            "on_pre_optimizer_step",
            "on_optimizer_step",
            "on_step_end",
            "on_evaluate",
            "on_predict",
            "on_save",
            "on_log",
            "on_prediction_step",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

/// `TrainerControl` as bit flags, so new flags can be added without changing the layout.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlBits(pub u32);

impl ControlBits {
    pub const SHOULD_TRAINING_STOP: u32 = 1 << 0;
    pub const SHOULD_EPOCH_STOP: u32 = 1 << 1;
    pub const SHOULD_SAVE: u32 = 1 << 2;
    pub const SHOULD_EVALUATE: u32 = 1 << 3;
    pub const SHOULD_LOG: u32 = 1 << 4;

    pub fn get(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    pub fn set(&mut self, bit: u32, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// Positions of the `TrainerState` fields in [`StateFfi::numbers`]. Booleans are 0 or 1;
/// an absent optional value is NaN. New fields are only ever appended.
pub struct StateIndex;

impl StateIndex {
    pub const EPOCH: usize = 0;
    pub const GLOBAL_STEP: usize = 1;
    pub const MAX_STEPS: usize = 2;
    pub const NUM_TRAIN_EPOCHS: usize = 3;
    pub const LOGGING_STEPS: usize = 4;
    pub const EVAL_STEPS: usize = 5;
    pub const SAVE_STEPS: usize = 6;
    pub const TRAIN_BATCH_SIZE: usize = 7;
    pub const BEST_METRIC: usize = 8;
    pub const BEST_GLOBAL_STEP: usize = 9;
    pub const IS_LOCAL_PROCESS_ZERO: usize = 10;
    pub const IS_WORLD_PROCESS_ZERO: usize = 11;
    pub const TOTAL_FLOS: usize = 12;
    pub const NUM_INPUT_TOKENS_SEEN: usize = 13;
    /// Since 1.1.
    pub const IS_HYPER_PARAM_SEARCH: usize = 14;
    /// How many fields this version of the API defines.
    pub const COUNT: usize = 15;
}

/// A read view of the trainer state for one event.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct StateFfi<'a> {
    /// Indexed by [`StateIndex`].
    pub numbers: RSlice<'a, f64>,
    /// Empty when there is no best checkpoint yet.
    pub best_model_checkpoint: RStr<'a>,
}

/// One named value in logs or metrics.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Metric<'a> {
    pub name: RStr<'a>,
    pub value: f64,
}

/// Everything a callback receives for one event.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct EventFfi<'a> {
    pub event: Event,
    pub state: StateFfi<'a>,
    /// `logs` for on_log, `metrics` for on_evaluate and on_predict; empty otherwise.
    pub metrics: RSlice<'a, Metric<'a>>,
}
