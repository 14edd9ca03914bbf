//! Batch transform components from plugins (a data collator's augmentation: mixup,
//! cutmix): each training batch passes through them before the forward pass.

use anyhow::Result;
use plugin_api::ffi::ExtensionOp;

use super::component::PluginComponent;
use crate::engine::data::transform::{BatchTransform, TransformContext};
use crate::engine::data::Batch;

pub struct PluginTransform(pub(super) PluginComponent);

impl BatchTransform for PluginTransform {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn transform(&mut self, batch: &Batch, context: &TransformContext) -> Result<Batch> {
        let json = serde_json::json!({
            "global_step": context.global_step,
            "epoch": context.epoch,
            "num_labels": context.num_labels,
        });
        let (_, tensors) =
            self.0.call(ExtensionOp::BATCH_TRANSFORM, "transform", &json.to_string(), &batch.to_plugin())?;
        Batch::from_plugin(tensors).map_err(|e| anyhow::anyhow!("the batch transform {} {e}", self.0.name))
    }
}
