//! The run's output folder: made, held for the run by one process (an advisory lock, so
//! that two runs never write into each other's files), and written file by file
//! atomically (a temporary name, fsync, rename), so that a failure, a full disk or a kill
//! leaves each file whole: the new version or the previous one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::InputError;

/// The lock file's name in output_dir; it holds the running process's id.
const LOCK: &str = ".host.lock";

/// The name prefix of files being written; what a crash leaves is removed by the next run
/// (`checkpoint::remove_stale_temporaries`).
pub const TEMP_PREFIX: &str = ".tmp-host-";

/// An output folder this process holds until it ends.
pub struct OutputDir {
    path: PathBuf,
    /// Holds the lock while it lives (the kernel releases it when the process ends,
    /// however it ends).
    _lock: File,
}

impl OutputDir {
    /// Makes `path` if needed and takes its lock; a folder another run holds is an error
    /// naming that run's process.
    pub fn hold(path: &Path) -> Result<Self> {
        let shown = path.display();
        fs::create_dir_all(path).map_err(|e| InputError::new(format!("cannot create output_dir {shown}: {e}")))?;
        let lock_path = path.join(LOCK);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| InputError::new(format!("cannot write in output_dir {shown}: {e}")))?;
        // SAFETY: flock on a file descriptor this File owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { "another process".to_owned() } else { format!("process {holder}") };
            return Err(InputError::new(format!(
                "output_dir {shown} is in use by another run ({who}); wait for it to finish, or choose another output_dir"
            ))
            .into());
        }
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
        Ok(Self { path: path.to_owned(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The run's final files are a set: `output_dir/outputs.json` lists each with its SHA-256,
/// is removed before the final files are written and written last, so that a folder
/// without it (or whose files do not match it) holds a set some run did not finish.
pub const OUTPUTS_MANIFEST: &str = "outputs.json";

/// Before the final files are written: the old set is no longer claimed complete.
pub fn begin_final_files(output_dir: &Path) -> Result<()> {
    let manifest = output_dir.join(OUTPUTS_MANIFEST);
    match fs::remove_file(&manifest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::anyhow!("cannot remove {}: {e}", manifest.display()))
        }
        _ => Ok(()),
    }
}

/// After the final files: the manifest of every file in output_dir itself (checkpoint
/// folders, plots and the lock aside), with the step they are the outputs of.
pub fn finish_final_files(output_dir: &Path, global_step: i64) -> Result<()> {
    let mut files = serde_json::Map::new();
    let mut names: Vec<String> = fs::read_dir(output_dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != OUTPUTS_MANIFEST)
        .collect();
    names.sort();
    for name in names {
        files.insert(name.clone(), crate::engine::checkpoint::sha256_of(&output_dir.join(&name))?.into());
    }
    let manifest = serde_json::json!({ "format": "host-outputs/1", "global_step": global_step, "sha256": files });
    write_text_atomically(&output_dir.join(OUTPUTS_MANIFEST), &(serde_json::to_string_pretty(&manifest)? + "\n"))
}

/// Writes `path` through `write`, which writes the file at the temporary path it is
/// given; only a complete, synced file takes the name.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    crate::engine::checkpoint::fault_point(&format!("final:{name}"));
    let temporary = path.with_file_name(format!("{TEMP_PREFIX}{name}-{}", std::process::id()));
    let written = write(&temporary).and_then(|()| {
        File::open(&temporary).and_then(|f| f.sync_all())?;
        Ok(fs::rename(&temporary, path)?)
    });
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        let cause = error.chain().last().map(|c| c.to_string()).unwrap_or_default();
        anyhow::bail!("cannot write {}: {}", path.display(), crate::error::io_message(&cause));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", parent.display()))?;
    }
    Ok(())
}

/// Writes text to `path` atomically.
pub fn write_text_atomically(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, |temporary| {
        fs::write(temporary, text).with_context(|| format!("cannot write {}", temporary.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_process() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = OutputDir::hold(&out).unwrap();
        assert_eq!(fs::read_to_string(out.join(LOCK)).unwrap(), std::process::id().to_string());
        // flock locks belong to the open file: a second open in this process conflicts too.
        let error = OutputDir::hold(&out).err().unwrap().to_string();
        assert_eq!(
            error,
            format!(
                "output_dir {} is in use by another run (process {}); wait for it to finish, or choose another output_dir",
                out.display(),
                std::process::id()
            )
        );
        drop(first);
        assert!(OutputDir::hold(&out).is_ok());
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all_results.json");
        write_text_atomically(&path, "first").unwrap();
        let failed = write_atomically(&path, |temporary| {
            fs::write(temporary, "half")?;
            anyhow::bail!("disk full")
        });
        assert!(failed.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        write_text_atomically(&path, "second").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
    }
}
