//! Lets the host binary find libtorch at run time without LD_LIBRARY_PATH, and makes sure
//! the CUDA part of libtorch is really linked (the linker would drop it otherwise, as no
//! symbol of it is used directly, and CUDA would be silently unavailable).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
