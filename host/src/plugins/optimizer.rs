//! Optimizer components from plugins (Hugging Face's `create_optimizer`), and the adapter
//! that makes one of the host's optimizers of them: the trainer clips, skips and zeroes as
//! for its own, and checkpoints keep the plugin's state tensors in optimizer.safetensors.

use std::cell::RefCell;

use anyhow::Result;
use plugin_api::ffi::ExtensionOp;
use plugin_api::Tensors;

use super::component::PluginComponent;
use crate::engine::optim::{Optimizer, OptimizerState, Param};

/// An optimizer component.
pub struct PluginOptimizer(pub(super) PluginComponent);

impl PluginOptimizer {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// One update of `parameters` (in place, from their gradients) with rate `lr`;
    /// `weight_decays` has one entry per parameter.
    pub fn step(&mut self, parameters: &Tensors, weight_decays: &[f64], lr: f64) -> Result<()> {
        let json = serde_json::json!({ "lr": lr, "weight_decay": weight_decays }).to_string();
        // The update is in place, outside autograd.
        let _guard = tch::no_grad_guard();
        self.0.call(ExtensionOp::OPTIMIZER_STEP, "step", &json, parameters)?;
        Ok(())
    }

    /// Its state: counters as JSON, and tensors.
    pub fn state(&mut self) -> Result<(serde_json::Value, Tensors)> {
        self.0.call_json(ExtensionOp::OPTIMIZER_STATE_SAVE, "saving its state", "{}", &Tensors::new())
    }

    pub fn load_state(&mut self, state: &serde_json::Value, tensors: &Tensors) -> Result<()> {
        self.0.call(ExtensionOp::OPTIMIZER_STATE_LOAD, "restoring its state", &state.to_string(), tensors)?;
        Ok(())
    }
}

/// A plugin optimizer over the run's parameters, as one of the host's optimizers.
pub(crate) struct OptimizerAdapter {
    // The host's optimizer trait reads the state through `&self`; a plugin call needs the
    // component mutable.
    component: RefCell<PluginOptimizer>,
    params: Vec<Param>,
}

impl OptimizerAdapter {
    pub(crate) fn new(component: PluginOptimizer, params: Vec<Param>) -> Self {
        Self { component: RefCell::new(component), params }
    }
}

impl Optimizer for OptimizerAdapter {
    fn step(&mut self, lr: f64) -> Result<(), String> {
        let tensors: Tensors = self.params.iter().map(|p| (p.name.clone(), p.tensor.shallow_clone())).collect();
        let decays: Vec<f64> = self.params.iter().map(|p| p.weight_decay).collect();
        self.component.get_mut().step(&tensors, &decays, lr).map_err(|e| format!("{e:#}"))
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        let (scalars, tensors) = self.component.borrow_mut().state().map_err(|e| format!("{e:#}"))?;
        let tensors = tensors.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
        Ok(OptimizerState { tensors, scalars })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        let tensors: Tensors = state.tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        self.component.get_mut().load_state(&state.scalars, &tensors).map_err(|e| format!("{e:#}"))
    }
}
