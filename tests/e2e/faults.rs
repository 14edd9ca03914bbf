//! Faults as an operator meets them: plugins that crash, abort, overflow their stack, exit
//! or hang; signals at any moment; kill -9 at random points; two runs in one folder; a
//! run that diverges. Each ends in one clear line and loses nothing already saved.

use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::support::*;

/// A run with the fixture callback `crash` (at step 3), saving every 2 steps.
fn crash_args<'a>(fixtures: &'a str, how: &'a str) -> Vec<&'a str> {
    vec![
        "--plugin",
        fixtures,
        "--loss",
        "builtin",
        "--callback",
        "crash",
        "--plugin-config",
        how,
        "--save-steps",
        "2",
        "--max-steps",
        "8",
        "--eval-strategy",
        "no",
    ]
}

#[test]
fn plugin_crashes_name_the_plugin_and_the_last_checkpoint() {
    let fixtures = plugin("test_fixtures");
    let cases = [
        ("crash.how=\"segfault\"", Some(libc::SIGSEGV), None, "crashed the process (SIGSEGV"),
        ("crash.how=\"stack_overflow\"", Some(libc::SIGSEGV), None, "crashed the process (SIGSEGV"),
        ("crash.how=\"abort\"", Some(libc::SIGABRT), None, "crashed the process (SIGABRT, an abort)"),
        ("crash.how=\"exit\"", None, Some(1), "the process exited during training from plugin"),
    ];
    for (how, signal, code, expected) in cases {
        let dir = tempdir();
        let ended = Background::start(dir.path(), &crash_args(path_str(&fixtures), how)).wait(60.0);
        assert_eq!((ended.signal, ended.code), (signal, code), "{how}: stderr:\n{}", ended.stderr);
        let errors = ended.error_lines();
        assert_eq!(errors.len(), 1, "{how}: one error line:\n{}", ended.stderr);
        assert!(errors[0].contains("plugin 'test_fixtures' callback 'crash' in on_step_end"), "{}", errors[0]);
        assert!(errors[0].contains(expected), "{how}: {}", errors[0]);
        assert!(errors[0].contains("the last checkpoint is output/checkpoint-2"), "{}", errors[0]);
        ended.assert_no_panic();
        // What was saved before is whole.
        host::engine::checkpoint::verify(&dir.path().join("output/checkpoint-2")).unwrap();
        assert!(!dir.path().join("output/all_results.json").exists(), "{how}: no results for a run that died");
    }
}

#[test]
fn a_hung_plugin_is_named_at_the_first_signal_and_the_second_ends_the_run() {
    let fixtures = plugin("test_fixtures");
    let dir = tempdir();
    let mut run = Background::start(dir.path(), &crash_args(path_str(&fixtures), "crash.how=\"hang\""));
    assert!(run.wait_for("saved output/checkpoint-2", 30.0), "the run never got going:\n{}", run.stderr());
    std::thread::sleep(std::time::Duration::from_millis(500));
    run.signal(libc::SIGTERM);
    let answered = "SIGTERM: stopping after the current step, with a checkpoint; plugin 'test_fixtures' callback 'crash' in on_step_end has been running for";
    assert!(run.wait_for(answered, 10.0), "no answer to the first signal:\n{}", run.stderr());
    assert!(run.stderr().contains("a second signal exits at once"));
    run.signal(libc::SIGTERM);
    let ended = run.wait(10.0);
    assert_eq!(ended.code, Some(143), "stderr:\n{}", ended.stderr);
    ended.assert_no_panic();
}

/// Whether process `pid` catches SIGINT (its handler is in place), from /proc.
fn catches_sigint(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).unwrap_or("0").trim().to_owned();
    u64::from_str_radix(&caught, 16).is_ok_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

