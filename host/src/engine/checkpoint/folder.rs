//! Checkpoint folders on disk: written atomically, checked by checksums, found, rotated.
//!
//! A checkpoint is written into a temporary folder beside its final place; every file and
//! the folder are fsynced, a manifest with the SHA-256 of every file is written last, and
//! only then is the folder renamed to `checkpoint-{step}`. A crash at any moment leaves
//! either the complete checkpoint or a temporary folder that the next run removes.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::error::InputError;

pub const MANIFEST: &str = "manifest.json";
const PREFIX: &str = "checkpoint-";
const TEMP_PREFIX: &str = ".tmp-checkpoint-";

/// A checkpoint being written.
pub struct Writer {
    temp: PathBuf,
    target: PathBuf,
    files: Vec<String>,
}

impl Writer {
    /// Starts `output_dir/checkpoint-{step}` (in a temporary folder until `commit`).
    pub fn begin(output_dir: &Path, step: i64) -> Result<Self> {
        let target = output_dir.join(format!("{PREFIX}{step}"));
        let temp = output_dir.join(format!("{TEMP_PREFIX}{step}-{}", std::process::id()));
        if temp.exists() {
            fs::remove_dir_all(&temp).with_context(|| format!("cannot clear {}", temp.display()))?;
        }
        fs::create_dir_all(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
        Ok(Self { temp, target, files: Vec::new() })
    }

    /// Where a file of the checkpoint is to be written; `finish_file` records it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.temp.join(name)
    }

    /// Records a file written at `path(name)`, after syncing it to disk.
    pub fn finish_file(&mut self, name: &str) -> Result<()> {
        let path = self.path(name);
        File::open(&path).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", path.display()))?;
        self.files.push(name.to_owned());
        fault_point(&format!("after:{name}"));
        Ok(())
    }

    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        fs::write(self.path(name), bytes).map_err(|e| self.write_error(name, &e.to_string()))?;
        self.finish_file(name)
    }

    /// A failed write, named by the file's place in the finished checkpoint.
    pub fn write_error(&self, name: &str, cause: &str) -> anyhow::Error {
        anyhow::anyhow!("cannot write {}: {}", self.target.join(name).display(), crate::error::io_message(cause))
    }

    pub fn write_json(&mut self, name: &str, value: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(value)? + "\n";
        self.write_bytes(name, text.as_bytes())
    }

    /// Writes named tensors as a safetensors file (copied to the CPU first).
    pub fn write_safetensors(&mut self, name: &str, tensors: &[(String, tch::Tensor)]) -> Result<()> {
        let on_cpu: Vec<(&str, tch::Tensor)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu))).collect();
        let path = self.path(name);
        tch::Tensor::write_safetensors(&on_cpu, &path).map_err(|e| self.write_error(name, &e.to_string()))?;
        self.finish_file(name)
    }

    /// Writes the manifest, then moves the folder to its final name.
    pub fn commit(self) -> Result<PathBuf> {
        let mut entries = serde_json::Map::new();
        for name in &self.files {
            entries.insert(name.clone(), sha256_of(&self.path(name))?.into());
        }
        let manifest = serde_json::json!({ "format": "host-checkpoint/1", "sha256": entries });
        let manifest_path = self.path(MANIFEST);
        fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)? + "\n")
            .with_context(|| format!("cannot write {}", manifest_path.display()))?;
        File::open(&manifest_path).and_then(|f| f.sync_all())?;
        sync_dir(&self.temp)?;
        fault_point("before:rename");
        if self.target.symlink_metadata().is_ok() {
            // Saving the same step again (or over a file in the way): put the old one aside
            // under a temporary name, then drop it.
            let aside = self.temp.with_extension("replaced");
            fs::rename(&self.target, &aside)
                .with_context(|| format!("cannot move {} aside to replace it", self.target.display()))?;
            fs::rename(&self.temp, &self.target)
                .with_context(|| format!("cannot move the checkpoint to {}", self.target.display()))?;
            remove(&aside)?;
        } else {
            fs::rename(&self.temp, &self.target)
                .with_context(|| format!("cannot move the checkpoint to {}", self.target.display()))?;
        }
        if let Some(parent) = self.target.parent() {
            sync_dir(parent)?;
        }
        Ok(self.target)
    }
}

