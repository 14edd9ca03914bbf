//! Model components from plugins: an architecture whose weights the host keeps and hands
//! back at every forward pass.

use anyhow::{anyhow, Result};
use plugin_api::ffi::ExtensionOp;
use plugin_api::Tensors;

use super::component::PluginComponent;

pub struct PluginModel(pub(super) PluginComponent);

/// A plugin model's initial weights.
pub struct InitialWeights {
    pub parameters: Tensors,
    pub buffers: Tensors,
}

impl PluginModel {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// "plugin 'x' model 'y'".
    pub fn label(&self) -> String {
        self.0.label()
    }

    /// The weights for data whose examples have these field shapes.
    pub fn init(&mut self, fields: &[(String, Vec<i64>)], num_labels: Option<i64>) -> Result<InitialWeights> {
        let request = serde_json::json!({ "fields": fields, "num_labels": num_labels }).to_string();
        let (_, tensors) = self.0.call(ExtensionOp::MODEL_INIT, "init", &request, &Tensors::new())?;
        let (mut parameters, mut buffers) = (Tensors::new(), Tensors::new());
        for (name, tensor) in tensors.iter() {
            match name.split_once('.') {
                Some(("parameter", rest)) => parameters.insert(rest, tensor.shallow_clone()),
                Some(("buffer", rest)) => buffers.insert(rest, tensor.shallow_clone()),
                _ => {
                    return Err(anyhow!(
                        "{} gave a weight named '{name}' that is neither a parameter nor a buffer",
                        self.label()
                    ))
                }
            }
        }
        if parameters.is_empty() {
            return Err(anyhow!("{} declared no parameters", self.label()));
        }
        Ok(InitialWeights { parameters, buffers })
    }

    /// The forward pass with the host's weights over a batch.
    pub fn forward(&mut self, weights: &Tensors, batch: &Tensors, train: bool) -> Result<Tensors> {
        let mut tensors = Tensors::new();
        for (name, tensor) in weights.iter() {
            tensors.insert(format!("weight.{name}"), tensor.shallow_clone());
        }
        for (name, tensor) in batch.iter() {
            tensors.insert(format!("batch.{name}"), tensor.shallow_clone());
        }
        let json = serde_json::json!({ "train": train }).to_string();
        Ok(self.0.call(ExtensionOp::MODEL_FORWARD, "forward", &json, &tensors)?.1)
    }
}
