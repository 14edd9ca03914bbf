//! Lets the host binary find libtorch at run time without LD_LIBRARY_PATH, makes sure the
//! CUDA part of libtorch is really linked (the linker would drop it otherwise, as no symbol
//! of it is used directly, and CUDA would be silently unavailable), and compiles the small
//! C++ shim for the libtorch switches tch does not expose (native/).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=native/libtorch_shim.cpp");
    // Where `host new-plugin` points new plugin crates.
    let plugin_api = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../plugin-api");
    println!("cargo:rustc-env=HOST_PLUGIN_API_DIR={}", plugin_api.canonicalize().unwrap_or(plugin_api).display());
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    let libtorch = Path::new(&lib).parent().map(|p| p.display().to_string()).unwrap_or_default();
    println!("cargo:rustc-env=HOST_LIBTORCH_DIR={libtorch}");
    let root = Path::new(&lib).parent().expect("libtorch's lib folder has a parent");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("native/libtorch_shim.cpp")
        .compile("host_native");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
