// The few libtorch calls that tch does not expose: autocast for a given device and
// dtype (tch's own autocast is CUDA-only with float16), TF32 matmuls on CUDA, and the
// random generators' state.
// Every entry point returns 0 on success and 1 if libtorch threw.
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

#include <mutex>

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

int host_autocast_enter(int cuda, int bfloat16) {
  try {
    auto device = device_type(cuda);
    at::autocast::set_autocast_dtype(device, bfloat16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return 1;
  }
}

int host_autocast_exit(int cuda) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(cuda), false);
    return 0;
  } catch (...) {
    return 1;
  }
}

int host_set_tf32(int enabled) {
  try {
    at::globalContext().setAllowTF32CuBLAS(enabled != 0);
    at::globalContext().setAllowTF32CuDNN(enabled != 0);
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // extern "C"

// Random number generator state, for checkpoints: the default generator of a device
// (CPU, or CUDA device N), as the byte tensor PyTorch's get_rng_state returns.
// `host_rng_state` returns a new heap tensor (owned by the caller, as tch's tensors are),
// or null on failure.
extern "C" {

void* host_rng_state(int cuda, int index) {
  try {
    auto device = cuda ? at::Device(at::kCUDA, index) : at::Device(at::kCPU);
    auto generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    return new at::Tensor(generator.get_state());
  } catch (...) {
    return nullptr;
  }
}

int host_set_rng_state(int cuda, int index, void* state) {
  try {
    auto device = cuda ? at::Device(at::kCUDA, index) : at::Device(at::kCPU);
    auto generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(*static_cast<at::Tensor*>(state));
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // extern "C"

// Multi-tensor kernels for the optimizer step (tch exposes neither): PyTorch's fused AdamW
// (one kernel over every parameter of a group; CPU and CUDA) and the foreach norm and
// scaling of torch.nn.utils.clip_grad_norm_. Tensors arrive as tch handles (at::Tensor*).
#include "tensor_handles.h"

using host::tensor_list;

extern "C" {

int host_fused_adamw(void** params, void** grads, void** exp_avgs, void** exp_avg_sqs, void* step, size_t n,
                     double lr, double beta1, double beta2, double weight_decay, double eps) {
  try {
    // The kernel reads each parameter's step count; every parameter shares one here.
    std::vector<at::Tensor> steps(n, *static_cast<at::Tensor*>(step));
    at::_fused_adamw_(tensor_list(params, n), tensor_list(grads, n), tensor_list(exp_avgs, n),
                      tensor_list(exp_avg_sqs, n), {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (...) {
    return 1;
  }
}

// Scales the gradients so that their global L2 norm is at most max_norm (none when
// max_norm <= 0) and returns that norm before clipping as a new tensor, or null on failure.
void* host_clip_grad_norm(void** grads, size_t n, double max_norm) {
  try {
    auto list = tensor_list(grads, n);
    auto norms = at::_foreach_norm(list, 2);
    auto total = at::linalg_vector_norm(at::stack(norms), 2);
    if (max_norm > 0) {
      auto coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
      at::_foreach_mul_(list, coef);
    }
    return new at::Tensor(total);
  } catch (...) {
    return nullptr;
  }
}

int host_zero_grads(void** grads, size_t n) {
  try {
    at::_foreach_zero_(tensor_list(grads, n));
    return 0;
  } catch (...) {
    return 1;
  }
}

// Makes `grad` the gradient tensor of `param`: backward then accumulates into it in place
// (distributed training points the gradients at slices of flat all-reduce buckets).
int host_set_grad(void* param, void* grad) {
  try {
    static_cast<at::Tensor*>(param)->mutable_grad() = *static_cast<at::Tensor*>(grad);
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // extern "C"
