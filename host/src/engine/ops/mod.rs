//! The ops models are built from, each beside its reference twin: the formula transformers
//! computes, step by step, which is the CPU path and the test oracle for any fused version
//! (as candle keeps `rms_norm` beside `rms_norm_slow`). A fused kernel (libtorch's own or
//! the shim's) lands as another branch of the op, chosen by device and dtype, and is tested
//! against the twin.

pub mod activation;
pub mod attention;
pub mod cross_entropy;
pub mod norm;
pub mod rope;
