//! libtorch switches and kernels (native/libtorch_shim.cpp): autocast, TF32, random
//! generator state, the fused AdamW step, foreach gradient clipping and zeroing.

use std::ffi::{c_char, c_void};

use tch::{Device, Tensor};

use super::{check, handles, take_string, take_tensor};

extern "C" {
    fn host_autocast_enter(cuda: i32, bfloat16: i32) -> *mut c_char;
    fn host_autocast_exit(cuda: i32) -> *mut c_char;
    fn host_set_tf32(enabled: i32) -> *mut c_char;
    fn host_full_determinism() -> *mut c_char;
    fn host_empty_cache() -> *mut c_char;
    fn host_device_memory(index: i32, allocated: *mut i64, peak: *mut i64) -> *mut c_char;
    fn host_reset_peak_memory(index: i32) -> *mut c_char;
    fn host_rng_state(cuda: i32, index: i32, out: *mut *mut c_void) -> *mut c_char;
    fn host_set_rng_state(cuda: i32, index: i32, state: *mut c_void) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn host_fused_adamw(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        step: *mut c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        found_inf: *mut c_void,
    ) -> *mut c_char;
    fn host_amp_unscale(
        grads: *mut *mut c_void,
        n: usize,
        found_inf: *mut c_void,
        inv_scale: *mut c_void,
    ) -> *mut c_char;
    fn host_clip_grad_norm(grads: *mut *mut c_void, n: usize, max_norm: f64, out: *mut *mut c_void) -> *mut c_char;
    fn host_zero_grads(grads: *mut *mut c_void, n: usize) -> *mut c_char;
    fn host_set_grad(param: *mut c_void, grad: *mut c_void) -> *mut c_char;
    fn host_torchscript_layer_norms(path: *const c_char, out: *mut *mut c_char) -> *mut c_char;
    fn host_checkpoint(input: *mut c_void, run: BlockRun, context: *mut c_void, out: *mut *mut c_void) -> *mut c_char;
}

/// The block a checkpointed forward pass calls back (native/checkpoint.cpp): with a null
/// `grad_output`, the block's output over `input`; else the gradient of its input. 0, or 1
/// with a message written into `error`.
pub type BlockRun = unsafe extern "C" fn(
    context: *mut c_void,
    input: *mut c_void,
    grad_output: *mut c_void,
    out: *mut *mut c_void,
    error: *mut c_char,
    error_len: usize,
) -> i32;

/// `run`'s block over `input`, checkpointed: no activations kept, recomputed in the
/// backward pass. `context` is handed to `run` and must live until that backward pass.
pub fn checkpoint(input: &Tensor, run: BlockRun, context: *mut c_void) -> Result<Tensor, String> {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `input` is a live tch tensor; the shim writes a new tensor into `out` on
    // success, which we take over once. `run` and `context` are the caller's contract.
    check(unsafe { host_checkpoint(input.as_ptr() as *mut c_void, run, context, &mut out) })?;
    // SAFETY: set by the shim on success, taken once.
    Ok(unsafe { take_tensor(out) })
}

/// (is CUDA, device index) as the shim takes a device.
fn device_args(device: Device) -> (i32, i32) {
    match device {
        Device::Cuda(index) => (1, index as i32),
        _ => (0, 0),
    }
}

/// Turns autocast on for the device type, lowering to bfloat16 or float16.
pub fn autocast_enter(cuda: bool, bfloat16: bool) -> Result<(), String> {
    // SAFETY: plain calls into libtorch's autocast state, no pointers involved.
    check(unsafe { host_autocast_enter(i32::from(cuda), i32::from(bfloat16)) })
}

/// Turns autocast off again (clearing its cache at the outermost level).
pub fn autocast_exit(cuda: bool) -> Result<(), String> {
    // SAFETY: as autocast_enter.
    check(unsafe { host_autocast_exit(i32::from(cuda)) })
}

/// Deterministic kernels everywhere (transformers' `enable_full_determinism`).
pub fn full_determinism() -> Result<(), String> {
    // SAFETY: sets flags in libtorch's global context and one environment variable.
    check(unsafe { host_full_determinism() })
}

/// Returns cached accelerator memory to the device (`torch.accelerator.empty_cache`).
pub fn empty_cache() -> Result<(), String> {
    // SAFETY: a plain call into the device allocator.
    check(unsafe { host_empty_cache() })
}

/// The accelerator's caching allocator: bytes allocated now and at most since the last
/// [`reset_peak_memory`] (`torch.cuda.memory_allocated`, `max_memory_allocated`); `None`
/// without an accelerator.
pub fn device_memory(index: usize) -> Result<Option<(u64, u64)>, String> {
    let (mut allocated, mut peak) = (-1i64, -1i64);
    // SAFETY: the shim writes two integers into the places we pass.
    check(unsafe { host_device_memory(index as i32, &mut allocated, &mut peak) })?;
    Ok((allocated >= 0).then(|| (allocated as u64, peak.max(0) as u64)))
}

