//! What the process says when it ends in ways no Rust error reaches: a crash in plugin code
//! (a null dereference, an abort, a stack overflow), a plugin that calls `exit`, and a
//! stop signal while a plugin call hangs. The host records which plugin call is running
//! and the last checkpoint it saved; the handlers here print one line from them.
//!
//! A crash leaves the process in no state to trust, so nothing is saved after it: the line
//! names the last checkpoint, and the process ends by the same signal.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A text a signal handler can read: bytes written before a length is published.
struct Slot {
    bytes: UnsafeCell<[u8; 512]>,
    len: AtomicUsize,
}

// SAFETY: written by the thread that runs plugin calls and saves checkpoints, read by
// signal handlers and the watcher thread; a reader sees at worst a text being replaced.
unsafe impl Sync for Slot {}

impl Slot {
    const fn new() -> Self {
        Self { bytes: UnsafeCell::new([0; 512]), len: AtomicUsize::new(0) }
    }

    fn set(&self, text: &str) {
        self.set_parts(&[text]);
    }

    /// Sets the concatenation of `parts` (no allocation: plugin calls are frequent).
    fn set_parts(&self, parts: &[&str]) {
        self.len.store(0, Ordering::Release);
        let mut n = 0;
        for part in parts {
            let take = part.len().min(512 - n);
            // SAFETY: the length is 0 while the bytes change, so no reader uses them.
            unsafe { (&mut *self.bytes.get())[n..n + take].copy_from_slice(&part.as_bytes()[..take]) };
            n += take;
        }
        self.len.store(n, Ordering::Release);
    }

    fn clear(&self) {
        self.len.store(0, Ordering::Release);
    }

    fn bytes(&self) -> &[u8] {
        let n = self.len.load(Ordering::Acquire);
        // SAFETY: the first n bytes were written before n was published.
        unsafe { &(&*self.bytes.get())[..n] }
    }

    fn text(&self) -> Option<String> {
        let bytes = self.bytes();
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned())
    }
}

/// The plugin call running now ("plugin 'x' callback 'y' in on_step_end").
static CALL: Slot = Slot::new();
/// When it started, in milliseconds of `now_ms`.
static CALL_STARTED_MS: AtomicU64 = AtomicU64::new(0);
/// The last checkpoint this run saved.
static CHECKPOINT: Slot = Slot::new();
/// Whether a training run is under way (its results not yet written).
static TRAINING: AtomicBool = AtomicBool::new(false);

/// Milliseconds of a coarse monotonic clock: a few nanoseconds to read, which matters at a
/// call per event per callback, and precise enough to say how long a call has run.
fn now_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// Marks a plugin call as running while it lives.
pub struct PluginCall(());

impl PluginCall {
    /// `who` ("plugin 'x' callback 'y'") is running `during` ("on_step_end").
    pub fn start(who: &str, during: &str) -> Self {
        CALL.set_parts(&[who, " in ", during]);
        CALL_STARTED_MS.store(now_ms(), Ordering::Release);
        Self(())
    }
}

impl Drop for PluginCall {
    fn drop(&mut self) {
        CALL.clear();
    }
}

/// The plugin call running now, and for how long.
pub fn current_call() -> Option<(String, Duration)> {
    let call = CALL.text()?;
    let started = CALL_STARTED_MS.load(Ordering::Acquire);
    Some((call, Duration::from_millis(now_ms().saturating_sub(started))))
}

/// Records the last checkpoint saved, for the line a crash prints.
pub fn checkpoint_saved(dir: &std::path::Path) {
    CHECKPOINT.set(&dir.display().to_string());
}

/// Marks a training run as under way while it lives: a process that exits meanwhile (a
/// plugin calling `exit`) says so, and exits 1.
pub struct TrainingRun(());

impl TrainingRun {
    pub fn start() -> Self {
        TRAINING.store(true, Ordering::Release);
        Self(())
    }
}

impl Drop for TrainingRun {
    fn drop(&mut self) {
        TRAINING.store(false, Ordering::Release);
    }
}

/// A SIGINT or SIGTERM that came before the host's own handlers were in place (libtorch's
/// start-up takes a moment), and whether they are in place now.
static EARLY_STOP: AtomicI32 = AtomicI32::new(0);
static STOP_HANDLERS_READY: AtomicBool = AtomicBool::new(false);