#[test]
fn a_stop_signal_at_any_moment_of_start_up_is_answered() {
    // From the moment the binary runs its own code (before libtorch's start-up, which takes
    // most of a second): only the dynamic loader's few milliseconds come before that.
    for delay_ms in [0, 40, 150, 400, 900] {
        let dir = tempdir();
        // Long enough that the last signal still finds it training (400 steps take 0.5 s).
        let run = Background::start(dir.path(), &["--max-steps", "20000", "--eval-strategy", "no"]);
        let started = std::time::Instant::now();
        while !catches_sigint(run.pid()) && started.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        run.signal(libc::SIGINT);
        let ended = run.wait(60.0);
        assert_eq!((ended.code, ended.signal), (Some(130), None), "SIGINT at {delay_ms} ms: {}", ended.stderr);
        let errors = ended.error_lines();
        assert_eq!(errors.len(), 1, "{}", ended.stderr);
        assert!(
            errors[0].contains("interrupted by SIGINT before training started; nothing was saved")
                || errors[0].contains("interrupted by SIGINT: saved output/checkpoint-"),
            "SIGINT at {delay_ms} ms: {}",
            errors[0]
        );
    }
}

#[test]
fn losses_that_cannot_train_are_named() {
    let fixtures = plugin("test_fixtures");
    let cases = [
        ("bad_loss.integer=false", "plugin 'test_fixtures' loss 'bad_loss' returned a loss without a gradient"),
        (
            "bad_loss.integer=true",
            "plugin 'test_fixtures' loss 'bad_loss' returned a Int64 tensor; a loss must be floating point",
        ),
    ];
    for (config, expected) in cases {
        let dir = tempdir();
        let args = [
            "--plugin",
            path_str(&fixtures),
            "--loss",
            "bad_loss",
            "--callback",
            "noop",
            "--plugin-config",
            config,
            "--max-steps",
            "2",
        ];
        host(dir.path(), &args).assert_clean_error(1, expected);
    }
}

