//! The Rust side of the C++ shims in `host/native/`: the libtorch calls tch does not
//! expose. Every `extern "C"` declaration of the host is here, each behind a safe function
//! that returns libtorch's own message on failure, as torch-sys is to libtorch. Tensors
//! cross as tch handles (`at::Tensor*`).

mod c10d;
mod op_count;
mod torch;

use std::ffi::{c_char, c_void};

pub use c10d::{Group, Reducer, DISTRIBUTED_BUILT, NCCL_BUILT, WITHOUT_DISTRIBUTED};
pub use op_count::{OpCount, OpCounter};
pub use torch::{
    amp_unscale, autocast_enter, autocast_exit, checkpoint, clip_grad_norm, device_memory, empty_cache,
    full_determinism, fused_adamw, reset_peak_memory, rng_state, set_grad, set_rng_state, set_tf32,
    torchscript_layer_norms, zero_grads,
};

extern "C" {
    fn host_free_error(error: *mut c_char);
}

/// A shim call's result: null, or an error message the shim allocated.
fn check(error: *mut c_char) -> Result<(), String> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim allocated for us, and
    // we free it exactly once.
    let text = unsafe { std::ffi::CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { host_free_error(error) };
    Err(crate::error::first_line(&text).to_owned())
}

/// Takes over a string the shim allocated (as `host::message`).
///
/// # Safety
/// `ptr` must be a NUL-terminated string from the shim, taken once.
unsafe fn take_string(ptr: *mut c_char) -> String {
    let text = std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned();
    host_free_error(ptr);
    text
}

/// The tensors as the shims' `at::Tensor*` handles, borrowed for one call.
fn handles(tensors: &[&tch::Tensor]) -> Vec<*mut c_void> {
    tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Takes over a tensor the shim allocated (`new at::Tensor`), as tch's own tensors are.
///
/// # Safety
/// `ptr` must come from the shim's `new at::Tensor(...)` and be taken once.
unsafe fn take_tensor(ptr: *mut c_void) -> tch::Tensor {
    tch::Tensor::from_ptr(ptr as *mut torch_sys::C_tensor)
}