/// Records SIGINT and SIGTERM from the process's first instant (the binary runs this
/// before any library initializes): one asks the run to stop, two end it at once.
pub extern "C" fn install_early_stop_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a handler that only touches atomics and may call _exit.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_early_stop as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_early_stop(signal: libc::c_int) {
    if STOP_HANDLERS_READY.load(Ordering::Acquire) {
        return;
    }
    if EARLY_STOP.swap(signal, Ordering::AcqRel) != 0 {
        // SAFETY: a second stop signal ends the process at once, as it does later.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Hands SIGINT and SIGTERM over to the training run's handlers (installed just before):
/// returns a signal that came before them.
pub fn take_early_stop() -> Option<i32> {
    STOP_HANDLERS_READY.store(true, Ordering::Release);
    let signal = EARLY_STOP.swap(0, Ordering::AcqRel);
    (signal != 0).then_some(signal)
}

/// For commands other than training: SIGINT and SIGTERM end the process as usual; one that
/// came already does so now.
pub fn default_stop_handling() {
    STOP_HANDLERS_READY.store(true, Ordering::Release);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: restores the default disposition.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    let signal = EARLY_STOP.swap(0, Ordering::AcqRel);
    if signal != 0 {
        // SAFETY: ends the process as the signal would have.
        unsafe { libc::raise(signal) };
    }
}

/// Installs the handlers: fatal signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT) print a
/// line and end the process by the same signal; an exit during training prints a line and
/// exits 1.
pub fn install() {
    for signal in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT] {
        // SAFETY: a handler that only reads the slots, writes to stderr and re-raises. It
        // runs on the alternate stack Rust sets up for the main thread (a stack overflow
        // leaves no other), and the default disposition is restored for the re-raise.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as *const () as usize;
            action.sa_flags = libc::SA_ONSTACK | libc::SA_RESETHAND | libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: registers a plain function to run at exit.
    unsafe { libc::atexit(on_exit) };
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the bytes are live for the call.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// The checkpoint part of a last line (async-signal-safe: no allocation).
fn write_checkpoint_note() {
    let checkpoint = CHECKPOINT.bytes();
    if checkpoint.is_empty() {
        write_stderr(b"; no checkpoint was saved in this run");
    } else {
        write_stderr(b"; the last checkpoint is ");
        write_stderr(checkpoint);
        write_stderr(b" (resume with --resume-from-checkpoint latest)");
    }
}

extern "C" fn on_fatal_signal(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let name: &[u8] = match signal {
        libc::SIGSEGV => b"SIGSEGV, a bad memory access or a stack overflow",
        libc::SIGBUS => b"SIGBUS, a bad memory access",
        libc::SIGILL => b"SIGILL, an illegal instruction",
        libc::SIGFPE => b"SIGFPE, an arithmetic fault",
        _ => b"SIGABRT, an abort",
    };
    let call = CALL.bytes();
    if call.is_empty() {
        write_stderr(b"error: the host crashed (");
        write_stderr(name);
        write_stderr(b"); please report it");
    } else {
        write_stderr(b"error: ");
        write_stderr(call);
        write_stderr(b" crashed the process (");
        write_stderr(name);
        write_stderr(b"); the run cannot go on");
    }
    write_checkpoint_note();
    write_stderr(b"\n");
    // SAFETY: SA_RESETHAND restored the default disposition: the process ends by this signal.
    unsafe { libc::raise(signal) };
}

extern "C" fn on_exit() {
    if !TRAINING.load(Ordering::Acquire) {
        return;
    }
    let call = CALL.bytes();
    write_stderr(b"error: the process exited during training");
    if !call.is_empty() {
        write_stderr(b" from ");
        write_stderr(call);
        write_stderr(b" (plugins must not call exit; return an error instead)");
    }
    write_stderr(b"; the run's results were not written");
    write_checkpoint_note();
    write_stderr(b"\n");
    // SAFETY: ends the process at once with status 1, without running exit handlers again.
    unsafe { libc::_exit(1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_call_is_known_while_it_runs() {
        assert_eq!(current_call(), None);
        {
            let _call = PluginCall::start("plugin 'p' callback 'c'", "on_log");
            let (call, running) = current_call().unwrap();
            assert_eq!(call, "plugin 'p' callback 'c' in on_log");
            assert!(running < Duration::from_secs(5));
        }
        assert_eq!(current_call(), None);
        let long = "x".repeat(600);
        CHECKPOINT.set(&long);
        assert_eq!(CHECKPOINT.bytes().len(), 512);
        CHECKPOINT.clear();
    }
}
