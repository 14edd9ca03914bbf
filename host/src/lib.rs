//! The training host as a library: the `host` binary is a thin command line over it, and
//! the end-to-end tests reach the plugin loader through it.

pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod fatal;
pub mod logging;
mod native;
pub mod plugins;

#[cfg(test)]
mod architecture;
