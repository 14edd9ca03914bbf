//! Loading a plugin library, with the checks that make a bad plugin file a clear one-line
//! error instead of a crash: plugin-api major version, torch version, ABI layout.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::std_types::RResult;
use anyhow::Result;
use plugin_api::ffi::{ComponentKind, PluginInfo, PluginModuleRef};

use super::callback::PluginCallback;
use super::component::PluginComponent;
use super::extension::{component_error, one_line};
use super::loss::PluginLoss;
use super::{PluginMetric, PluginModel, PluginOptimizer, PluginScheduler, PluginTransform};
use crate::error::InputError;

/// What a plugin component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Loss,
    Callback,
    /// Since plugin-api 1.6, the kinds below.
    Metric,
    Optimizer,
    Scheduler,
    BatchTransform,
    Model,
}

impl Kind {
    /// Every kind, in the order `host plugins inspect` lists them.
    pub const ALL: [Kind; 7] =
        [Kind::Loss, Kind::Callback, Kind::Metric, Kind::Optimizer, Kind::Scheduler, Kind::BatchTransform, Kind::Model];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Loss => "loss",
            Kind::Callback => "callback",
            Kind::Metric => "metric",
            Kind::Optimizer => "optimizer",
            Kind::Scheduler => "scheduler",
            Kind::BatchTransform => "batch transform",
            Kind::Model => "model",
        }
    }

    fn of(kind: ComponentKind) -> Option<Self> {
        Some(match kind {
            ComponentKind::LOSS => Kind::Loss,
            ComponentKind::CALLBACK => Kind::Callback,
            ComponentKind::METRIC => Kind::Metric,
            ComponentKind::OPTIMIZER => Kind::Optimizer,
            ComponentKind::SCHEDULER => Kind::Scheduler,
            ComponentKind::BATCH_TRANSFORM => Kind::BatchTransform,
            ComponentKind::MODEL => Kind::Model,
            // A kind added after this host: not one it can use.
            _ => return None,
        })
    }

    fn code(self) -> ComponentKind {
        match self {
            Kind::Loss => ComponentKind::LOSS,
            Kind::Callback => ComponentKind::CALLBACK,
            Kind::Metric => ComponentKind::METRIC,
            Kind::Optimizer => ComponentKind::OPTIMIZER,
            Kind::Scheduler => ComponentKind::SCHEDULER,
            Kind::BatchTransform => ComponentKind::BATCH_TRANSFORM,
            Kind::Model => ComponentKind::MODEL,
        }
    }
}

/// One component a plugin provides, as it declares it.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    pub kind: Kind,
    pub name: &'a str,
    /// Metadata added after plugin-api 1.0 (the config schema since 1.4), as JSON.
    pub extra_json: &'a str,
}

/// A loaded plugin library. Libraries stay loaded until the process ends (abi_stable
/// cannot unload them).
pub struct Plugin {
    pub path: PathBuf,
    info: PluginInfo,
    module: PluginModuleRef,
}

/// The plugin library a crate folder has built, if any (target/release or target/debug).
fn built_library(dir: &Path) -> Option<std::path::PathBuf> {
    ["target/release", "target/debug"].iter().find_map(|sub| {
        let entries = std::fs::read_dir(dir.join(sub)).ok()?;
        entries.flatten().map(|e| e.path()).find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("lib") && name.ends_with(".so")
        })
    })
}

impl Plugin {
    /// Loads and checks one plugin file. Each file is loaded on its own:
    /// `RootModule::load_from_file` would return the first plugin for every file.
    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display();
        if path.is_dir() {
            return Err(InputError::new(format!(
                "plugin {shown} is a folder, not a plugin library: give the lib*.so file that building a plugin crate makes{}",
                built_library(path).map(|lib| format!(" ({})", lib.display())).unwrap_or_default()
            ))
            .into());
        }
        if !path.is_file() {
            return Err(InputError::new(format!(
                "plugin file {shown} does not exist; build the plugin (cargo build --release) or fix the path"
            ))
            .into());
        }
        // An absolute path: dlopen would search the library path for a bare file name.
        let absolute = std::fs::canonicalize(path)
            .map_err(|e| InputError::new(format!("cannot read plugin file {shown}: {e}")))?;
        let header = lib_header_from_path(&absolute).map_err(|e| load_error(path, e))?;
        let consts = header.root_mod_consts();
        if consts.name() != <PluginModuleRef as RootModule>::NAME {
            return Err(InputError::new(format!(
                "{shown} is an abi_stable library but not a host plugin (its root module is '{}')",
                consts.name()
            ))
            .into());
        }
        let theirs = header.version_strings();
        let ours = plugin_api::API_VERSION;
        if major(theirs.version.as_str()) != major(ours) {
            return Err(InputError::new(format!(
                "plugin {shown} was built against plugin-api {}, this host expects plugin-api {}.x; rebuild the plugin against plugin-api {ours}",
                theirs.version, major(ours)
            ))
            .into());
        }
        let module = header.init_root_module::<PluginModuleRef>().map_err(|e| load_error(path, e))?;
        let info = (module.info())();
        let (theirs, ours) = (info.torch_version.as_str(), plugin_api::TORCH_VERSION);
        if base_version(theirs) != base_version(ours) {
            return Err(InputError::new(format!(
                "plugin {shown} was built against torch {theirs}, this host uses torch {ours}; rebuild the plugin with the same libtorch"
            ))
            .into());
        }
        tracing::debug!(plugin = %info.name, version = %info.version, path = %shown, "loaded plugin");
        Ok(Self { path: path.to_owned(), info, module })
    }

    pub fn name(&self) -> &str {
        self.info.name.as_str()
    }

    /// The plugin's own version.
    pub fn version(&self) -> &str {
        self.info.version.as_str()
    }

    /// The plugin-api version it was built against.
    pub fn api_version(&self) -> &str {
        self.info.api_version.as_str()
    }

    /// The libtorch version it was built against.
    pub fn torch_version(&self) -> &str {
        self.info.torch_version.as_str()
    }

    /// The components it provides, losses and callbacks, in its own order.
    pub fn components(&self) -> impl Iterator<Item = Component<'_>> {
        self.info.components.iter().filter_map(|c| {
            Some(Component { kind: Kind::of(c.kind)?, name: c.name.as_str(), extra_json: c.extra_json.as_str() })
        })
    }

    pub fn create_loss(&self, name: &str, config: &serde_json::Value) -> Result<PluginLoss> {
        let json = config.to_string();
        let _call =
            crate::fatal::PluginCall::start(&super::extension::label((self.name(), "loss", name)), "its constructor");
        match (self.module.create_loss())(name.into(), json.as_str().into()) {
            RResult::ROk(inner) => Ok(PluginLoss::new(inner, self.name(), name)),
            RResult::RErr(e) => Err(component_error((self.name(), "loss", name), "its constructor", e)),
        }
    }

    pub fn create_callback(&self, name: &str, config: &serde_json::Value, args_json: &str) -> Result<PluginCallback> {
        let json = config.to_string();
        let label = super::extension::label((self.name(), "callback", name));
        let _call = crate::fatal::PluginCall::start(&label, "its constructor");
        match (self.module.create_callback())(name.into(), json.as_str().into(), args_json.into()) {
            RResult::ROk(inner) => Ok(PluginCallback::new(inner, self.name(), name)),
            RResult::RErr(e) => Err(component_error((self.name(), "callback", name), "its constructor", e)),
        }
    }
}