#[test]
fn a_diverging_run_skips_the_nonfinite_steps_then_stops_with_its_last_good_checkpoint() {
    let dir = tempdir();
    let args = [
        "--learning-rate",
        "1e30",
        "--max-steps",
        "40",
        "--save-steps",
        "1",
        "--save-total-limit",
        "2",
        "--logging-steps",
        "1",
        "--eval-strategy",
        "no",
    ];
    let run = host(dir.path(), &args);
    run.assert_clean_error(
        1,
        "training diverged: the loss or the gradient norm was not finite for 10 optimizer steps in a row (steps 2 to 11), all skipped; the last checkpoint is output/checkpoint-1;",
    );
    assert!(run.stderr.contains(
        "step 2: the loss or the gradient norm is not finite (nan or inf); the update is skipped (1 in a row)"
    ));
    // No checkpoint was made while the steps were not finite, and rotation kept the good one.
    let output: Vec<String> = std::fs::read_dir(dir.path().join("output"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(output, ["checkpoint-1"]);
    let counted: f64 = log_history(dir.path()).iter().filter_map(|e| e.get("nonfinite_steps")?.as_f64()).sum();
    assert_eq!(counted, 9.0, "each skipped step is counted in the logs (the tenth stops the run first)");
}

#[test]
fn non_finite_checks_read_only_at_logs_and_saves_decide_the_same() {
    // HOST_DEFER_STEP_CHECKS takes a CUDA run's path on the CPU: the skip is decided on
    // the device (fused AdamW's found_inf) and read at the next log or save.
    let defer = [("HOST_DEFER_STEP_CHECKS", "1")];
    let diverging = tempdir();
    let args = ["--learning-rate", "1e30", "--max-steps", "40", "--save-steps", "5", "--logging-steps", "5"];
    let run = host_with_env(diverging.path(), &[&args[..], &["--eval-strategy", "no"]].concat(), &defer);
    run.assert_clean_error(
        1,
        "training diverged: the loss or the gradient norm was not finite for 10 optimizer steps in a row (steps 2 to 11), all skipped; no checkpoint was saved;",
    );
    assert!(
        run.stderr.contains("steps 1 to 5: 4 of them had a loss or gradient norm that is not finite (nan or inf), their updates skipped (4 in a row now)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("step 5: no checkpoint while the loss or the gradient is not finite"),
        "{}",
        run.stderr
    );
    let counted: Vec<f64> =
        log_history(diverging.path()).iter().filter_map(|e| e.get("nonfinite_steps")?.as_f64()).collect();
    assert_eq!(counted, [4.0, 5.0]);

    // One NaN loss at step 3: the same weights either way.
    let fixtures = plugin("test_fixtures");
    let nan_once = [
        "--plugin",
        path_str(&fixtures),
        "--loss",
        "nan_on_call",
        "--callback",
        "misbehave",
        "--plugin-config",
        "misbehave.event=none",
        "--plugin-config",
        "nan_on_call.nan_on_call=3",
        "--max-steps",
        "12",
        "--logging-steps",
        "6",
        "--eval-strategy",
        "no",
    ];
    let (now, later) = (tempdir(), tempdir());
    let read_now = host(now.path(), &nan_once);
    let deferred = host_with_env(later.path(), &nan_once, &defer);
    assert_eq!((read_now.code, deferred.code), (0, 0), "{}\n{}", read_now.stderr, deferred.stderr);
    assert!(deferred.stderr.contains("steps 1 to 6: 1 of them had a loss or gradient norm that is not finite"));
    let weights = |dir: &tempfile::TempDir| std::fs::read(dir.path().join("output/model.safetensors")).unwrap();
    assert!(weights(&now) == weights(&later), "deferred checks changed the trained weights");
}

#[test]
fn two_runs_into_one_output_dir_do_not_mix() {
    let dir = tempdir();
    let mut first =
        Background::start(dir.path(), &["--max-steps", "100000", "--eval-strategy", "no", "--save-strategy", "no"]);
    assert!(first.wait_for("training:", 30.0), "{}", first.stderr());
    let second = host(dir.path(), &["--max-steps", "2"]);
    second.assert_clean_error(
        2,
        &format!("output_dir output is in use by another run (process {}); wait for it to finish", first.pid()),
    );
    first.signal(libc::SIGKILL);
    let _ = first.wait(10.0);
    // The kernel let go of the lock with the process: the folder is free again.
    let third = host(dir.path(), &["--max-steps", "2", "--eval-strategy", "no"]);
    assert_eq!(third.code, 0, "stderr:\n{}", third.stderr);
}

/// The final weights and the log history (without timings) of a run in `dir`.
fn outcome(dir: &Path) -> (Vec<u8>, Vec<serde_json::Value>) {
    (std::fs::read(dir.join("output/model.safetensors")).unwrap(), history_without_timings(dir))
}

#[test]
fn kill_9_at_random_moments_then_latest_gives_bitwise_the_same_run() {
    let base = [
        "--max-steps",
        "90",
        "--save-steps",
        "4",
        "--save-total-limit",
        "3",
        "--logging-steps",
        "5",
        "--eval-steps",
        "30",
        "--eval-strategy",
        "steps",
        "--dropout",
        "0.1",
    ];
    let straight = tempdir();
    assert_eq!(host(straight.path(), &base).code, 0);
    let expected = outcome(straight.path());

    // Six kills, each a random moment (0-40 ms) after a random later checkpoint was
    // saved: during training, a save, a rotation or the final writes.
    let killed = tempdir();
    let output = killed.path().join("output");
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let mut kills = 0;
    loop {
        let mut args = base.to_vec();
        let resumable = host::engine::checkpoint::latest(&output, host::engine::checkpoint::verify).ok();
        if resumable.is_some() {
            args.extend(["--resume-from-checkpoint", "latest"]);
        }
        let from: u64 =
            resumable.map_or(0, |(dir, ())| dir.to_string_lossy().rsplit('-').next().unwrap().parse().unwrap());
        let target = (from + 4 * random.gen_range(1..=5)).min(88);
        let mut run = Background::start(killed.path(), &args);
        if kills == 6 || target <= from {
            let ended = run.wait(60.0);
            assert_eq!(ended.code, Some(0), "stderr:\n{}", ended.stderr);
            break;
        }
        assert!(run.wait_for(&format!("saved output/checkpoint-{target} "), 60.0), "{}", run.stderr());
        std::thread::sleep(std::time::Duration::from_millis(random.gen_range(0..40)));
        run.signal(libc::SIGKILL);
        let ended = run.wait(30.0);
        assert!(ended.signal == Some(libc::SIGKILL) || ended.code == Some(0), "stderr:\n{}", ended.stderr);
        kills += 1;
    }
    assert!(outcome(killed.path()) == expected, "the run killed {kills} times ended differently");
}

#[test]
fn resuming_a_finished_run_trains_and_writes_nothing() {
    let dir = tempdir();
    let args = ["--max-steps", "12", "--save-steps", "6", "--eval-strategy", "no"];
    assert_eq!(host(dir.path(), &args).code, 0);
    let before = (outcome(dir.path()), std::fs::read(dir.path().join("output/all_results.json")).unwrap());
    let run = host(dir.path(), &[&args[..], &["--resume-from-checkpoint", "latest"]].concat());
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains(
            "output/checkpoint-12 is at step 12 of 12: training is complete and its results are written; nothing to do"
        ),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("output/checkpoint-13").exists());
    let after = (outcome(dir.path()), std::fs::read(dir.path().join("output/all_results.json")).unwrap());
    assert!(before == after, "a finished run's files changed");
}

/// A tmpfs of `size` mounted on `dir` while this lives, where the machine permits mounting
/// (elsewhere the tests that need one say so and pass).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!(
                "skipped: this machine does not permit mounting a tmpfs (the RLIMIT_FSIZE test covers failed writes)"
            );
            return None;
        }
        Some(Self(dir.to_owned()))
    }

    /// Bytes free on it.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: statvfs fills the struct for a valid path.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_keeps_what_was_saved() {
    let dir = tempdir();
    let disk = dir.path().join("disk");
    // Checkpoints of about 1 MB (weights and AdamW's moments): the second does not fit.
    let Some(_tmpfs) = Tmpfs::mount(&disk, "2500k") else { return };
    let run = host(&disk, &["--max-steps", "40", "--save-steps", "5", "--eval-strategy", "no"]);
    run.assert_clean_error(1, "No space left on device (os error 28)");
    assert!(run.error_line().starts_with("error: cannot write output/checkpoint-"), "{}", run.error_line());
    // Every checkpoint there is complete, and the disk held at least one.
    let saved = host::engine::checkpoint::list(&disk.join("output"));
    assert!(!saved.is_empty());
    for (_, checkpoint) in saved {
        host::engine::checkpoint::verify(&checkpoint).unwrap();
    }
}

