//! The errors that decide how the process ends: a user's mistake (exit 2), a run stopped
//! by a signal (128 + the signal), or a failure during a run (exit 1).

use std::fmt;
use std::path::PathBuf;

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

/// A run stopped by SIGINT or SIGTERM: after saving a checkpoint, or before training
/// started (nothing to save).
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub checkpoint: Option<PathBuf>,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        match &self.checkpoint {
            Some(checkpoint) => write!(
                f,
                "interrupted by {name}: saved {}; continue with --resume-from-checkpoint latest",
                checkpoint.display()
            ),
            None => write!(f, "interrupted by {name} before training started; nothing was saved"),
        }
    }
}

impl std::error::Error for Interrupted {}

/// What is at `path`, for an error that expected something else there: "does not exist",
/// "is a file" or "is a folder" (a wrong kind is never called missing).
pub fn what_is_at(path: &std::path::Path) -> &'static str {
    match std::fs::metadata(path) {
        Err(_) => "does not exist",
        Ok(meta) if meta.is_dir() => "is a folder",
        Ok(_) => "is a file",
    }
}

/// The first non-empty line of a message: libtorch's errors go on with a C++ backtrace,
/// which a one-line error leaves out.
/// " (did you mean 'x'?)" for the candidate nearest to `given`, if it is near (at most 3
/// edits), else "".
pub fn did_you_mean<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|name| (strsim::levenshtein(given, name), name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, name)| format!(" (did you mean '{name}'?)"))
        .unwrap_or_default()
}

pub fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text).trim()
}

/// The operating system's message in an I/O error as libraries word it, such as tch's
/// `...: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })`:
/// "No space left on device (os error 28)". Other text: its first line.
pub fn io_message(text: &str) -> String {
    let Some(start) = text.find("message: \"").map(|i| i + "message: \"".len()) else {
        return first_line(text).to_owned();
    };
    let message = text[start..].split('"').next().unwrap_or("");
    let code = text.find("code: ").and_then(|i| text[i + 6..].split([',', ' ', '}']).next()).unwrap_or("");
    if code.is_empty() {
        message.to_owned()
    } else {
        format!("{message} (os error {code})")
    }
}

/// The exit code for an error: 2 for input mistakes, 128 + the signal for a run stopped by
/// SIGINT (130) or SIGTERM (143), 1 for everything else.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if let Some(stopped) = error.downcast_ref::<Interrupted>() {
        128 + stopped.signal
    } else if error.chain().any(|cause| cause.is::<InputError>()) {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_kind_of_error() {
        let input: anyhow::Error = InputError::new("bad flag").into();
        assert_eq!(exit_code(&input), 2);
        assert_eq!(exit_code(&input.context("while reading the config")), 2);
        let stopped = Interrupted { signal: libc::SIGTERM, checkpoint: Some("out/checkpoint-3".into()) };
        let stopped: anyhow::Error = stopped.into();
        assert_eq!(exit_code(&stopped), 143);
        assert!(stopped.to_string().starts_with("interrupted by SIGTERM: saved out/checkpoint-3;"));
        assert_eq!(exit_code(&anyhow::anyhow!("the disk is full")), 1);
    }

    #[test]
    fn io_errors_read_as_the_operating_system_words_them() {
        let tch = r#"safetensors error out/x.safetensors: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })"#;
        assert_eq!(io_message(tch), "No space left on device (os error 28)");
        assert_eq!(io_message("File too large (os error 27)\nmore"), "File too large (os error 27)");
    }

    #[test]
    fn first_line_skips_blank_lines_and_backtraces() {
        assert_eq!(first_line("\n  out of memory \nException raised from ..."), "out of memory");
        assert_eq!(first_line("one"), "one");
    }
}
