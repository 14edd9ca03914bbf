//! Callback components from plugins (Hugging Face's `TrainerCallback`).

use abi_stable::std_types::RResult;
use anyhow::Result;
use plugin_api::ffi::{CallbackBox, ControlBits, ExtensionOp};
use plugin_api::Tensors;

use super::abi::{self, EventCall};
use super::extension::{self, component_error};
use crate::engine::callbacks::events::{Event, TrainerControl};
use crate::engine::trainer::state::TrainerState;

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
    /// "plugin 'x' callback 'y'", made once for the call record crash reports read.
    label: String,
}

/// The plugin callbacks of a run, in call order.
#[derive(Default)]
pub struct PluginCallbacks(Vec<PluginCallback>);

impl PluginCallbacks {
    pub fn new(callbacks: Vec<PluginCallback>) -> Self {
        Self(callbacks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut PluginCallback> {
        self.0.iter_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = &PluginCallback> {
        self.0.iter()
    }

    /// Fires `event` at each callback in order, with the flags as the previous one left
    /// them; a plugin error stops here (the flags stay as they were).
    pub fn fire(
        &mut self,
        event: Event,
        state: &TrainerState,
        metrics: &[(String, f64)],
        control: &mut TrainerControl,
    ) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let call = EventCall::new(event, state, metrics);
        let mut bits = abi::control_bits(control);
        for callback in &mut self.0 {
            callback.on_event(&call, &mut bits)?;
        }
        *control = abi::control_from_bits(bits);
        Ok(())
    }
}

impl PluginCallback {
    pub(super) fn new(inner: CallbackBox, plugin: &str, name: &str) -> Self {
        let mut callback = Self {
            inner,
            plugin: plugin.to_owned(),
            name: name.to_owned(),
            wants_gradients: false,
            wants_extra_logs: false,
            wants_parameters: false,
            label: extension::label((plugin, "callback", name)),
        };
        callback.ask_wants();
        callback
    }

    fn who(&self) -> extension::Who<'_> {
        (self.plugin.as_str(), "callback", self.name.as_str())
    }

    fn on_event(&mut self, call: &EventCall, bits: &mut ControlBits) -> Result<()> {
        let mut metrics = Vec::new();
        let _call = crate::fatal::PluginCall::start(&self.label, call.event.name());
        match self.inner.on_event(call.views(&mut metrics), bits) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(component_error(self.who(), call.event.name(), e)),
        }
    }

    /// Runs an extension operation on the callback.
    fn call(
        &mut self,
        op: ExtensionOp,
        during: &str,
        json: &str,
        tensors: &Tensors,
    ) -> Result<Option<(String, Tensors)>> {
        let who = (self.plugin.as_str(), "callback", self.name.as_str());
        extension::call(who, during, op, json, tensors, |op, input| self.inner.extension(op, input))
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
        extension::parse_state(self.who(), answer)
    }
}
