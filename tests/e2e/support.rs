//! Building the plugins once and running the host binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The target folder that cargo builds this test into (`target/debug` or `target/release`).
pub fn target_profile_dir() -> PathBuf {
    // The host binary lives there; plugins built in the same profile land next to it.
    Path::new(env!("CARGO_BIN_EXE_host")).parent().unwrap().to_owned()
}

/// The workspace's plugin crates, built once per test run in the same profile as the host
/// (`cargo test` builds no cdylib by itself).
const PLUGIN_PACKAGES: &[&str] = &[
    "weighted_ce",
    "early_stopping",
    "focal_loss",
    "mse",
    "huber",
    "bce_with_logits",
    "kl_div",
    "csv_logger",
    "timer",
    "tensorboard",
    "nan_guard",
    "throughput",
    "ema",
    "classification_report",
    "muon",
    "one_cycle",
    "mixup",
    "resnet",
    "test_fixtures",
    "future_api",
    "no_root_module",
    "torch_mismatch",
];

/// Every stock plugin of the workspace is built for the tests (a missing entry above would
/// pass here only where the plugin happened to be built by hand).
#[test]
fn every_stock_plugin_is_built_for_the_tests() {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let stock: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().trim_matches(|c| c == '"' || c == ',').strip_prefix("plugins/"))
        .collect();
    assert!(stock.len() >= 10, "{stock:?}");
    for name in stock {
        assert!(PLUGIN_PACKAGES.contains(&name), "plugins/{name} is not in PLUGIN_PACKAGES");
    }
}

