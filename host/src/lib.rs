//! The training host as a library: the `host` binary is a thin command line over it, and
//! the end-to-end tests reach the plugin loader through it.

pub mod args;
pub mod callbacks;
pub mod checkpoint;
pub mod cli;
pub mod components;
pub mod config;
pub mod config_keys;
pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod job;
pub mod models;
pub mod optim;
pub mod plugin_dirs;
pub mod plugins;
pub mod precision;
pub mod progress;
pub mod report;
pub mod rng;
pub mod run;
pub mod scaffold;
pub mod schedule;
pub mod trainer;
pub mod weights;
