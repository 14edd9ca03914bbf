//! Batch transforms (a data collator's augmentation: mixup, cutmix): each training batch
//! passes through them, in order, before the forward pass. The engine's trait; the plugin
//! adapter implements it.

use anyhow::Result;

use super::Batch;

/// Where training stands when a batch is transformed.
#[derive(Debug, Clone, Copy)]
pub struct TransformContext {
    pub global_step: i64,
    pub epoch: f64,
    /// A classifier's classes (what labels are one-hot encoded to), if known.
    pub num_labels: Option<i64>,
}

pub trait BatchTransform {
    fn name(&self) -> &str;
    fn transform(&mut self, batch: &Batch, context: &TransformContext) -> Result<Batch>;
}
