//! A loss component from a plugin (Hugging Face's `compute_loss_func`).

use abi_stable::std_types::{ROption, RResult};
use anyhow::Result;
use plugin_api::ffi::{tensor_views, ExtensionOp, LossBox};
use plugin_api::Tensors;
use tch::Tensor;

use super::extension::{self, component_error};
use crate::engine::data::Batch;
use crate::engine::loss::Loss;
use crate::engine::models::Outputs;

pub struct PluginLoss {
    inner: LossBox,
    pub plugin: String,
    pub name: String,
    /// "plugin 'x' loss 'y'", made once for the call record crash reports read.
    label: String,
    /// Whether the loss takes hidden states and the head (plugin-api 1.7; older plugins
    /// take logits).
    hidden_states: bool,
}

impl PluginLoss {
    pub(super) fn new(inner: LossBox, plugin: &str, name: &str) -> Self {
        let label = extension::label((plugin, "loss", name));
        let mut loss = Self { inner, plugin: plugin.to_owned(), name: name.to_owned(), label, hidden_states: false };
        if let Ok(Some((json, _))) = loss.call(ExtensionOp::LOSS_INPUTS, "", "") {
            let inputs: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            loss.hidden_states = inputs["hidden_states"].as_bool().unwrap_or(false);
        }
        loss
    }

    fn who(&self) -> extension::Who<'_> {
        (self.plugin.as_str(), "loss", self.name.as_str())
    }

    /// The loss of one micro-batch (see `plugin_api::Loss`): a tensor autograd can flow
    /// through, whose ownership the plugin hands over.
    pub fn compute_loss(
        &mut self,
        outputs: &Tensors,
        batch: &Tensors,
        num_items_in_batch: Option<i64>,
    ) -> Result<Tensor> {
        let (outputs_ffi, batch_ffi) = (tensor_views(outputs), tensor_views(batch));
        let _call = crate::fatal::PluginCall::start(&self.label, "compute_loss");
        let result = self.inner.compute_loss(
            outputs_ffi.as_slice().into(),
            batch_ffi.as_slice().into(),
            ROption::from(num_items_in_batch),
        );
        match result {
            // SAFETY: the plugin handed over ownership of this tensor (see LossFfi).
            RResult::ROk(ptr) => Ok(unsafe { plugin_api::ffi::take_ptr(ptr) }),
            RResult::RErr(e) => Err(component_error(self.who(), "compute_loss", e)),
        }
    }

    /// Runs an extension operation on the loss.
    fn call(&mut self, op: ExtensionOp, during: &str, json: &str) -> Result<Option<(String, Tensors)>> {
        let who = (self.plugin.as_str(), "loss", self.name.as_str());
        extension::call(who, during, op, json, &Tensors::new(), |op, input| self.inner.extension(op, input))
    }
}

/// The engine's loss trait over the plugin's: the plugin sees the logits and the batch by
/// name, as HF's `compute_loss` override does.
impl Loss for PluginLoss {
    fn compute(&mut self, outputs: &Outputs, batch: &Batch, num_items: Option<i64>, training: bool) -> Result<Tensor> {
        let value = self.compute_loss(&outputs.to_plugin(), &batch.to_plugin(), num_items)?;
        check_loss(self, &value, training)?;
        Ok(value)
    }

    fn takes_hidden_states(&self) -> bool {
        self.hidden_states
    }

    /// `None` when it has none (or its plugin predates plugin-api 1.1).
    fn state(&mut self) -> Result<Option<serde_json::Value>> {
        let answer = self.call(ExtensionOp::LOSS_STATE_SAVE, "saving its state", "")?;
        Ok(extension::parse_state(self.who(), answer)?.0)
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.call(ExtensionOp::LOSS_STATE_LOAD, "restoring its state", &state.to_string())?;
        Ok(())
    }
}

/// A loss must be one floating-point number, and in training one that backpropagates to
/// the model (made from the outputs by differentiable operations); anything else is the
/// plugin's mistake, named as such.
fn check_loss(loss: &PluginLoss, value: &Tensor, training: bool) -> Result<()> {
    let who = format!("plugin '{}' loss '{}'", loss.plugin, loss.name);
    if value.dim() != 0 {
        anyhow::bail!("{who} returned a tensor of shape {:?}; compute_loss must return a scalar", value.size());
    }
    if !value.is_floating_point() {
        anyhow::bail!(
            "{who} returned a {:?} tensor; a loss must be floating point (compute it in float)",
            value.kind()
        );
    }
    if training && !value.requires_grad() {
        anyhow::bail!(
            "{who} returned a loss without a gradient (requires_grad is false), so training cannot backpropagate; compute it from the outputs with tensor operations (no detach, no .double_value)"
        );
    }
    Ok(())
}
