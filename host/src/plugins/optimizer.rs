//! Optimizer components from plugins (Hugging Face's `create_optimizer`), as one of the
//! host's optimizers: the trainer clips, skips and zeroes as for its own, and checkpoints
//! keep the plugin's state tensors in optimizer.safetensors.

use std::cell::RefCell;

use plugin_api::ffi::ExtensionOp;
use plugin_api::Tensors;

use super::component::PluginComponent;
use crate::engine::optim::{Optimizer, OptimizerState, Param};

pub struct PluginOptimizer {
    component: RefCell<PluginComponent>,
    params: Vec<Param>,
}

impl PluginOptimizer {
    pub fn name(&self) -> String {
        self.component.borrow().name.clone()
    }

    /// The plugin `component` stepping `params`.
    pub fn new(component: PluginOptimizer0, params: Vec<Param>) -> Self {
        Self { component: RefCell::new(component.0), params }
    }
}

/// An optimizer component not yet given its parameters.
pub struct PluginOptimizer0(pub(super) PluginComponent);

impl PluginOptimizer0 {
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl Optimizer for PluginOptimizer {
    fn step(&mut self, lr: f64) -> Result<(), String> {
        let tensors: Tensors = self.params.iter().map(|p| (p.name.clone(), p.tensor.shallow_clone())).collect();
        let decays: Vec<f64> = self.params.iter().map(|p| p.weight_decay).collect();
        let json = serde_json::json!({ "lr": lr, "weight_decay": decays }).to_string();
        // The update is in place, outside autograd.
        let _guard = tch::no_grad_guard();
        self.component.borrow_mut().call(ExtensionOp::OPTIMIZER_STEP, "step", &json, &tensors).map_err(|e| format!("{e:#}"))?;
        Ok(())
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        let (scalars, tensors) = self
            .component
            .borrow_mut()
            .call_json(ExtensionOp::OPTIMIZER_STATE_SAVE, "saving its state", "{}", &Tensors::new())
            .map_err(|e| format!("{e:#}"))?;
        let tensors = tensors.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
        Ok(OptimizerState { tensors, scalars })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        let tensors: Tensors = state.tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let json = state.scalars.to_string();
        self.component
            .borrow_mut()
            .call(ExtensionOp::OPTIMIZER_STATE_LOAD, "restoring its state", &json, &tensors)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    }
}
