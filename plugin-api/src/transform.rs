//! The batch transform interface (a data collator's augmentation step, as mixup and cutmix
//! in timm or torchvision). Since plugin-api 1.6.

use crate::{PluginError, Tensors};

/// Where in training a batch is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchContext {
    /// Optimizer steps completed.
    pub global_step: i64,
    pub epoch: f64,
    /// The number of classes of a classification model (from the data, or num_labels);
    /// `None` for other tasks.
    pub num_labels: Option<i64>,
}

/// Changes each training batch before the forward pass (evaluation batches are left as
/// they are).
///
/// Random draws come from libtorch's generator (`Tensor::rand`, `randperm`, ...): the host
/// seeds it from `seed` and saves it in checkpoints, so runs repeat and resume exactly.
pub trait BatchTransform: 'static {
    /// Returns the batch to train on: the same names (`input`, `labels`, ...), changed.
    /// Labels may become class probabilities (a float tensor `[batch, classes]`): the
    /// host's cross entropy and the stock losses take them.
    fn transform(&mut self, batch: &Tensors, context: &BatchContext) -> Result<Tensors, PluginError>;
}
