//! Errors that are the user's to fix (exit code 2) as opposed to failures during a run.

use std::fmt;

/// A mistake in the user's input: flags, config, plugin files. Printed as one line, exit 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(String);

impl InputError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// The first non-empty line of a message: libtorch's errors go on with a C++ backtrace,
/// which a one-line error leaves out.
pub fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text).trim()
}

/// The exit code for an error: 2 for input mistakes, 128 + the signal for a run stopped by
/// SIGINT (130) or SIGTERM (143), 1 for everything else.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if let Some(stopped) = error.downcast_ref::<crate::engine::trainer::Interrupted>() {
        128 + stopped.signal
    } else if error.chain().any(|cause| cause.is::<InputError>()) {
        2
    } else {
        1
    }
}
