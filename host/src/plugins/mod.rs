//! The plugin host: finds plugin libraries, loads and checks them, and wraps their loss and
//! callback components in safe types. The only part of the host that speaks the plugin ABI
//! (`abi` converts the host's events, state and control flags).

mod abi;
mod callback;
pub(crate) mod config_schema;
mod extension;
mod library;
mod loss;
pub(crate) mod search_path;
pub(crate) mod selection;

pub use callback::{PluginCallback, PluginCallbacks};
pub use library::{Component, Kind, Plugin};
pub use loss::PluginLoss;