/// Starts the accelerator's peak-memory count afresh (a no-op without one).
pub fn reset_peak_memory(index: usize) -> Result<(), String> {
    // SAFETY: a plain call into the device allocator.
    check(unsafe { host_reset_peak_memory(index as i32) })
}

/// Allows TF32 tensor cores for float32 matmuls and convolutions on CUDA.
pub fn set_tf32(enabled: bool) -> Result<(), String> {
    // SAFETY: sets two flags in libtorch's global context.
    check(unsafe { host_set_tf32(i32::from(enabled)) })
}

/// The dotted names of a TorchScript file's `torch.nn.LayerNorm` submodules.
pub fn torchscript_layer_norms(path: &std::path::Path) -> Result<Vec<String>, String> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: `path` lives for the call; on success the shim writes a malloc'ed C string
    // to `out`, taken once.
    check(unsafe { host_torchscript_layer_norms(path.as_ptr(), &mut out) })?;
    let text = unsafe { take_string(out) };
    Ok(text.lines().map(str::to_owned).collect())
}

/// The default generator's state for `device` (a uint8 tensor, as torch.get_rng_state).
pub fn rng_state(device: Device) -> Result<Tensor, String> {
    let (cuda, index) = device_args(device);
    let mut out = std::ptr::null_mut();
    // SAFETY: the shim writes a new heap tensor to `out` on success.
    check(unsafe { host_rng_state(cuda, index, &mut out) })?;
    Ok(unsafe { take_tensor(out) })
}

/// Restores a state that [`rng_state`] returned.
pub fn set_rng_state(device: Device, state: &Tensor) -> Result<(), String> {
    let (cuda, index) = device_args(device);
    // SAFETY: `state` is a live tensor for the call; the shim only reads it.
    check(unsafe { host_set_rng_state(cuda, index, state.as_ptr() as *mut c_void) })
}

/// One AdamW step (torch.optim.AdamW with fused=True) over parameters that share a weight
/// decay. `step` is a float scalar tensor on their device holding the step number.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    step: &Tensor,
    lr: f64,
    (beta1, beta2, eps): (f64, f64, f64),
    weight_decay: f64,
    found_inf: Option<&Tensor>,
) -> Result<(), String> {
    let n = params.len();
    if grads.len() != n || exp_avgs.len() != n || exp_avg_sqs.len() != n {
        return Err(format!("fused AdamW needs as many gradients and moments as parameters ({n})"));
    }
    let (mut p, mut g, mut m, mut v) = (handles(params), handles(grads), handles(exp_avgs), handles(exp_avg_sqs));
    // SAFETY: every handle is a live tch tensor borrowed for the call; the kernel updates
    // params, exp_avgs and exp_avg_sqs in place, which the caller owns mutably.
    check(unsafe {
        host_fused_adamw(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            step.as_ptr() as *mut c_void,
            n,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
            found_inf.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void),
        )
    })
}

/// torch.amp's `_amp_foreach_non_finite_check_and_unscale_`: every gradient times
/// `inv_scale`, and `found_inf` (a float scalar) set to 1 if any holds an inf or a nan.
pub fn amp_unscale(grads: &[&Tensor], found_inf: &Tensor, inv_scale: &Tensor) -> Result<(), String> {
    let mut g = handles(grads);
    // SAFETY: the handles are live tensors for the call; the kernel writes the gradients
    // and found_inf in place.
    check(unsafe {
        host_amp_unscale(g.as_mut_ptr(), g.len(), found_inf.as_ptr() as *mut c_void, inv_scale.as_ptr() as *mut c_void)
    })
}

/// torch.nn.utils.clip_grad_norm_ (foreach): scales the gradients to a global norm of at
/// most `max_norm` (0: no scaling) and returns the norm before, as a tensor (no wait).
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Result<Tensor, String> {
    let mut g = handles(grads);
    let mut out = std::ptr::null_mut();
    // SAFETY: the handles are live for the call; the shim writes a new heap tensor to `out`.
    check(unsafe { host_clip_grad_norm(g.as_mut_ptr(), g.len(), max_norm, &mut out) })?;
    Ok(unsafe { take_tensor(out) })
}

/// Sets every gradient to zero in one call.
pub fn zero_grads(grads: &[&Tensor]) -> Result<(), String> {
    let mut g = handles(grads);
    // SAFETY: the handles are live for the call.
    check(unsafe { host_zero_grads(g.as_mut_ptr(), g.len()) })
}

/// Makes `grad` the gradient tensor of `param`, so that backward accumulates into it.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<(), String> {
    // SAFETY: both handles are live tensors for the call; libtorch keeps its own reference.
    check(unsafe { host_set_grad(param.as_ptr() as *mut c_void, grad.as_ptr() as *mut c_void) })
}
