//! `host`: a training host with plugin losses and callbacks.

/// Runs before any shared library initializes (libtorch's start-up takes a moment), so that
/// a stop signal from the first instant is answered, not a silent kill.
#[used]
#[unsafe(link_section = ".preinit_array")]
static EARLY_STOP_HANDLERS: extern "C" fn() = host::fatal::install_early_stop_handlers;

fn main() {
    host::fatal::install();
    install_panic_hook();
    let cli = host::cli::parse();
    if !cli.trains() {
        host::fatal::default_stop_handling();
        // As Unix tools: output into a closed pipe (`host plugins inspect X | head`) ends
        // the process quietly. (Training keeps Rust's default: a closed pipe must not cost
        // a run its results.)
        // SAFETY: restores the default action for one signal, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    host::logging::init();
    match host::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            host::engine::progress_bar::finish();
            let message = format!("{error:#}").split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("error: {message}");
            std::process::exit(host::error::exit_code(&error));
        }
    }
}

/// A panic is a bug in the host, never the user's doing: say so in one line, no backtrace
/// unless RUST_BACKTRACE asks for one. libtorch failures that a guard turns into an error
/// (out of memory, say) are that error's to report.
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    let backtraces = std::env::var_os("RUST_BACKTRACE").is_some();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if host::engine::libtorch::inside_guard() && host::engine::libtorch::is_torch_panic(&message) {
            return;
        }
        if backtraces {
            return default_hook(info);
        }
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("error: internal error: {message}{at}; please report it (RUST_BACKTRACE=1 shows where)");
    }));
}
