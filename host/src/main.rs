//! `host`: a training host with plugin losses and callbacks.

use clap::{CommandFactory, FromArgMatches};
use host::cli::{Cli, Command};
use host::cli::commands as run;
use host::config::arguments as args;
use host::error;

fn main() {
    install_panic_hook();
    let cli = parse_cli();
    init_tracing();
    let outcome = match cli.command {
        Some(Command::Train(options)) => run::train(&options),
        None => run::train(&cli.train),
        Some(Command::Eval(options)) => run::evaluate(&options),
        Some(Command::Predict(options)) => run::predict(&options),
        Some(Command::Plugins(command)) => host::cli::plugins_command(&command),
        Some(Command::Launch(options)) => match host::cli::launch::run(&options) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Some(Command::NewPlugin { name, kind, dir }) => host::cli::scaffold::create(&name, kind, &dir).map(|root| {
            println!("created {} ({}): cd there, then cargo build --release", root.display(), name);
        }),
    };
    if let Err(error) = outcome {
        host::engine::progress_bar::finish();
        let message = format!("{error:#}").split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("error: {message}");
        std::process::exit(error::exit_code(&error));
    }
}

/// Parses the command line, showing each training argument's resolved default in --help.
fn parse_cli() -> Cli {
    let defaults = run::default_table();
    let annotate = |mut cmd: clap::Command| {
        for name in args::ARGUMENT_NAMES {
            if let Some(value) = defaults.get(*name) {
                let shown = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                cmd = cmd.mut_arg(*name, |arg| {
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    arg.help(format!("{help} [default: {shown}]"))
                });
            }
        }
        cmd
    };
    let command = annotate(Cli::command()).mut_subcommand("train", annotate);
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn init_tracing() {
    // As HF's log_level_replica: ranks other than 0 of a distributed run log warnings only.
    let replica = std::env::var("RANK").is_ok_and(|rank| rank.trim() != "0");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if replica { "warn" } else { "info" }));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(host::engine::progress_bar::LogWriter)
        .init();
}

/// A panic is a bug in the host, never the user's doing: say so in one line, no backtrace
/// unless RUST_BACKTRACE asks for one.
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("error: internal error: {message}{at}; please report it (RUST_BACKTRACE=1 shows where)");
    }));
}
