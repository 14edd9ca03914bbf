//! Finding plugins by name: `--plugin weighted_ce` looks for `libweighted_ce.so` in the
//! folders of `HOST_PLUGIN_PATH` (colon-separated), then next to the host binary and in
//! its `plugins/` folder.

use std::path::{Path, PathBuf};

use crate::error::InputError;

/// The folders searched for plugins by name, in order.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("HOST_PLUGIN_PATH")
        .map(|paths| std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.join("plugins"));
        dirs.push(exe_dir);
    }
    dirs
}

/// A plugin given as a path (it has a `/` or ends in `.so`) or by name.
pub fn resolve(spec: &Path) -> Result<PathBuf, InputError> {
    let text = spec.to_string_lossy();
    if text.contains('/') || text.ends_with(".so") {
        return Ok(spec.to_path_buf());
    }
    let file = format!("lib{text}.so");
    let dirs = search_path();
    dirs.iter().map(|dir| dir.join(&file)).find(|path| path.is_file()).ok_or_else(|| {
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let names: Vec<String> = available().iter().filter_map(|p| plugin_name(p)).collect();
        let hint = crate::error::did_you_mean(&text, names.iter().map(String::as_str));
        InputError::new(format!(
            "no plugin named '{text}' ({file}) in {}{hint}; give the path of a .so file or add its folder to HOST_PLUGIN_PATH",
            searched.join(", ")
        ))
    })
}

/// The name `--plugin NAME` finds a library file by: `libNAME.so`.
fn plugin_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_string_lossy();
    Some(file.strip_prefix("lib")?.strip_suffix(".so")?.to_owned())
}

/// Every `lib*.so` in the search path, first occurrence of each name.
pub fn available() -> Vec<PathBuf> {
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for dir in search_path() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                name.starts_with("lib") && name.ends_with(".so")
            })
            .collect();
        files.sort();
        for file in files {
            if seen.insert(file.file_name().map(|n| n.to_owned())) {
                found.push(file);
            }
        }
    }
    found
}
