//! A seeded random fuzz of the command line: argument lists drawn from the real flag set,
//! with adversarial values. Whatever the values, the host answers with a result or one
//! error line: never a panic (exit 101), never a signal, never a run past 60 s.

use std::sync::Mutex;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::support::*;

/// How many of the values below, from the start, are plausible for many flags.
const PLAUSIBLE: usize = 8;

/// Values that break naive parsing, arithmetic and file handling (the first few plausible).
fn adversarial_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "1",
        "2",
        "3",
        "0.5",
        "true",
        "false",
        "epoch",
        "steps",
        "-1",
        "0",
        "-0.5",
        "1e-300",
        "1e308",
        "-1e308",
        "1e39",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "nan",
        "inf",
        "-inf",
        "",
        " ",
        "abc",
        "cuda:99",
        "/dev/null",
        "/proc/self/status",
        "../missing",
        "💥",
        "{}",
        "{\"num_cycles\": 1e308}",
        "[1, 2]",
        "a=b",
        "momentum=nan",
        "weighted_ce.weights=[1e308, -1]",
        "x.y=\"z\"",
        "torchscript:/dev/null",
        "gpt",
        "transformer",
        "cnn",
        "best",
        "no",
        "reduce_lr_on_plateau",
        "weighted_ce",
        "builtin",
        "latest",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    values.push("x".repeat(5000));
    values
}

/// Every flag: the training arguments and the plugin and config flags.
fn flags() -> Vec<String> {
    let mut flags: Vec<String> =
        host::config::arguments::ARGUMENT_NAMES.iter().map(|n| format!("--{}", n.replace('_', "-"))).collect();
    flags.extend(["--plugin", "--loss", "--callback", "--plugin-config", "--config"].map(str::to_owned));
    flags
}

/// Keeps each run short and inside its folder, for the flags the draw left alone.
const BASE: &[(&str, &str)] = &[
    ("--max-steps", "2"),
    ("--max-train-samples", "128"),
    ("--max-eval-samples", "64"),
    ("--save-strategy", "no"),
    ("--output-dir", "out"),
    ("--hidden-size", "16"),
];

#[test]
fn random_command_lines_never_panic_crash_or_hang() {
    let (flags, values) = (flags(), adversarial_values());
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let draws: Vec<Vec<String>> = (0..200)
        .map(|_| {
            let mut args = Vec::new();
            for _ in 0..random.gen_range(1..=3) {
                args.push(flags.choose(&mut random).unwrap().clone());
                // Half the values plausible, so that runs get past the checks into training.
                let pool = if random.gen_bool(0.5) { &values[..PLAUSIBLE] } else { &values[..] };
                args.push(pool.choose(&mut random).unwrap().clone());
            }
            for (flag, value) in BASE {
                if !args.iter().any(|a| a == flag) {
                    args.extend([flag.to_string(), value.to_string()]);
                }
            }
            args
        })
        .collect();
    let dir = tempdir();
    // Each run in a folder three levels down, so that `..` values stay in the test's.
    let failures = Mutex::new(Vec::new());
    let exits = Mutex::new(std::collections::BTreeMap::<i32, usize>::new());
    let next = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = {
                    let mut next = next.lock().unwrap();
                    *next += 1;
                    *next - 1
                };
                let Some(args) = draws.get(i) else { break };
                let cwd = dir.path().join(format!("run{i}/a/b"));
                std::fs::create_dir_all(&cwd).unwrap();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let ended = Background::start(&cwd, &args).wait(60.0);
                let panicked =
                    ["panicked at", "internal error", "RUST_BACKTRACE"].iter().any(|p| ended.stderr.contains(p));
                let errors = ended.error_lines().len();
                *exits.lock().unwrap().entry(ended.code.unwrap_or(-1)).or_default() += 1;
                let clean = match ended.code {
                    Some(0) => errors == 0,
                    Some(1 | 2) => errors == 1,
                    _ => false,
                };
                if panicked || !clean {
                    let tail: Vec<&str> = ended.stderr.lines().rev().take(3).collect();
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{args:?}: exit {:?}, signal {:?}: {tail:?}", ended.code, ended.signal));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} runs failed:\n{}", failures.len(), draws.len(), failures.join("\n"));
    // The draw reaches training as well as the checks: both outcomes are common.
    let exits = exits.into_inner().unwrap();
    eprintln!("exit codes of the fuzzed runs: {exits:?}");
    assert!(exits.get(&0).is_some_and(|&n| n >= 10) && exits.get(&2).is_some_and(|&n| n >= 20), "{exits:?}");
}
