//! The progress bar: on a terminal only, and never in the way of log lines. Log output goes
//! through [`LogWriter`], which clears the bar, writes the line and redraws the bar.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn current() -> Option<ProgressBar> {
    BAR.lock().ok().and_then(|bar| bar.clone())
}

/// Starts a bar over `total` optimizer steps, if stderr is a terminal and it is wanted.
pub fn start(total: u64, disabled: bool) {
    if disabled || !io::stderr().is_terminal() {
        return;
    }
    let bar = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    if let Ok(mut slot) = BAR.lock() {
        *slot = Some(bar);
    }
}

/// Moves the bar to `step`, with a short message (the last loss).
pub fn advance(step: u64, message: Option<String>) {
    if let Some(bar) = current() {
        bar.set_position(step);
        if let Some(message) = message {
            bar.set_message(message);
        }
    }
}

/// Removes the bar.
pub fn finish() {
    if let Ok(mut slot) = BAR.lock() {
        if let Some(bar) = slot.take() {
            bar.finish_and_clear();
        }
    }
}

/// stderr for `tracing`, writing around the progress bar.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match current() {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf)).map(|()| buf.len()),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}
