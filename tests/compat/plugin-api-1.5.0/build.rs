//! Records the libtorch version this crate is compiled against, so that a plugin can tell
//! the host which torch it was built with (the host refuses a mismatch at load time).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let version = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .ok()
        .and_then(|lib| torch_version(Path::new(&lib)))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PLUGIN_API_TORCH_VERSION={version}");
    // This crate's own unit tests link libtorch; let them find it without LD_LIBRARY_PATH.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:libtorch_lib={lib}");
    }
}

/// `lib` is libtorch's library folder: a PyPI torch has `../version.py`, a libtorch
/// archive has `../build-version`.
fn torch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    let version_py = root.join("version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    if let Ok(text) = std::fs::read_to_string(&version_py) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                let value = rest.trim_start_matches([' ', '=']).trim();
                return Some(value.trim_matches(['\'', '"']).to_owned());
            }
        }
    }
    let build_version = root.join("build-version");
    std::fs::read_to_string(build_version).ok().map(|s| s.trim().to_owned())
}