impl Plugin {
    pub fn create_metric(&self, name: &str, config: &serde_json::Value, args_json: &str) -> Result<PluginMetric> {
        self.create_component(Kind::Metric, name, config, args_json).map(PluginMetric)
    }

    pub fn create_optimizer(&self, name: &str, config: &serde_json::Value, args_json: &str) -> Result<PluginOptimizer> {
        self.create_component(Kind::Optimizer, name, config, args_json).map(PluginOptimizer)
    }

    pub fn create_scheduler(&self, name: &str, config: &serde_json::Value, args_json: &str) -> Result<PluginScheduler> {
        self.create_component(Kind::Scheduler, name, config, args_json).map(PluginScheduler)
    }

    pub fn create_batch_transform(
        &self,
        name: &str,
        config: &serde_json::Value,
        args_json: &str,
    ) -> Result<PluginTransform> {
        self.create_component(Kind::BatchTransform, name, config, args_json).map(PluginTransform)
    }

    pub fn create_model(&self, name: &str, config: &serde_json::Value, args_json: &str) -> Result<PluginModel> {
        self.create_component(Kind::Model, name, config, args_json).map(PluginModel)
    }

    /// Creates a component of a kind added in plugin-api 1.6 (metric, optimizer, scheduler,
    /// batch transform): through `create_callback`, its name prefixed by the kind.
    fn create_component(
        &self,
        kind: Kind,
        name: &str,
        config: &serde_json::Value,
        args_json: &str,
    ) -> Result<PluginComponent> {
        let prefix = kind.code().prefix().expect("losses and callbacks have their own constructors");
        let json = config.to_string();
        let label = super::extension::label((self.name(), kind.name(), name));
        let _call = crate::fatal::PluginCall::start(&label, "its constructor");
        let full_name = format!("{prefix}{name}");
        match (self.module.create_callback())(full_name.as_str().into(), json.as_str().into(), args_json.into()) {
            RResult::ROk(inner) => Ok(PluginComponent::new(inner, self.name(), kind.name(), name)),
            RResult::RErr(e) => Err(component_error((self.name(), kind.name(), name), "its constructor", e)),
        }
    }
}

fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

/// `2.11.0+cu130` -> `2.11.0`: CUDA and CPU builds of one torch version share their ABI.
fn base_version(version: &str) -> &str {
    version.split('+').next().unwrap_or(version)
}

fn load_error(path: &Path, error: LibraryError) -> anyhow::Error {
    let shown = path.display();
    let message = match error {
        LibraryError::OpenError { err, .. } => {
            format!("cannot load plugin {shown}: not a loadable shared library ({})", one_line(&err.to_string()))
        }
        LibraryError::GetSymbolError { .. } => format!(
            "{shown} is a shared library but not a host plugin: it exports no plugin root module (plugins use plugin_api::export_plugin!)"
        ),
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => format!(
            "plugin {shown} was built against plugin-api {actual_version}, this host expects plugin-api {expected_version}; rebuild the plugin"
        ),
        LibraryError::InvalidAbiHeader(_) => {
            format!("plugin {shown} was built with an incompatible abi_stable version; rebuild it against this host's plugin-api")
        }
        LibraryError::AbiInstability(details) => format!(
            "plugin {shown} has a plugin-api layout this host cannot use; rebuild it against plugin-api {} ({})",
            plugin_api::API_VERSION,
            one_line(&details.to_string())
        ),
        other => format!("cannot load plugin {shown}: {}", one_line(&other.to_string())),
    };
    InputError::new(message).into()
}
