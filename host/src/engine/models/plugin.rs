//! A model from a plugin (`model = "plugin:NAME"`): its parameters and buffers live in the
//! host's store, under their dotted names, so the optimizer, precision, checkpoints and
//! distribution treat them as a built-in model's; each forward pass hands them to the
//! plugin with the batch.

use std::cell::RefCell;

use anyhow::{anyhow, Result};
use tch::{nn, Tensor};

use super::{Model, Outputs};
use crate::engine::data::Batch;
use crate::plugins::PluginModel;

pub struct PluginNet {
    // A forward pass is a call into the plugin, which needs it mutable; the trainer runs
    // models through `&self`.
    model: RefCell<PluginModel>,
    /// The host's parameters and buffers, by the plugin's names.
    weights: Vec<(String, Tensor)>,
}

impl PluginNet {
    /// Asks the plugin for its weights and makes them the host's: parameters trainable,
    /// buffers not, each copied to the store's device and dtype.
    pub fn build(
        root: &nn::Path,
        mut model: PluginModel,
        fields: &[(String, Vec<i64>)],
        num_labels: Option<i64>,
    ) -> Result<Self> {
        let initial = model.init(fields, num_labels)?;
        let mut weights = Vec::new();
        for (trainable, part) in [(true, &initial.parameters), (false, &initial.buffers)] {
            for (name, tensor) in part.iter() {
                let (parents, leaf) = match name.rsplit_once('.') {
                    Some((parents, leaf)) => (Some(parents), leaf),
                    None => (None, name),
                };
                if leaf.is_empty() || parents.is_some_and(|p| p.split('.').any(str::is_empty)) {
                    return Err(anyhow!("{} named a weight '{name}', which is not a dotted path", model.label()));
                }
                // tch names a variable by its path, one component at a time.
                let path =
                    parents.into_iter().flat_map(|p| p.split('.')).fold(root.clone(), |path, part| path.sub(part));
                let var = if trainable {
                    path.f_var_copy(leaf, tensor)?
                } else {
                    let var = path.f_zeros_no_train(leaf, &tensor.size())?;
                    tch::no_grad(|| var.shallow_clone().f_copy_(tensor))?;
                    var
                };
                weights.push((name.to_owned(), var));
            }
        }
        Ok(Self { model: RefCell::new(model), weights })
    }
}

impl Model for PluginNet {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        let weights: plugin_api::Tensors = self.weights.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let mut model = self.model.borrow_mut();
        let outputs = model.forward(&weights, &batch.to_plugin(), train)?;
        if outputs.get("logits").is_none() {
            let names: Vec<&str> = outputs.names().collect();
            return Err(anyhow!("{} returned no 'logits' (outputs: {})", model.label(), names.join(", ")));
        }
        Ok(Outputs {
            fields: outputs.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect(),
            head_input: None,
        })
    }
}
