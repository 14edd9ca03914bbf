//! Write losses and training callbacks for the `host` trainer as plugins.
//!
//! A plugin is a `cdylib` crate that depends on this crate alone. It implements [`Loss`]
//! and/or [`Callback`] in safe Rust, with `tch::Tensor` in and out, and exports them with
//! [`export_plugin!`]. The host loads it at run time (`host --plugin libmy_plugin.so`).
//!
//! ```ignore
//! use plugin_api::prelude::*;
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
//! #[schemars(crate = "plugin_api::schemars")]
//! struct Config {
//!     /// Multiplies the cross entropy.
//!     scale: f64,
//! }
//!
//! // By hand: a derived Default would make scale 0.0, and the loss zero.
//! impl Default for Config {
//!     fn default() -> Self {
//!         Self { scale: 1.0 }
//!     }
//! }
//!
//! struct ScaledCe { scale: f64 }
//!
//! impl Loss for ScaledCe {
//!     fn compute_loss(&mut self, outputs: &Tensors, batch: &Tensors, num_items_in_batch: Option<i64>)
//!         -> Result<Tensor, PluginError> {
//!         let logits = outputs.require("logits")?;
//!         let labels = batch.require("labels")?;
//!         Ok(logits.cross_entropy_for_logits(labels) * self.scale)
//!     }
//! }
//!
//! export_plugin! {
//!     losses: { "scaled_ce" => |c: Config| Ok(ScaledCe { scale: c.scale }) },
//! }
//! ```

#[doc(hidden)]
pub mod adapters;
pub mod callback;
pub mod items;
mod loss;
mod metric;
mod model;
pub mod ops;
pub mod optimizer;
mod panic;
mod scheduler;
mod tensors;
mod transform;

/// The ABI: what crosses the boundary, and the conversions. Not for plugin code.
#[doc(hidden)]
pub mod ffi;

#[doc(hidden)]
pub mod __private;

pub use callback::{BestMetric, Callback, Metrics, TrainerControl, TrainerState, TrainingArguments};
pub use loss::Loss;
pub use metric::{Metric, MetricResults};
pub use model::{Model, ModelInputs, ModelWeights};
pub use optimizer::{Optimizer, Parameter};
pub use scheduler::{Schedule, Scheduler};
pub use tensors::Tensors;
pub use transform::{BatchContext, BatchTransform};

pub use schemars;
pub use serde;
pub use serde_json;
pub use tch;

/// The version of this API that a plugin is compiled against.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The libtorch version this API (and so a plugin) is compiled against.
pub const TORCH_VERSION: &str = env!("PLUGIN_API_TORCH_VERSION");

/// What plugin code imports.
pub mod prelude {
    pub use crate::{
        export_plugin, BatchContext, BatchTransform, BestMetric, Callback, Loss, Metric, MetricResults, Metrics, Model,
        ModelInputs, ModelWeights, NoConfig, Optimizer, Parameter, PluginError, Schedule, Scheduler, Tensors,
        TrainerControl, TrainerState, TrainingArguments,
    };
    pub use schemars::JsonSchema;
    pub use serde::Deserialize;
    pub use tch::{Kind, Reduction, Tensor};
}

/// An error from plugin code. The host prints its message with the plugin, component and
/// event it came from, and stops training.
///
/// Any `std::error::Error` converts into it, so `?` works on most results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    message: String,
    is_config: bool,
}

