pub mod arguments;
pub mod layers;
pub mod preset;
