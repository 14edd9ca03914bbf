//! Lets the host binary find libtorch at run time without LD_LIBRARY_PATH, makes sure the
//! CUDA part of libtorch is really linked (the linker would drop it otherwise, as no symbol
//! of it is used directly, and CUDA would be silently unavailable), and compiles the small
//! C++ shim for the libtorch switches tch does not expose (native/), and the c10d shim for
//! distributed training where gloo's headers are installed (cfg `host_distributed`).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=native/libtorch_shim.cpp");
    println!("cargo:rerun-if-changed=native/checkpoint.cpp");
    println!("cargo:rerun-if-changed=native/op_count.cpp");
    println!("cargo:rerun-if-changed=native/distributed.cpp");
    println!("cargo:rerun-if-changed=native/nccl.cpp");
    println!("cargo:rerun-if-changed=native/shim.h");
    println!("cargo:rustc-check-cfg=cfg(host_distributed)");
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
        .file("native/checkpoint.cpp")
        .file("native/op_count.cpp")
        .compile("host_native");
    build_distributed(root);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// Where the build finds gloo's headers (Debian's libgloo-dev; torch's wheel lacks them).
fn gloo_include() -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    let candidates = std::env::var_os("GLOO_INCLUDE_DIR")
        .into_iter()
        .map(Into::into)
        .chain(["/usr/include".into(), "/usr/local/include".into()]);
    candidates.into_iter().find(|dir: &std::path::PathBuf| dir.join("gloo/config.h").exists())
}

/// The headers NCCL needs: nccl.h and the CUDA runtime's, from the nvidia wheels installed
/// beside a CUDA torch (site-packages/nvidia/...).
fn nccl_includes(torch: &Path) -> Option<Vec<std::path::PathBuf>> {
    if !torch.join("lib/libtorch_cuda.so").exists() {
        return None;
    }
    // The wheels lie beside torch in site-packages (`torch` may be a link to it).
    let nvidia = torch.canonicalize().ok()?.parent()?.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = std::fs::read_dir(&nvidia)
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("include"))
        .chain([nvidia.join("cuda_runtime/include")])
        .find(|dir| dir.join("cuda_runtime_api.h").exists())?;
    nccl.join("nccl.h").exists().then(|| vec![nccl, cuda])
}

fn build_distributed(torch: &Path) {
    let Some(gloo) = gloo_include() else {
        println!("cargo:warning=gloo headers not found (install libgloo-dev): building without distributed training");
        return;
    };
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .include(gloo)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .define("USE_C10D_GLOO", None)
        .file("native/distributed.cpp");
    if let Some(includes) = nccl_includes(torch) {
        build.define("USE_C10D_NCCL", None).define("HOST_WITH_NCCL", None).define("USE_CUDA", None);
        for dir in includes {
            build.include(dir);
        }
        build.file("native/nccl.cpp");
        println!("cargo:rustc-env=HOST_WITH_NCCL=1");
    }
    build.compile("host_distributed");
    println!("cargo:rustc-cfg=host_distributed");
}