impl crate::engine::weights::FileSink for Writer {
    fn write_file(&mut self, name: &str, write: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
        write(&self.path(name)).map_err(|e| self.write_error(name, &format!("{e:#}")))?;
        self.finish_file(name)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

pub(crate) fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a checkpoint against its manifest; the error names the first bad file.
pub fn verify(dir: &Path) -> Result<(), String> {
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read_to_string(&manifest_path)
        .map_err(|_| format!("{} has no {MANIFEST} (an incomplete checkpoint)", dir.display()))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is corrupt: {e}", manifest_path.display()))?;
    let entries =
        manifest["sha256"].as_object().ok_or_else(|| format!("{} lists no files", manifest_path.display()))?;
    for (name, expected) in entries {
        let path = dir.join(name);
        let actual = sha256_of(&path).map_err(|_| format!("{} is missing", path.display()))?;
        if Some(actual.as_str()) != expected.as_str() {
            return Err(format!("{} is corrupt (its checksum does not match the manifest)", path.display()));
        }
    }
    Ok(())
}

/// The `checkpoint-{step}` folders of `output_dir`, by step.
pub fn list(output_dir: &Path) -> Vec<(i64, PathBuf)> {
    let mut found: Vec<(i64, PathBuf)> = fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix(PREFIX)?.parse::<i64>().ok()?;
            entry.path().is_dir().then(|| (step, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest checkpoint that `open` accepts (and what it made of it); incomplete,
/// corrupt or refused ones are skipped with a warning.
pub fn latest<T>(output_dir: &Path, open: impl Fn(&Path) -> Result<T, String>) -> Result<(PathBuf, T)> {
    for (_, dir) in list(output_dir).into_iter().rev() {
        match open(&dir) {
            Ok(opened) => return Ok((dir, opened)),
            Err(problem) => tracing::warn!("skipping {}: {problem}", dir.display()),
        }
    }
    Err(InputError::new(format!(
        "resume_from_checkpoint=latest: no complete checkpoint in {}; train without it or name a checkpoint folder",
        output_dir.display()
    ))
    .into())
}

/// Removes what an interrupted save or deletion left behind (temporary folders, or files),
/// in output_dir and in the one folder of final files below it (merge_lora's `merged/`).
pub fn remove_stale_temporaries(output_dir: &Path) {
    remove_temporaries_in(output_dir);
    remove_temporaries_in(&output_dir.join("merged"));
}

fn remove_temporaries_in(folder: &Path) {
    for entry in fs::read_dir(folder).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) || name.starts_with(crate::engine::output::TEMP_PREFIX) {
            match remove(&entry.path()) {
                Ok(()) => tracing::info!("removed {} (left by an interrupted save)", entry.path().display()),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
    }
}

/// Removes a folder with everything in it, or a file.
fn remove(path: &Path) -> Result<()> {
    let removed = if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.with_context(|| format!("cannot remove {}", path.display()))
}

/// Hugging Face's `_rotate_checkpoints`: keep at most `limit` checkpoints, the newest ones,
/// and never delete the best one; with a limit of 1 and a best that is not the newest, keep
/// both so that the run can still be resumed.
pub fn rotate(output_dir: &Path, limit: i64, best: Option<&Path>) -> Result<()> {
    let mut sorted: Vec<PathBuf> = list(output_dir).into_iter().map(|(_, p)| p).collect();
    if let Some(best_index) = best.and_then(|b| sorted.iter().position(|p| p == b)) {
        // Move the best toward the end (just before the newest), so it is not deleted.
        for i in best_index..sorted.len().saturating_sub(2) {
            sorted.swap(i, i + 1);
        }
    }
    let mut limit = limit.max(0) as usize;
    if limit == 1 && best.is_some() && sorted.last().map(PathBuf::as_path) != best {
        limit = 2;
    }
    let excess = sorted.len().saturating_sub(limit);
    for dir in &sorted[..excess] {
        tracing::info!("deleting older checkpoint {} (save_total_limit)", dir.display());
        // Renamed first: a kill during the removal leaves a temporary folder (which the next
        // run removes), never a checkpoint with files missing.
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let doomed = output_dir.join(format!("{TEMP_PREFIX}deleting-{name}-{}", std::process::id()));
        fs::rename(dir, &doomed).with_context(|| format!("cannot delete {}", dir.display()))?;
        remove(&doomed)?;
    }
    Ok(())
}

/// Fault injection for the crash tests (built with the `fault-injection` feature only):
/// with `HOST_FAULT_INJECTION=<point>`, the process kills itself (SIGKILL, as a crash or an
/// OOM kill would) when a save reaches that point.
#[cfg(feature = "fault-injection")]
pub(crate) fn fault_point(point: &str) {
    if std::env::var("HOST_FAULT_INJECTION").is_ok_and(|p| p == point) {
        // SAFETY: sends SIGKILL to this process; nothing runs after it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn fault_point(_: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed checkpoint `step` in `output_dir` with one file, `weights.bin`.
    fn save(output_dir: &Path, step: i64, content: &[u8]) -> PathBuf {
        let mut writer = Writer::begin(output_dir, step).unwrap();
        writer.write_bytes("weights.bin", content).unwrap();
        writer.write_json("state.json", &serde_json::json!({ "step": step })).unwrap();
        writer.commit().unwrap()
    }

    fn names(output_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(output_dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_checkpoint_appears_whole_under_its_name_with_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::begin(dir.path(), 7).unwrap();
        // Until commit, only a temporary folder exists.
        assert!(names(dir.path())[0].starts_with(TEMP_PREFIX));
        drop(writer);
        let checkpoint = save(dir.path(), 7, b"abc");
        assert_eq!(checkpoint, dir.path().join("checkpoint-7"));
        assert!(names(dir.path()).iter().any(|n| n == "checkpoint-7"));
        let manifest: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(checkpoint.join(MANIFEST)).unwrap()).unwrap();
        // sha256("abc")
        assert_eq!(
            manifest["sha256"]["weights.bin"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(verify(&checkpoint), Ok(()));
        // Saving the same step again replaces it whole.
        save(dir.path(), 7, b"xyz");
        assert_eq!(fs::read(checkpoint.join("weights.bin")).unwrap(), b"xyz");
        remove_stale_temporaries(dir.path());
        assert_eq!(names(dir.path()), ["checkpoint-7"]);
        // A file in the checkpoint's place is replaced too, and nothing is left behind.
        fs::write(dir.path().join("checkpoint-8"), "in the way").unwrap();
        save(dir.path(), 8, b"w");
        assert!(verify(&dir.path().join("checkpoint-8")).is_ok());
        fs::write(dir.path().join(".tmp-host-model.safetensors-1"), "half").unwrap();
        fs::create_dir(dir.path().join("merged")).unwrap();
        fs::write(dir.path().join("merged/config.json"), "{}").unwrap();
        fs::write(dir.path().join("merged/.tmp-host-model.safetensors-2"), "half").unwrap();
        remove_stale_temporaries(dir.path());
        assert_eq!(names(dir.path()), ["checkpoint-7", "checkpoint-8", "merged"]);
        assert_eq!(names(&dir.path().join("merged")), ["config.json"]);
    }

    #[test]
    fn verification_names_the_first_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = save(dir.path(), 1, b"abc");
        fs::write(checkpoint.join("weights.bin"), b"abd").unwrap();
        assert!(verify(&checkpoint)
            .unwrap_err()
            .ends_with("weights.bin is corrupt (its checksum does not match the manifest)"));
        fs::remove_file(checkpoint.join("weights.bin")).unwrap();
        assert!(verify(&checkpoint).unwrap_err().ends_with("weights.bin is missing"));
        fs::remove_file(checkpoint.join(MANIFEST)).unwrap();
        assert!(verify(&checkpoint).unwrap_err().ends_with("has no manifest.json (an incomplete checkpoint)"));
    }

    #[test]
    fn latest_is_the_newest_one_that_opens() {
        let dir = tempfile::tempdir().unwrap();
        for step in [2, 10, 9] {
            save(dir.path(), step, b"w");
        }
        fs::create_dir(dir.path().join("checkpoint-x")).unwrap();
        let steps: Vec<i64> = list(dir.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [2, 9, 10]);
        let (found, _) = latest(dir.path(), verify).unwrap();
        assert_eq!(found, dir.path().join("checkpoint-10"));
        // A checkpoint that `open` refuses is skipped for the one before.
        let (found, step) = latest(dir.path(), |d| {
            let state: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(d.join("state.json")).unwrap()).unwrap();
            let step = state["step"].as_i64().unwrap();
            if step == 10 {
                Err("refused".to_owned())
            } else {
                Ok(step)
            }
        })
        .unwrap();
        assert_eq!((found, step), (dir.path().join("checkpoint-9"), 9));
        let empty = tempfile::tempdir().unwrap();
        assert!(latest(empty.path(), verify).unwrap_err().to_string().contains("no complete checkpoint in"));
    }

    #[test]
    fn rotation_keeps_the_newest_and_the_best() {
        let cases: [(i64, Option<i64>, &[&str]); 4] = [
            (2, None, &["checkpoint-4", "checkpoint-5"]),
            (2, Some(1), &["checkpoint-1", "checkpoint-5"]),
            (1, Some(5), &["checkpoint-5"]),
            // A limit of 1 with an older best keeps both, so the run can still resume.
            (1, Some(2), &["checkpoint-2", "checkpoint-5"]),
        ];
        for (limit, best, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            for step in 1..=5 {
                save(dir.path(), step, b"w");
            }
            let best = best.map(|step| dir.path().join(format!("checkpoint-{step}")));
            rotate(dir.path(), limit, best.as_deref()).unwrap();
            assert_eq!(names(dir.path()), expected, "limit {limit}, best {best:?}");
        }
    }
}
