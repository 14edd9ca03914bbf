// The few libtorch switches that tch does not expose: autocast for a given device and
// dtype (tch's own autocast is CUDA-only with float16), and TF32 matmuls on CUDA.
// Every entry point returns 0 on success and 1 if libtorch threw.
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

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
