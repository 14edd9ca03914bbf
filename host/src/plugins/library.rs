//! Loading plugin libraries and creating their components, with the checks that make a
//! bad plugin a clear one-line error instead of a crash.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::std_types::{ROption, RResult};
use anyhow::Result;
use plugin_api::ffi::{
    CallbackBox, ComponentKind, ErrorKind, ExtensionIn, ExtensionOp, ExtensionOut, FfiError, LossBox, PluginInfo,
    PluginModuleRef,
};
use plugin_api::tensors::{take_ptr, Tensors};
use tch::Tensor;

use crate::error::InputError;

/// A loaded plugin library. Libraries stay loaded until the process ends (abi_stable
/// cannot unload them).
pub struct Plugin {
    pub path: PathBuf,
    pub info: PluginInfo,
    module: PluginModuleRef,
}

impl Plugin {
    /// Loads and checks one plugin file. Each file is loaded on its own:
    /// `RootModule::load_from_file` would return the first plugin for every file.
    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display();
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

    /// Names of the components of `kind` this plugin provides.
    pub fn components(&self, kind: ComponentKind) -> impl Iterator<Item = &str> {
        self.info.components.iter().filter(move |c| c.kind == kind).map(|c| c.name.as_str())
    }

    pub fn create_loss(&self, name: &str, config: &serde_json::Value) -> Result<PluginLoss> {
        let json = config.to_string();
        match (self.module.create_loss())(name.into(), json.as_str().into()) {
            RResult::ROk(inner) => Ok(PluginLoss { inner, plugin: self.name().to_owned(), name: name.to_owned() }),
            RResult::RErr(e) => Err(component_error(self.name(), "loss", name, "its constructor", e)),
        }
    }

