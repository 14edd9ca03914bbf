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
