// Gradient checkpointing as an autograd function (torch.utils.checkpoint's reentrant
// form): the forward runs a block without keeping its activations; the backward runs it
// again with a graph and backpropagates through it, so that the loss's one backward pass
// covers the checkpointed blocks too. The block itself is Rust's: `run` is called back
// with the block's input (and, in the backward, the gradient of its output).
//
// `run(context, input, grad_output, out, error, error_len)`: with grad_output null, the
// block's output into *out; else the gradient of the block's input into *out, the
// parameters' gradients accumulated. Returns 0, or 1 with a message in `error`.
// Autocast is recorded at the forward and set again for the recomputation, as PyTorch's
// checkpoint does; the random generator is the callback's to replay.
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <stdexcept>

#include "shim.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

typedef int (*host_block_run)(void* context, at::Tensor* input, at::Tensor* grad_output, at::Tensor** out,
                              char* error, size_t error_len);

namespace {

constexpr size_t kErrorLength = 8192;

at::Tensor call(host_block_run run, void* context, at::Tensor& input, at::Tensor* grad_output) {
  at::Tensor* out = nullptr;
  std::string error(kErrorLength, '\0');
  if (run(context, &input, grad_output, &out, error.data(), error.size()) != 0 || out == nullptr) {
    throw std::runtime_error(error.c_str());
  }
  at::Tensor result = *out;
  delete out;
  return result;
}

// Autocast for one device type: on or off, and its dtype.
struct AutocastState {
  at::DeviceType device;
  bool enabled;
  at::ScalarType dtype;

  static AutocastState now(at::DeviceType device) {
    return {device, at::autocast::is_autocast_enabled(device), at::autocast::get_autocast_dtype(device)};
  }
  void apply() const {
    at::autocast::set_autocast_enabled(device, enabled);
    at::autocast::set_autocast_dtype(device, dtype);
  }
};

// Sets autocast as the forward had it, and back when the recomputation is done.
struct AutocastAsInForward {
  AutocastState cpu_before, cuda_before;
  AutocastAsInForward(const AutocastState& cpu, const AutocastState& cuda)
      : cpu_before(AutocastState::now(at::kCPU)), cuda_before(AutocastState::now(at::kCUDA)) {
    cpu.apply();
    cuda.apply();
  }
  ~AutocastAsInForward() {
    cpu_before.apply();
    cuda_before.apply();
  }
};

struct Checkpointed : public torch::autograd::Function<Checkpointed> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor input, int64_t run, int64_t context) {
    ctx->saved_data["run"] = run;
    ctx->saved_data["context"] = context;
    auto cpu = AutocastState::now(at::kCPU), cuda = AutocastState::now(at::kCUDA);
    ctx->saved_data["cpu_autocast"] = cpu.enabled;
    ctx->saved_data["cpu_dtype"] = static_cast<int64_t>(cpu.dtype);
    ctx->saved_data["cuda_autocast"] = cuda.enabled;
    ctx->saved_data["cuda_dtype"] = static_cast<int64_t>(cuda.dtype);
    ctx->save_for_backward({input});
    return call(reinterpret_cast<host_block_run>(run), reinterpret_cast<void*>(context), input, nullptr);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto input = ctx->get_saved_variables()[0];
    auto run = reinterpret_cast<host_block_run>(ctx->saved_data["run"].toInt());
    auto context = reinterpret_cast<void*>(ctx->saved_data["context"].toInt());
    AutocastState cpu{at::kCPU, ctx->saved_data["cpu_autocast"].toBool(),
                      static_cast<at::ScalarType>(ctx->saved_data["cpu_dtype"].toInt())};
    AutocastState cuda{at::kCUDA, ctx->saved_data["cuda_autocast"].toBool(),
                       static_cast<at::ScalarType>(ctx->saved_data["cuda_dtype"].toInt())};
    AutocastAsInForward autocast(cpu, cuda);
    at::Tensor grad_input = call(run, context, input, &grads[0]);
    return {grad_input, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" char* host_checkpoint(void* input, host_block_run run, void* context, void** out) {
  return host::guarded([&] {
    auto output = Checkpointed::apply(*static_cast<at::Tensor*>(input), reinterpret_cast<int64_t>(run),
                                      reinterpret_cast<int64_t>(context));
    *out = new at::Tensor(output);
  });
}
