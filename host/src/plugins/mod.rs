//! The plugin host: finds plugin libraries, loads and checks them, and wraps their loss and
//! callback components in safe types. The only part of the host that speaks the plugin ABI
//! (`abi` converts the host's events, state and control flags).

mod abi;
mod callback;
mod component;
pub(crate) mod config_schema;
mod extension;
mod library;
mod loss;
mod metric;
mod model;
mod optimizer;
mod scheduler;
pub(crate) mod search_path;
pub(crate) mod selection;
mod transform;

pub use callback::{PluginCallback, PluginCallbacks};
pub use library::{Component, Kind, Plugin};
pub use loss::PluginLoss;
pub use metric::PluginMetric;
pub use model::{InitialWeights, PluginModel};
pub(crate) use optimizer::OptimizerAdapter;
pub use optimizer::PluginOptimizer;
pub use scheduler::PluginScheduler;
pub use selection::Overrides;
pub use transform::PluginTransform;
