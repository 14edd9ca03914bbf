//! End-to-end tests: build the plugins, run the `host` binary, check what it prints,
//! writes and exits with.

mod support;

mod arguments;
mod bad_data;
mod bad_input;
mod checkpoints;
mod compat;
mod data;
mod distributed;
mod events;
mod example_plugin;
mod faults;
mod fidelity;
mod fuzz;
mod hf_rules;
mod lora;
mod models;
mod override_plugins;
mod plots;
mod pretrained;
mod sft;
mod stock_plugins;
mod training;
mod weighted_ce;
