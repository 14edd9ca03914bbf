//! Panics in plugin code must not cross the boundary (that aborts the host). Every entry
//! point runs plugin code under `catch_unwind`; the panic message is captured here instead
//! of printed, and handed to the host as an error that it reports in one line.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL_HOOK: Once = Once::new();

/// Installs (once per plugin library; each has its own copy of std) a panic hook that
/// records the message and location instead of printing them.
fn install_hook() {
    INSTALL_HOOK.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(no message)".to_owned()
            };
            let text = match info.location() {
                Some(loc) => format!("{message} (at {}:{})", loc.file(), loc.line()),
                None => message,
            };
            LAST_PANIC.with(|slot| *slot.borrow_mut() = Some(text));
        }));
    });
}

/// Runs `f`, turning a panic into `Err(message)`.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    panic::catch_unwind(AssertUnwindSafe(f))
        .map_err(|_| LAST_PANIC.with(|slot| slot.borrow_mut().take()).unwrap_or_else(|| "(no message)".to_owned()))
}