impl PluginError {
    /// A failure of the plugin's work.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), is_config: false }
    }

    /// The user's config does not fit (found late, e.g. weights for the wrong number of
    /// classes): the host reports it as a bad config, exit code 2.
    pub fn config(message: impl Into<String>) -> Self {
        Self { message: message.into(), is_config: true }
    }

    pub fn is_config(&self) -> bool {
        self.is_config
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for PluginError {
    fn from(error: E) -> Self {
        Self::new(error.to_string())
    }
}

/// The config of a component that has no settings: any key given is an error.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Exports a plugin's components: its root module for the host.
///
/// ```ignore
/// export_plugin! {
///     name: "my_plugin",                  // optional, defaults to the crate name
///     version: "0.3.0",                   // optional, defaults to the crate version
///     losses: { "my_loss" => MyLoss::new },
///     callbacks: { "my_callback" => MyCallback::new },
/// }
/// ```
///
/// Each constructor takes the component's config, any type that implements
/// `serde::Deserialize`, and returns `Result<Component, PluginError>`. Derive it with
/// `#[serde(crate = "plugin_api::serde", deny_unknown_fields)]`: the first line lets the
/// plugin use plugin-api's serde without depending on serde itself, the second makes a
/// misspelt key an error. A component without settings takes [`NoConfig`].
///
/// Also derive [`JsonSchema`](schemars::JsonSchema) (with
/// `#[schemars(crate = "plugin_api::schemars")]`) to declare the config keys: their types,
/// defaults (from `Default`, with `#[serde(default)]`) and help (the fields' doc comments)
/// are then shown by `host plugins inspect`. A config without it still works; inspect then
/// says its keys are not declared.
#[macro_export]
macro_rules! export_plugin {
    (
        $(name: $name:expr,)?
        $(version: $version:expr,)?
        $(losses: { $($loss_name:literal => $loss_ctor:expr),* $(,)? } $(,)?)?
        $(callbacks: { $($cb_name:literal => $cb_ctor:expr),* $(,)? } $(,)?)?
        $(metrics: { $($metric_name:literal => $metric_ctor:expr),* $(,)? } $(,)?)?
        $(optimizers: { $($optim_name:literal => $optim_ctor:expr),* $(,)? } $(,)?)?
        $(schedulers: { $($sched_name:literal => $sched_ctor:expr),* $(,)? } $(,)?)?
        $(batch_transforms: { $($bt_name:literal => $bt_ctor:expr),* $(,)? } $(,)?)?
        $(models: { $($model_name:literal => $model_ctor:expr),* $(,)? } $(,)?)?
    ) => {
        const _: () = {
            use $crate::__private::abi_stable::std_types::{RResult, RStr};
            use $crate::ffi::{CallbackBox, FfiError, LossBox, PluginInfo};

            extern "C" fn info() -> PluginInfo {
                #[allow(unused_mut, unused_assignments)]
                let mut name: &str = env!("CARGO_PKG_NAME");
                $(name = $name;)?
                #[allow(unused_mut, unused_assignments)]
                let mut version: &str = env!("CARGO_PKG_VERSION");
                $(version = $version;)?
                #[allow(unused_imports)]
                use $crate::__private::{DeclaredConfig as _, UndeclaredConfig as _};
                $crate::__private::plugin_info(name, version, $crate::__private::Declared {
                    losses: &[$($(($loss_name, (&$crate::__private::config_type_of(&$loss_ctor)).config_schema())),*)?],
                    callbacks: &[$($(($cb_name, (&$crate::__private::config_type_of(&$cb_ctor)).config_schema())),*)?],
                    metrics: &[$($(($metric_name, (&$crate::__private::config_type_of(&$metric_ctor)).config_schema())),*)?],
                    optimizers: &[$($(($optim_name, (&$crate::__private::config_type_of(&$optim_ctor)).config_schema())),*)?],
                    schedulers: &[$($(($sched_name, (&$crate::__private::config_type_of(&$sched_ctor)).config_schema())),*)?],
                    batch_transforms: &[$($(($bt_name, (&$crate::__private::config_type_of(&$bt_ctor)).config_schema())),*)?],
                    models: &[$($(($model_name, (&$crate::__private::config_type_of(&$model_ctor)).config_schema())),*)?],
                })
            }

            extern "C" fn create_loss(name: RStr<'_>, config: RStr<'_>) -> RResult<LossBox, FfiError> {
                $crate::__private::guard_create(|| match name.as_str() {
                    $($($loss_name => $crate::__private::make_loss(config.as_str(), $loss_ctor),)*)?
                    other => Err($crate::__private::unknown_component("loss", other)),
                })
            }

            extern "C" fn create_callback(
                name: RStr<'_>,
                config: RStr<'_>,
                args: RStr<'_>,
            ) -> RResult<CallbackBox, FfiError> {
                // The kinds added in 1.6 come through here too, their names prefixed.
                $crate::__private::guard_create(|| match name.as_str() {
                    $($($cb_name => $crate::__private::make_callback(config.as_str(), args.as_str(), $cb_ctor),)*)?
                    $($(concat!("metric:", $metric_name) => $crate::__private::make_metric(config.as_str(), $metric_ctor),)*)?
                    $($(concat!("optimizer:", $optim_name) => $crate::__private::make_optimizer(config.as_str(), $optim_ctor),)*)?
                    $($(concat!("scheduler:", $sched_name) => $crate::__private::make_scheduler(config.as_str(), $sched_ctor),)*)?
                    $($(concat!("batch_transform:", $bt_name) => $crate::__private::make_batch_transform(config.as_str(), $bt_ctor),)*)?
                    $($(concat!("model:", $model_name) => $crate::__private::make_model(config.as_str(), $model_ctor),)*)?
                    other => Err($crate::__private::unknown_component("callback", other)),
                })
            }

            extern "C" fn root_module_loader() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(|| {
                    $crate::__private::root_module(info, create_loss, create_callback, $crate::__private::module_extension)
                })
            }

            // The symbol the host (abi_stable) looks up; the name is abi_stable 0.11's
            // mangled root-module-loader name (checked by a plugin-api test).
            #[no_mangle]
            pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::abi_stable::library::LibHeader =
                $crate::__private::lib_header(root_module_loader);
        };
    };
}
