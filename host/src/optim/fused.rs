//! libtorch's multi-tensor kernels for the optimizer step, through the C++ shim (tch does
//! not expose them): fused AdamW, and the foreach norm, scaling and zeroing of gradients.
//! One call covers every parameter instead of a dozen small operations per parameter.

use std::ffi::c_void;

use tch::Tensor;

extern "C" {
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
    ) -> i32;
    fn host_clip_grad_norm(grads: *mut *mut c_void, n: usize, max_norm: f64) -> *mut c_void;
    fn host_zero_grads(grads: *mut *mut c_void, n: usize) -> i32;
}

/// The tensors as the shim's `at::Tensor*` handles (also used by the c10d shim's callers).
pub(crate) fn handles(tensors: &[&Tensor]) -> Vec<*mut c_void> {
    tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// One AdamW step (torch.optim.AdamW with fused=True) over parameters that share a weight
/// decay. `step` is a float scalar tensor on their device holding the step number.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    step: &Tensor,
    lr: f64,
    (beta1, beta2, eps): (f64, f64, f64),
    weight_decay: f64,
) {
    let n = params.len();
    assert!(grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n);
    let (mut p, mut g, mut m, mut v) = (handles(params), handles(grads), handles(exp_avgs), handles(exp_avg_sqs));
    // SAFETY: every handle is a live tch tensor borrowed for the call; the kernel updates
    // params, exp_avgs and exp_avg_sqs in place, which the caller owns mutably.
    let failed = unsafe {
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
        )
    };
    assert_eq!(failed, 0, "libtorch's fused AdamW failed");
}

/// torch.nn.utils.clip_grad_norm_ (foreach): scales the gradients to a global norm of at
/// most `max_norm` (0: no scaling) and returns the norm before, as a tensor (no wait).
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Tensor {
    let mut g = handles(grads);
    // SAFETY: the handles are live for the call; the shim returns a new heap tensor that
    // tch takes over, or null.
    unsafe {
        let total = host_clip_grad_norm(g.as_mut_ptr(), g.len(), max_norm);
        assert!(!total.is_null(), "libtorch's foreach norm failed");
        Tensor::from_ptr(total as *mut torch_sys::C_tensor)
    }
}

/// Sets every gradient to zero in one call.
pub fn zero(grads: &[&Tensor]) {
    let mut g = handles(grads);
    // SAFETY: the handles are live for the call.
    let failed = unsafe { host_zero_grads(g.as_mut_ptr(), g.len()) };
    assert_eq!(failed, 0, "libtorch's foreach zero failed");
}
