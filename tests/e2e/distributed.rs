//! Data-parallel runs on CPU (Gloo over loopback): the same numbers as one process with the
//! same global batch, exact resume, and failures that name the rank instead of hanging.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A port nothing listens on now, for one test's rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// 128 training examples (4 global batches of 32 per epoch, 3 epochs), an odd number of
/// evaluation examples (uneven shares), the stock weighted_ce loss (num_items_in_batch
/// across ranks), evaluation and saving every 6 steps, a loss logged every step.
fn job(weighted_ce: &Path, batch: &str) -> Vec<String> {
    [
        "--plugin",
        path_str(weighted_ce),
        "--max-train-samples",
        "128",
        "--max-eval-samples",
        "101",
        "--per-device-train-batch-size",
        batch,
        "--gradient-accumulation-steps",
        "2",
        "--max-steps",
        "12",
        "--logging-steps",
        "1",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "6",
        "--save-steps",
        "6",
        "--ddp-timeout",
        "60",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `host launch --nproc-per-node N -- args` in `dir`.
fn launch(dir: &Path, ranks: usize, args: &[String]) -> Run {
    let mut all = vec!["launch".to_owned(), "--nproc-per-node".to_owned(), ranks.to_string(), "--".to_owned()];
    all.extend_from_slice(args);
    host(dir, &all.iter().map(String::as_str).collect::<Vec<_>>())
}

fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut named = tch::Tensor::read_safetensors(path).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn largest_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.iter().map(|(n, _)| n).collect::<Vec<_>>(), b.iter().map(|(n, _)| n).collect::<Vec<_>>());
    a.iter().zip(&b).map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn metric(entry: &serde_json::Value, name: &str) -> Option<f64> {
    entry.get(name).and_then(serde_json::Value::as_f64)
}

#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch() {
    let weighted_ce = plugin("weighted_ce");
    // A metric plugin too: its totals are summed over the ranks' uneven shares.
    let report = plugin("classification_report");
    let with_metric =
        |batch: &str| [job(&weighted_ce, batch), vec!["--plugin".into(), path_str(&report).into()]].concat();
    let (one, two) = (tempdir(), tempdir());
    let single = host(one.path(), &with_metric("16").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(single.code, 0, "{}", single.stderr);
    let run = launch(two.path(), 2, &with_metric("8"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("rank 0 of 2"), "{}", run.stderr);

    let (a, b) = (log_history(one.path()), log_history(two.path()));
    assert_eq!(a.len(), b.len(), "log events:\n{a:?}\n{b:?}");
    let mut losses = 0;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        for name in ["loss", "grad_norm", "eval_loss", "eval_accuracy", "eval_f1", "eval_macro_f1", "train_loss"] {
            if let (Some(p), Some(q)) = (metric(x, name), metric(y, name)) {
                assert!((p - q).abs() < 1e-5, "step {}: {name} {p} (1 rank) vs {q} (2 ranks)", x["step"]);
                losses += usize::from(name == "loss");
            }
        }
    }
    assert_eq!(losses, 12, "a loss per step");
    let confusion = |dir: &Path| {
        let text = std::fs::read_to_string(dir.join("output/classification_report.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["confusion_matrix"].clone()
    };
    let matrix = confusion(two.path());
    assert_eq!(matrix, confusion(one.path()), "the metric's totals cover both ranks' shares");
    let counted: i64 =
        matrix.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(counted, 101, "every evaluation example, once");
    // Throughput counts every rank's samples.
    let samples = |dir: &Path| results(dir)["train_samples_per_second"].as_f64().unwrap();
    assert!(samples(two.path()) > 0.0 && samples(one.path()) > 0.0);
    let difference =
        largest_difference(&one.path().join("output/model.safetensors"), &two.path().join("output/model.safetensors"));
    assert!(difference < 1e-5, "final weights differ by {difference}");
    // Rank 0 alone writes the run's files; each rank's generator state is in the checkpoint.
    let checkpoint = two.path().join("output/checkpoint-6");
    for file in ["rng_state_0.safetensors", "rng_state_1.safetensors", "model.safetensors"] {
        assert!(checkpoint.join(file).exists(), "{file} missing");
    }
    assert!(!checkpoint.join("rng_state.safetensors").exists());
}

#[test]
fn early_stopping_and_the_best_model_act_on_every_rank_as_in_one_process() {
    // Early stopping (a plugin callback setting should_training_stop in on_evaluate) stops
    // both ranks at the same evaluation, and the best model rank 0 loads reaches rank 1:
    // the run equals one process with the same global batch.
    let (weighted_ce, stopping) = (plugin("weighted_ce"), plugin("early_stopping"));
    let job = |batch: &str| {
        let mut args = job(&weighted_ce, batch);
        args.retain(|a| a != "12");
        let at = args.iter().position(|a| a == "--max-steps").unwrap();
        args.insert(at + 1, "40".to_owned());
        args.extend(
            [
                "--plugin",
                path_str(&stopping),
                "--metric-for-best-model",
                "loss",
                "--load-best-model-at-end",
                "--plugin-config",
                "early_stopping.early_stopping_patience=1",
                "--plugin-config",
                "early_stopping.early_stopping_threshold=1.0",
            ]
            .map(str::to_owned),
        );
        args
    };
    let (one, two) = (tempdir(), tempdir());
    let single = host(one.path(), &job("16").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(single.code, 0, "{}", single.stderr);
    let run = launch(two.path(), 2, &job("8"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let last_step = |dir: &Path| log_history(dir).last().unwrap()["step"].as_i64().unwrap();
    // Stopped at the second evaluation (step 12), well before max_steps.
    assert_eq!((last_step(one.path()), last_step(two.path())), (12, 12));
    let difference =
        largest_difference(&one.path().join("output/model.safetensors"), &two.path().join("output/model.safetensors"));
    assert!(difference < 1e-5, "final (best) weights differ by {difference}");
    // The final weights are the best checkpoint's (and the loading did not hang rank 1).
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.path().join("output/trainer_state.json")).unwrap()).unwrap();
    let best = state["best_model_checkpoint"].as_str().expect("a best checkpoint");
    let difference = largest_difference(
        &two.path().join(best).join("model.safetensors"),
        &two.path().join("output/model.safetensors"),
    );
    assert_eq!(difference, 0.0, "the final weights are not the best checkpoint's");
}

#[test]
fn a_two_rank_checkpoint_resumes_on_two_ranks_exactly() {
    let weighted_ce = plugin("weighted_ce");
    let (straight, resumed) = (tempdir(), tempdir());
    let mut args = job(&weighted_ce, "8");
    // Dropout draws random numbers on every rank: the restored generators must replay them.
    args.extend(["--dropout", "0.1"].map(str::to_owned));
    let run = launch(straight.path(), 2, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let checkpoint = straight.path().join("output/checkpoint-6");
    let mut again = args.clone();
    again.extend(["--resume-from-checkpoint".to_owned(), checkpoint.display().to_string()]);
    let run = launch(resumed.path(), 2, &again);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(history_without_timings(straight.path()), history_without_timings(resumed.path()));
    let weights = |dir: &Path| std::fs::read(dir.join("output/model.safetensors")).unwrap();
    assert!(weights(straight.path()) == weights(resumed.path()), "final weights differ");

    // One process cannot continue what two started.
    let mut single = args.clone();
    single.extend(["--resume-from-checkpoint".to_owned(), checkpoint.display().to_string()]);
    let run = host(resumed.path(), &single.iter().map(String::as_str).collect::<Vec<_>>());
    run.assert_clean_error(2, "was written by 2 rank(s), this run has 1");
}

/// Starts one rank of a two-rank run by hand, as torchrun would.
fn start_rank(dir: &Path, rank: usize, port: u16, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .current_dir(dir)
        .args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` up to `limit`; kills it and fails the test if it is still running.
fn wait_within(mut child: Child, limit: Duration, what: &str) -> (i32, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a two-rank run that would go on for a long time and returns its ranks once
/// training is under way (rank 0 has logged a step).
fn two_ranks_training(dir: &Path) -> (Child, Child) {
    let port = free_port();
    let args = ["--max-steps", "1000000", "--logging-steps", "1", "--save-strategy", "no", "--ddp-timeout", "30"];
    let ranks = (start_rank(dir, 0, port, &args), start_rank(dir, 1, port, &args));
    let history = dir.join("output/log_history.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&history).map_or(true, |text| text.is_empty()) {
        assert!(started.elapsed() < Duration::from_secs(120), "training never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    ranks
}

#[test]
fn a_killed_rank_makes_the_other_exit_naming_it() {
    let dir = tempdir();
    let (survivor, mut victim) = two_ranks_training(dir.path());
    victim.kill().unwrap();
    let _ = victim.wait();
    let (code, stderr) = wait_within(survivor, Duration::from_secs(60), "rank 0");
    assert_ne!(code, 0, "{stderr}");
    let error = stderr.lines().rfind(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(error.contains("failed on rank 0: rank 1 stopped responding"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_rank_that_never_arrives_is_named() {
    let dir = tempdir();
    let alone = start_rank(dir.path(), 0, free_port(), &["--max-steps", "5", "--ddp-timeout", "2"]);
    let (code, stderr) = wait_within(alone, Duration::from_secs(60), "rank 0 waiting for rank 1");
    assert_eq!(code, 1, "{stderr}");
    let error = stderr.lines().rfind(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(error.contains("rank 1 never arrived at the rendezvous"), "{stderr}");
}

#[test]
fn launch_reports_the_rank_that_failed_and_its_status() {
    let dir = tempdir();
    let run = launch(dir.path(), 2, &["--learning-rate=-1".to_owned()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("exited with status 2; stopping the other ranks"), "{}", run.stderr);
    assert!(run.stderr.contains("learning_rate must be >= 0"), "{}", run.stderr);
}

#[test]
fn torchrun_starts_the_host_as_its_ranks() {
    let python = repo().join(".venv/bin/python");
    let dir = tempdir();
    let port = free_port().to_string();
    let output = Command::new(&python)
        .current_dir(dir.path())
        .args(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", &port, "--no-python"])
        .arg(env!("CARGO_BIN_EXE_host"))
        .args(["--max-steps", "4", "--logging-steps", "2", "--save-steps", "4", "--ddp-timeout", "60"])
        .output()
        .expect("run torchrun from the venv (scripts/setup.sh makes it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // torchrun's agent hosts the store; both ranks joined it as clients.
    assert!(stderr.contains("rank 0 of 2"), "{stderr}");
    assert_eq!(log_history(dir.path()).iter().filter(|e| e.get("loss").is_some()).count(), 2);
    assert!(dir.path().join("output/checkpoint-4/rng_state_1.safetensors").exists());
}

#[test]
fn a_signal_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint() {
    let dir = tempdir();
    let (first, second) = two_ranks_training(dir.path());
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let (code_first, stderr_first) = wait_within(first, Duration::from_secs(60), "rank 0");
    let (code_second, stderr_second) = wait_within(second, Duration::from_secs(60), "rank 1");
    assert_eq!((code_first, code_second), (143, 143), "{stderr_first}\n{stderr_second}");
    let saved = |stderr: &str| {
        let error = stderr.lines().rfind(|l| l.starts_with("error:")).unwrap_or_default().to_owned();
        assert!(error.contains("interrupted by SIGTERM: saved"), "{stderr}");
        error
    };
    // Both name the same checkpoint: they stopped after the same step.
    assert_eq!(saved(&stderr_first), saved(&stderr_second));
    let checkpoint = std::fs::read_dir(dir.path().join("output"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .expect("a checkpoint")
        .path();
    assert!(checkpoint.join("rng_state_1.safetensors").exists());
}

#[test]
fn two_launchers_as_two_nodes_make_one_run() {
    // Multi-node as two machines would do it, here on loopback: node 0 hosts the
    // rendezvous; the ranks are numbered node by node.
    let dir = tempdir();
    let port = free_port().to_string();
    let node = |rank: &str| {
        Command::new(env!("CARGO_BIN_EXE_host"))
            .current_dir(dir.path())
            .args(["launch", "--nnodes", "2", "--node-rank", rank, "--nproc-per-node", "1"])
            .args(["--master-addr", "127.0.0.1", "--master-port", &port, "--"])
            .args(["--max-steps", "4", "--logging-steps", "1", "--save-steps", "4", "--ddp-timeout", "60"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (node("0"), node("1"));
    let (code_first, stderr_first) = wait_within(first, Duration::from_secs(120), "node 0");
    let (code_second, stderr_second) = wait_within(second, Duration::from_secs(120), "node 1");
    assert_eq!((code_first, code_second), (0, 0), "{stderr_first}\n{stderr_second}");
    assert!(stderr_first.contains("distributed: rank 0 of 2 (local 0 of 1)"), "{stderr_first}");
    // Rank 1 (node 1) logs warnings only and writes nothing; rank 0 wrote the run.
    assert!(!stderr_second.contains("distributed: rank"), "{stderr_second}");
    assert_eq!(log_history(dir.path()).iter().filter(|e| e.get("loss").is_some()).count(), 4);
    assert!(dir.path().join("output/checkpoint-4/rng_state_1.safetensors").exists());
}
