//! The log: `tracing` lines on stderr (through the progress bar's writer), filtered by
//! RUST_LOG, then by the run's `log_level` / `log_level_replica` once the configuration
//! is known (HF's names: a level given there wins, `passive` leaves it).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether this process is a distributed run's rank other than 0.
pub fn is_replica() -> bool {
    std::env::var("RANK").is_ok_and(|rank| rank.trim() != "0")
}

/// Starts logging: RUST_LOG, else info (warnings only on ranks other than 0, as HF's
/// default log_level_replica).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if is_replica() { "warn" } else { "info" }));
    let (filter, handle) = reload::Layer::new(filter);
    let format = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(crate::engine::progress_bar::LogWriter);
    tracing_subscriber::registry().with(filter).with(format).init();
    let _ = FILTER.set(handle);
}

/// Sets the level from now on (a tracing directive such as "debug" or "warn").
pub fn set_level(directive: &str) {
    if let Some(handle) = FILTER.get() {
        let _ = handle.reload(EnvFilter::new(directive));
    }
}