#[test]
fn a_full_disk_leaves_the_previous_runs_results_whole() {
    let dir = tempdir();
    let disk = dir.path().join("disk");
    let Some(tmpfs) = Tmpfs::mount(&disk, "4m") else { return };
    let args = ["--max-steps", "5", "--save-strategy", "no", "--eval-strategy", "no"];
    assert_eq!(host(&disk, &args).code, 0);
    let read = |name: &str| std::fs::read(disk.join("output").join(name)).unwrap();
    let finished = (read("model.safetensors"), read("all_results.json"), read("trainer_state.json"));
    // Fill the disk but for 100 KB: the new weights (340 KB) cannot be written.
    let filler = tmpfs.free().saturating_sub(100_000);
    std::fs::write(disk.join("filler"), vec![0u8; filler as usize]).unwrap();
    let run = host(&disk, &args);
    run.assert_clean_error(1, "No space left on device");
    assert!(finished == (read("model.safetensors"), read("all_results.json"), read("trainer_state.json")));
    let leftovers: Vec<_> = std::fs::read_dir(disk.join("output"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "half-written files left: {leftovers:?}");
}

#[test]
fn a_write_that_fails_midway_leaves_no_checkpoint_and_the_next_run_cleans_up() {
    use std::os::unix::process::CommandExt;
    let dir = tempdir();
    let args = ["--max-steps", "10", "--save-steps", "5", "--eval-strategy", "no"];
    // Files may grow to 500 KB: the weights (340 KB) fit, AdamW's moments (680 KB) do not.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_host"));
    command.current_dir(dir.path()).args(args).env_remove("LD_LIBRARY_PATH").env_remove("RUST_BACKTRACE");
    // SAFETY: setrlimit and signal are async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 500_000, rlim_max: 500_000 };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            // Without SIGXFSZ the write fails with EFBIG, as a full disk fails with ENOSPC.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let output = command.output().unwrap();
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    run.assert_clean_error(1, "File too large");
    assert!(run.error_line().contains("optimizer.safetensors"), "names the file: {}", run.error_line());
    assert!(host::engine::checkpoint::list(&dir.path().join("output")).is_empty(), "no checkpoint may appear");
    // The next run, with room, removes what the failed save left and trains.
    let again = host(dir.path(), &args);
    assert_eq!(again.code, 0, "stderr:\n{}", again.stderr);
    assert!(again.stderr.contains("(left by an interrupted save)"), "{}", again.stderr);
    host::engine::checkpoint::verify(&dir.path().join("output/checkpoint-10")).unwrap();
}
