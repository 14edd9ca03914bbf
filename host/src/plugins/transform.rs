//! Batch transform components from plugins (a data collator's augmentation: mixup,
//! cutmix): each training batch passes through them before the forward pass.

use anyhow::Result;
use plugin_api::ffi::ExtensionOp;
use plugin_api::{BatchContext, Tensors};

use super::component::PluginComponent;

pub struct PluginTransform(pub(super) PluginComponent);

impl PluginTransform {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn transform(&mut self, batch: &Tensors, context: &BatchContext) -> Result<Tensors> {
        let json = serde_json::json!({
            "global_step": context.global_step,
            "epoch": context.epoch,
            "num_labels": context.num_labels,
        });
        let (_, tensors) = self.0.call(ExtensionOp::BATCH_TRANSFORM, "transform", &json.to_string(), batch)?;
        Ok(tensors)
    }
}
