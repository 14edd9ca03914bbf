//! A component of a kind added in plugin-api 1.6 (metric, optimizer, scheduler, batch
//! transform): it crosses the boundary in a callback box and is driven by extension
//! operations alone. The typed wrappers (`metric`, `optimizer`, ...) call through this.

use anyhow::{anyhow, Result};
use plugin_api::ffi::{CallbackBox, ExtensionOp};
use plugin_api::Tensors;

use super::extension;

pub struct PluginComponent {
    inner: CallbackBox,
    pub plugin: String,
    /// "metric", "optimizer", ...
    pub kind: &'static str,
    pub name: String,
}

impl PluginComponent {
    pub(super) fn new(inner: CallbackBox, plugin: &str, kind: &'static str, name: &str) -> Self {
        Self { inner, plugin: plugin.to_owned(), kind, name: name.to_owned() }
    }

    /// "plugin 'x' metric 'y'".
    pub fn label(&self) -> String {
        extension::label((&self.plugin, self.kind, &self.name))
    }

    /// Runs one of the kind's operations. A plugin built for the kind knows every one of
    /// them (they came in one version), so an unsupported answer is an error here.
    pub fn call(&mut self, op: ExtensionOp, during: &str, json: &str, tensors: &Tensors) -> Result<(String, Tensors)> {
        let who = (self.plugin.as_str(), self.kind, self.name.as_str());
        extension::call(who, during, op, json, tensors, |op, input| self.inner.extension(op, input))?
            .ok_or_else(|| anyhow!("{} does not support {during}", self.label()))
    }

    /// [`call`](Self::call) with its JSON answer parsed.
    pub fn call_json(
        &mut self,
        op: ExtensionOp,
        during: &str,
        json: &str,
        tensors: &Tensors,
    ) -> Result<(serde_json::Value, Tensors)> {
        let (answer, tensors) = self.call(op, during, json, tensors)?;
        let value = serde_json::from_str(&answer)
            .map_err(|e| anyhow!("{} answered {during} with text that is not JSON: {e}", self.label()))?;
        Ok((value, tensors))
    }
}