/// Path of a workspace plugin library, building the plugins on first use.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(repo()).arg("build").arg("--quiet");
        if target_profile_dir().ends_with("release") {
            cargo.arg("--release");
        }
        for package in PLUGIN_PACKAGES {
            cargo.args(["-p", package]);
        }
        let status = cargo.status().expect("run cargo build for the plugins");
        assert!(status.success(), "building the test plugins failed");
    });
    let path = target_profile_dir().join(format!("lib{name}.so"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The result of one host run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last line of stderr: where the host prints its one-line error.
    pub fn error_line(&self) -> &str {
        self.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    }

    /// Asserts a clean user-facing failure: the exit code, one `error:` line containing
    /// `needle`, and nothing that looks like a crash.
    pub fn assert_clean_error(&self, code: i32, needle: &str) {
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        assert_eq!(errors.len(), 1, "exactly one error line; stderr:\n{}", self.stderr);
        assert!(errors[0].contains(needle), "error line {:?} should mention {needle:?}", errors[0]);
        for crash in ["panicked at", "RUST_BACKTRACE", "stack backtrace", "Aborted", "core dumped", "internal error"] {
            assert!(!self.stderr.contains(crash), "stderr shows a crash ({crash}):\n{}", self.stderr);
        }
    }
}

/// Runs the host with `args` in `dir` (its output_dir defaults below it).
pub fn host(dir: &Path, args: &[&str]) -> Run {
    host_with_env(dir, args, &[])
}

/// `host` with environment variables set (test-only fault points, say).
pub fn host_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_host"))
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        // The binary must find libtorch through its rpath, not the environment.
        .env_remove("LD_LIBRARY_PATH")
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the host binary");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// libtorch's CPU generator is one for the whole test process: a test that seeds it or
/// draws from it holds this meanwhile, so that another test's draw cannot land between a
/// seed and the numbers it should give.
pub fn generator_lock() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A run with the recorder callback of test_fixtures (which can stop training at a step,
/// recorder.stop_at_step), so that runs that stop and runs that do not load the same
/// plugins; the built-in loss unless `base` names one.
pub fn run_with_recorder(dir: &Path, base: &[&str], extra: &[&str]) -> Run {
    let fixtures = plugin("test_fixtures");
    let mut args =
        vec!["--plugin", path_str(&fixtures), "--callback", "recorder", "--plugin-config", "recorder.path=events.txt"];
    if !base.contains(&"--loss") {
        args.extend(["--loss", "builtin"]);
    }
    args.extend_from_slice(base);
    args.extend_from_slice(extra);
    host(dir, &args)
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// `output/all_results.json` of a run in `dir`.
pub fn results(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("output/all_results.json")).expect("all_results.json");
    serde_json::from_str(&text).unwrap()
}

/// `output/log_history.jsonl` of a run in `dir`.
pub fn log_history(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("output/log_history.jsonl")).expect("log_history.jsonl");
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The log history without wall-clock figures.
pub fn history_without_timings(dir: &Path) -> Vec<serde_json::Value> {
    log_history(dir)
        .into_iter()
        .map(|mut entry| {
            entry.as_object_mut().unwrap().retain(|k, _| !k.contains("runtime") && !k.contains("per_second"));
            entry
        })
        .collect()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A host run in the background (for signals and kills), its stderr in a file.
pub struct Background {
    child: std::process::Child,
    stderr: PathBuf,
}

/// How a background run ended: its exit code, or the signal that ended it, and stderr.
pub struct Ended {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stderr: String,
}

impl Ended {
    /// The lines that start with `error`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("error")).collect()
    }

    /// Asserts nothing in stderr looks like a Rust panic or a debugger's dump.
    pub fn assert_no_panic(&self) {
        for crash in ["panicked at", "RUST_BACKTRACE", "stack backtrace", "internal error"] {
            assert!(!self.stderr.contains(crash), "stderr shows a panic ({crash}):\n{}", self.stderr);
        }
    }
}

impl Background {
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stderr = dir.join(format!("stderr-{n}.txt"));
        let child = Command::new(env!("CARGO_BIN_EXE_host"))
            .current_dir(dir)
            .args(args)
            .env_remove("LD_LIBRARY_PATH")
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the host binary");
        Self { child, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until stderr contains `needle` (false after `seconds`, or if the run ended).
    pub fn wait_for(&mut self, needle: &str, seconds: f64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
        while std::time::Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return self.stderr().contains(needle);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to the child this value owns.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the end (killing the run after `seconds`, which fails the test).
    pub fn wait(mut self, seconds: f64) -> Ended {
        use std::os::unix::process::ExitStatusExt;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Ended { code: status.code(), signal: status.signal(), stderr: self.stderr() };
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the host ran past {seconds} s; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A fine-tuning run of a pretrained model folder as the transformers and PEFT oracles'
/// references take it: full-batch steps (12 examples), AdamW with weight decay 0.1,
/// clipping, 5 steps. `extra` flags replace these or add to them.
pub fn fine_tune(dir: &Path, model: &Path, train: &Path, eval: &Path, output: &Path, extra: &[&str]) -> Run {
    let settings = [
        ("--model-name-or-path", path_str(model)),
        ("--train-file", path_str(train)),
        ("--eval-file", path_str(eval)),
        ("--output-dir", path_str(output)),
        ("--max-steps", "5"),
        ("--per-device-train-batch-size", "12"),
        ("--per-device-eval-batch-size", "16"),
        ("--learning-rate", "1e-3"),
        ("--weight-decay", "0.1"),
        ("--logging-steps", "1"),
        ("--save-steps", "5"),
        ("--max-seq-length", "32"),
        ("--device", "cpu"),
    ];
    let mut args: Vec<&str> =
        settings.iter().filter(|(flag, _)| !extra.contains(flag)).flat_map(|(flag, value)| [*flag, *value]).collect();
    args.extend_from_slice(extra);
    host(dir, &args)
}

/// Runs `tests/pretrained/{script}` (a transformers or PEFT oracle) in the venv, offline;
/// its report is the failure message.
pub fn pretrained_oracle(script: &str, args: &[&str]) -> String {
    venv_oracle(&Path::new("tests/pretrained").join(script), args)
}

/// Runs the Python reference script `script` (a path under the repository) in the venv,
/// offline; returns what it printed, and fails the test with it when the script fails.
pub fn venv_oracle(script: &Path, args: &[&str]) -> String {
    let output = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("run the venv's python (scripts/setup.sh makes it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{} {args:?} failed:\n{stdout}\n{stderr}", script.display());
    stdout
}

/// The folder under target/ where `script`'s `make` wrote the models and references the
/// tests then only read. Made again only when the oracle scripts or the pinned versions
/// change (the folder's name carries their hash); the host's outputs of an earlier run
/// (each case's `host` folder) are removed, so that nothing stale is checked.
pub fn make_pretrained_oracle(script: &str, folder: &str) -> PathBuf {
    let key = oracle_key();
    let dir = target_profile_dir().join(format!("{folder}-{key:016x}"));
    let complete = dir.join(".complete");
    if complete.is_file() {
        for case in std::fs::read_dir(&dir).unwrap().flatten() {
            let _ = std::fs::remove_dir_all(case.path().join("host"));
        }
        return dir;
    }
    // Older generations of this oracle, and a half-made one.
    for entry in std::fs::read_dir(target_profile_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == folder || name.strip_prefix(folder).is_some_and(|rest| rest.starts_with('-') && rest.len() == 17) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    pretrained_oracle(script, &["make", path_str(&dir)]);
    std::fs::write(&complete, "").unwrap();
    dir
}

/// A hash of what the oracles' models and references depend on: the oracle scripts and
/// the setup script that pins transformers, PEFT and torch.
fn oracle_key() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/pretrained"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    files.push(repo().join("scripts/setup-torch.sh"));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        std::fs::read(&file).unwrap().hash(&mut hasher);
    }
    hasher.finish()
}
