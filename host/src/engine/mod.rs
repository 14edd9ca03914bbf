//! The training engine: the trainer and what it trains with (models, data, optimizers),
//! what it writes (checkpoints, reports), and how it runs (device, precision, ranks).

pub mod activations;
pub mod callbacks;
pub mod checkpoint;
pub mod data;
pub(crate) mod device;
pub(crate) mod distributed;
pub mod generation;
pub mod libtorch;
pub mod loss;
mod memory;
pub mod memory_metrics;
pub mod metric;
pub mod models;
pub mod ops;
pub(crate) mod optim;
pub(crate) mod output;
pub(crate) mod plots;
pub(crate) mod precision;
pub mod progress_bar;
pub(crate) mod report;
pub(crate) mod rng;
pub mod trainer;
pub mod weights;