    pub fn create_callback(&self, name: &str, config: &serde_json::Value, args_json: &str) -> Result<PluginCallback> {
        let json = config.to_string();
        match (self.module.create_callback())(name.into(), json.as_str().into(), args_json.into()) {
            RResult::ROk(inner) => {
                let mut callback = PluginCallback {
                    inner,
                    plugin: self.name().to_owned(),
                    name: name.to_owned(),
                    wants_gradients: false,
                    wants_extra_logs: false,
                    wants_parameters: false,
                };
                callback.ask_wants();
                Ok(callback)
            }
            RResult::RErr(e) => Err(component_error(self.name(), "callback", name, "its constructor", e)),
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

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Words an error from a plugin call: which plugin, which component, during what.
fn component_error(plugin: &str, kind: &str, name: &str, during: &str, error: FfiError) -> anyhow::Error {
    let message = one_line(error.message.as_str());
    let text = match error.kind {
        ErrorKind::PANICKED => format!("plugin '{plugin}' {kind} '{name}' panicked in {during}: {message}"),
        ErrorKind::BAD_CONFIG => format!("plugin '{plugin}' {kind} '{name}': bad config: {message}"),
        ErrorKind::UNKNOWN_COMPONENT => format!("plugin '{plugin}' provides no {kind} named '{name}'"),
        _ => format!("plugin '{plugin}' {kind} '{name}' failed in {during}: {message}"),
    };
    match error.kind {
        ErrorKind::BAD_CONFIG | ErrorKind::UNKNOWN_COMPONENT => InputError::new(text).into(),
        _ => anyhow::Error::msg(text),
    }
}

/// A loss component from a plugin.
pub struct PluginLoss {
    inner: LossBox,
    pub plugin: String,
    pub name: String,
}

impl PluginLoss {
    pub fn compute_loss(
        &mut self,
        outputs: &Tensors,
        batch: &Tensors,
        num_items_in_batch: Option<i64>,
    ) -> Result<Tensor> {
        let (outputs_ffi, batch_ffi) = (outputs.as_ffi(), batch.as_ffi());
        let result = self.inner.compute_loss(
            outputs_ffi.as_slice().into(),
            batch_ffi.as_slice().into(),
            ROption::from(num_items_in_batch),
        );
        match result {
            // SAFETY: the plugin handed over ownership of this tensor (see LossFfi).
            RResult::ROk(ptr) => Ok(unsafe { take_ptr(ptr) }),
            RResult::RErr(e) => Err(component_error(&self.plugin, "loss", &self.name, "compute_loss", e)),
        }
    }
}

impl PluginLoss {
    /// Runs an extension operation on the loss (see [`extension`]).
    fn call(
        &mut self,
        op: ExtensionOp,
        during: &str,
        json: &str,
        tensors: &Tensors,
    ) -> Result<Option<(String, Tensors)>> {
        let who = (self.plugin.as_str(), "loss", self.name.as_str());
        extension(who, during, op, json, tensors, |op, input| self.inner.extension(op, input))
    }

    /// The loss's state, `None` when it has none (or its plugin predates plugin-api 1.1).
    pub fn state(&mut self) -> Result<Option<serde_json::Value>> {
        let answer = self.call(ExtensionOp::LOSS_STATE_SAVE, "saving its state", "", &Tensors::new())?;
        Ok(parse_state((self.plugin.as_str(), "loss", self.name.as_str()), answer)?.0)
    }

    /// Restores a state that `state` returned.
    pub fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.call(ExtensionOp::LOSS_STATE_LOAD, "restoring its state", &state.to_string(), &Tensors::new())?;
        Ok(())
    }
}

/// Runs an extension operation: `Ok(None)` when the plugin does not know it (it was built
/// against an older plugin-api), else its JSON answer and the tensors it handed over.
fn extension(
    (plugin, kind, name): (&str, &str, &str),
    during: &str,
    op: ExtensionOp,
    json: &str,
    tensors: &Tensors,
    call: impl FnOnce(ExtensionOp, ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError>,
) -> Result<Option<(String, Tensors)>> {
    let views = tensors.as_ffi();
    let input = ExtensionIn { json: json.into(), tensors: views.as_slice().into() };
    match call(op, input) {
        // SAFETY: the plugin handed these tensors over (ExtensionOut).
        RResult::ROk(out) => Ok(Some((out.json.into_string(), unsafe { Tensors::from_owned_ffi(out.tensors) }))),
        RResult::RErr(e) if e.kind == ErrorKind::UNSUPPORTED => Ok(None),
        RResult::RErr(e) => Err(component_error(plugin, kind, name, during, e)),
    }
}

/// A state answer: its JSON (`null`, or no answer, means stateless) and its tensors.
fn parse_state(
    (plugin, kind, name): (&str, &str, &str),
    answer: Option<(String, Tensors)>,
) -> Result<(Option<serde_json::Value>, Tensors)> {
    let Some((json, tensors)) = answer else { return Ok((None, Tensors::new())) };
    let value: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| anyhow::anyhow!("plugin '{plugin}' {kind} '{name}' returned a state that is not JSON: {e}"))?;
    Ok(((!value.is_null()).then_some(value), tensors))
}

/// A callback component from a plugin.
pub struct PluginCallback {
    inner: CallbackBox,
    pub plugin: String,
    pub name: String,
    /// Since plugin-api 1.2: whether it wants the gradients before each optimizer step.
    pub wants_gradients: bool,
    /// Since plugin-api 1.2: whether it adds entries to the logs.
    pub wants_extra_logs: bool,
    /// Since plugin-api 1.3: whether it wants the parameters (and may give evaluation weights).
    pub wants_parameters: bool,
}

impl PluginCallback {
    pub fn on_event(
        &mut self,
        event: plugin_api::ffi::EventFfi<'_>,
        control: &mut plugin_api::ffi::ControlBits,
    ) -> Result<()> {
        match self.inner.on_event(event, control) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => {
                let during = event.event.name().unwrap_or("an event");
                Err(component_error(&self.plugin, "callback", &self.name, during, e))
            }
        }
    }

    /// Runs an extension operation on the callback (see [`extension`]).
    fn call(
        &mut self,
        op: ExtensionOp,
        during: &str,
        json: &str,
        tensors: &Tensors,
    ) -> Result<Option<(String, Tensors)>> {
        let who = (self.plugin.as_str(), "callback", self.name.as_str());
        extension(who, during, op, json, tensors, |op, input| self.inner.extension(op, input))
    }

    /// Asks which optional inputs the callback wants (plugins before 1.2 want none).
    fn ask_wants(&mut self) {
        if let Ok(Some((json, _))) = self.call(ExtensionOp::CALLBACK_WANTS, "", "", &Tensors::new()) {
            let wants: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            self.wants_gradients = wants["gradients"].as_bool().unwrap_or(false);
            self.wants_extra_logs = wants["extra_logs"].as_bool().unwrap_or(false);
            self.wants_parameters = wants["parameters"].as_bool().unwrap_or(false);
        }
    }

    /// Shows the gradients; returns whether the callback asks to skip the update.
    pub fn on_gradients(&mut self, gradients: &Tensors) -> Result<bool> {
        let answer = self.call(ExtensionOp::CALLBACK_GRADIENTS, "on_gradients", "{}", gradients)?;
        let answer: serde_json::Value =
            answer.and_then(|(json, _)| serde_json::from_str(&json).ok()).unwrap_or_default();
        Ok(answer["skip_step"].as_bool().unwrap_or(false))
    }

    /// The entries the callback adds to a log event.
    pub fn extra_logs(&mut self, logs: &[(String, f64)]) -> Result<Vec<(String, f64)>> {
        let object: serde_json::Map<String, serde_json::Value> =
            logs.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
        let json = serde_json::Value::Object(object).to_string();
        let answer = self.call(ExtensionOp::CALLBACK_EXTRA_LOGS, "extra_logs", &json, &Tensors::new())?;
        let extra: serde_json::Map<String, serde_json::Value> =
            answer.and_then(|(json, _)| serde_json::from_str(&json).ok()).unwrap_or_default();
        Ok(extra.into_iter().filter_map(|(k, v)| Some((k, v.as_f64()?))).collect())
    }

    /// Restores a state that `state` returned (ignored by plugins built against 1.0).
    pub fn load_state(&mut self, state: &serde_json::Value, tensors: &Tensors) -> Result<()> {
        self.call(ExtensionOp::CALLBACK_STATE_LOAD, "restoring its state", &state.to_string(), tensors)?;
        Ok(())
    }

    /// Shows the parameters after an optimizer step (plugin-api 1.3).
    pub fn on_parameters(&mut self, parameters: &Tensors) -> Result<()> {
        self.call(ExtensionOp::CALLBACK_PARAMETERS, "on_parameters", "{}", parameters)?;
        Ok(())
    }

    /// The weights the callback wants evaluations to use, if any (plugin-api 1.3).
    pub fn evaluation_weights(&mut self) -> Result<Option<Tensors>> {
        let answer = self.call(ExtensionOp::CALLBACK_EVAL_WEIGHTS, "evaluation_weights", "{}", &Tensors::new())?;
        Ok(answer.map(|(_, weights)| weights).filter(|weights| !weights.is_empty()))
    }

    /// The callback's state, `None` when it has none. Plugins built against plugin-api 1.0
    /// do not know the operation: they count as stateless.
    pub fn state(&mut self) -> Result<(Option<serde_json::Value>, Tensors)> {
        let answer = self.call(ExtensionOp::CALLBACK_STATE_SAVE, "saving its state", "", &Tensors::new())?;
        parse_state((self.plugin.as_str(), "callback", self.name.as_str()), answer)
    }
}
