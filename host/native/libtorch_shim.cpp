// The few libtorch calls that tch does not expose: autocast for a given device and
// dtype (tch's own autocast is CUDA-only with float16), TF32 matmuls on CUDA, the random
// generators' state, and the multi-tensor kernels of the optimizer step.
// Every entry point returns null on success or libtorch's error message (shim.h).
#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>
#include <torch/script.h>

#include <mutex>

#include "shim.h"

using host::guarded;
using host::tensor_list;

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
at::Device device_of(int cuda, int index) { return cuda ? at::Device(at::kCUDA, index) : at::Device(at::kCPU); }
}  // namespace

extern "C" {

void host_free_error(char* error) { std::free(error); }

char* host_autocast_enter(int cuda, int bfloat16) {
  return guarded([&] {
    auto device = device_type(cuda);
    at::autocast::set_autocast_dtype(device, bfloat16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
  });
}

char* host_autocast_exit(int cuda) {
  return guarded([&] {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(cuda), false);
  });
}

// transformers' enable_full_determinism: deterministic kernels (an error where an
// operation has none), deterministic cuDNN without benchmarking, and cuBLAS's workspace
// setting (read when CUDA starts, so set before).
char* host_full_determinism() {
  return guarded([&] {
    setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8", 0);
    at::globalContext().setDeterministicAlgorithms(true, false);
    at::globalContext().setDeterministicCuDNN(true);
    at::globalContext().setBenchmarkCuDNN(false);
  });
}

// torch.accelerator.empty_cache(): cached device memory back to the device (CUDA); a
// no-op without an accelerator.
char* host_empty_cache() {
  return guarded([&] {
    if (at::getAccelerator(false).has_value()) at::accelerator::emptyCache();
  });
}

// torch.accelerator.memory_allocated / max_memory_allocated for device `index`: the bytes
// the caching allocator has handed out now and at most since the last reset; both -1
// without an accelerator.
char* host_device_memory(int index, int64_t* allocated, int64_t* peak) {
  return guarded([&] {
    *allocated = *peak = -1;
    if (!at::getAccelerator(false).has_value()) return;
    auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *peak = stats.allocated_bytes[all].peak;
  });
}

// torch.accelerator.reset_peak_memory_stats for device `index` (a no-op without one).
char* host_reset_peak_memory(int index) {
  return guarded([&] {
    if (at::getAccelerator(false).has_value()) at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
  });
}

char* host_set_tf32(int enabled) {
  return guarded([&] {
    at::globalContext().setAllowTF32CuBLAS(enabled != 0);
    at::globalContext().setAllowTF32CuDNN(enabled != 0);
  });
}

// Random number generator state, for checkpoints: the default generator of a device
// (CPU, or CUDA device N), as the byte tensor PyTorch's get_rng_state returns. `out`
// receives a new heap tensor, owned by the caller as tch's tensors are.
char* host_rng_state(int cuda, int index, void** out) {
  return guarded([&] {
    auto generator = at::globalContext().defaultGenerator(device_of(cuda, index));
    std::lock_guard<std::mutex> lock(generator.mutex());
    *out = new at::Tensor(generator.get_state());
  });
}

char* host_set_rng_state(int cuda, int index, void* state) {
  return guarded([&] {
    auto generator = at::globalContext().defaultGenerator(device_of(cuda, index));
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(*static_cast<at::Tensor*>(state));
  });
}

// PyTorch's fused AdamW: one kernel over every parameter of a group (CPU and CUDA).
// `found_inf` (a float scalar tensor, or null): where it holds 1 the kernel leaves every
// tensor as it was, so a step can be skipped without the host reading anything.
char* host_fused_adamw(void** params, void** grads, void** exp_avgs, void** exp_avg_sqs, void* step, size_t n,
                       double lr, double beta1, double beta2, double weight_decay, double eps, void* found_inf) {
  return guarded([&] {
    // The kernel reads each parameter's step count; every parameter shares one here.
    std::vector<at::Tensor> steps(n, *static_cast<at::Tensor*>(step));
    std::optional<at::Tensor> skip;
    if (found_inf != nullptr) skip = *static_cast<at::Tensor*>(found_inf);
    at::_fused_adamw_(tensor_list(params, n), tensor_list(grads, n), tensor_list(exp_avgs, n),
                      tensor_list(exp_avg_sqs, n), {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt, skip);
  });
}

// torch.amp.GradScaler's unscale: multiplies every gradient by `inv_scale` and sets
// `found_inf` (a float scalar) to 1 if any gradient holds an inf or a nan; no host read.
char* host_amp_unscale(void** grads, size_t n, void* found_inf, void* inv_scale) {
  return guarded([&] {
    auto list = tensor_list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(list, *static_cast<at::Tensor*>(found_inf),
                                                  *static_cast<at::Tensor*>(inv_scale));
  });
}

// torch.nn.utils.clip_grad_norm_ with foreach kernels: scales the gradients so that their
// global L2 norm is at most max_norm (none when max_norm <= 0); `out` receives that norm
// before clipping as a new heap tensor.
char* host_clip_grad_norm(void** grads, size_t n, double max_norm, void** out) {
  return guarded([&] {
    auto list = tensor_list(grads, n);
    auto norms = at::_foreach_norm(list, 2);
    auto total = at::linalg_vector_norm(at::stack(norms), 2);
    if (max_norm > 0) {
      auto coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
      at::_foreach_mul_(list, coef);
    }
    *out = new at::Tensor(total);
  });
}

char* host_zero_grads(void** grads, size_t n) {
  return guarded([&] { at::_foreach_zero_(tensor_list(grads, n)); });
}

// Makes `grad` the gradient tensor of `param`: backward then accumulates into it in place
// (distributed training points the gradients at slices of flat all-reduce buckets).
char* host_set_grad(void* param, void* grad) {
  return guarded([&] { static_cast<at::Tensor*>(param)->mutable_grad() = *static_cast<at::Tensor*>(grad); });
}

}  // extern "C"

// The submodules of a TorchScript file that are torch.nn.LayerNorm, by their dotted names
// (one per line; "" for the module itself), so that weight decay can leave them out by
// type as Hugging Face does. `out` receives a malloc'ed string (freed with host_free_error).
extern "C" char* host_torchscript_layer_norms(const char* path, char** out) {
  return guarded([&] {
    auto module = torch::jit::load(path, at::kCPU);
    std::string names;
    for (const auto& child : module.named_modules()) {
      auto type = child.value.type()->name();
      if (type && type->name() == "LayerNorm" && type->prefix().find("torch.nn") != std::string::npos) {
        names += child.name + "\n";
      }
    }
    *out = host::message(names);
  });
}
