// PyTorch's c10d through a C interface: the TCPStore rendezvous, a process group (Gloo on
// CPU, NCCL on CUDA where the build found NCCL), and the collectives data-parallel training
// needs. Compiled only where gloo's headers exist (the torch wheel does not ship them).
//
// Every entry point that can fail returns null on success or an error message the caller
// frees with host_free_error (shim.h).
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "shim.h"

#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#ifdef HOST_WITH_NCCL
c10::intrusive_ptr<c10d::Backend> host_make_nccl(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world, std::chrono::milliseconds timeout);
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

using host::guarded;
using host::message;

}  // namespace

extern "C" {

// Connects to (or, with `is_server`, hosts) the TCPStore at addr:port. No process group yet:
// the caller first checks that every rank arrived, so that a missing one can be named.
char* host_dist_store(const char* addr, int port, int is_server, int world, int64_t timeout_ms, void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = is_server != 0;
    options.numWorkers = world;
    options.waitWorkers = false;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    options.multiTenant = true;
    auto group = new Group();
    group->store = c10::make_intrusive<c10d::TCPStore>(std::string(addr), options);
    *out = group;
  });
}

char* host_dist_store_set(void* group, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] {
    static_cast<Group*>(group)->store->set(key, std::vector<uint8_t>(value, value + len));
  });
}

// Waits up to timeout_ms for `key`; *found says whether it came, *out (malloc'ed, *len
// bytes) holds its value when it did. Polls `check` rather than the store's own wait,
// which logs a warning each time it times out (the roll call expects some to).
char* host_dist_store_get(void* group, const char* key, int64_t timeout_ms, int* found, uint8_t** out, size_t* len) {
  return guarded([&] {
    auto& store = static_cast<Group*>(group)->store;
    *found = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!store->check({key})) {
      if (std::chrono::steady_clock::now() >= deadline) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    auto value = store->get(key);
    *out = static_cast<uint8_t*>(std::malloc(value.size() + 1));
    std::memcpy(*out, value.data(), value.size());
    *len = value.size();
    *found = 1;
  });
}

// Creates the process group over the store: "gloo" or "nccl".
char* host_dist_process_group(void* group, const char* backend, int rank, int world, int64_t timeout_ms) {
  return guarded([&] {
    auto g = static_cast<Group*>(group);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    // Collectives get their own key space, as torch's init_process_group does.
    auto store = c10::make_intrusive<c10d::PrefixStore>("default_pg", g->store);
    if (std::strcmp(backend, "nccl") == 0) {
#ifdef HOST_WITH_NCCL
      g->backend = host_make_nccl(store, rank, world, timeout);
#else
      throw std::runtime_error("this host was built without NCCL (no nccl.h or CUDA headers at build time)");
#endif
    } else {
      // As torch: GLOO_SOCKET_IFNAME picks the interfaces, else this machine's hostname.
      auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    }
  });
}

// Sums each tensor across ranks in place (all collectives queued first, then awaited, so
// that buckets overlap on the wire).
char* host_dist_all_reduce_sum(void* group, void** tensors, size_t n) {
  return guarded([&] {
    auto& backend = static_cast<Group*>(group)->backend;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& tensor : host::tensor_list(tensors, n)) {
      std::vector<at::Tensor> one{tensor};
      works.push_back(backend->allreduce(one, c10d::AllreduceOptions{}));
    }
    for (auto& work : works) work->wait();
  });
}

// Takes the largest value of each element across ranks, in place.
char* host_dist_all_reduce_max(void* group, void** tensors, size_t n) {
  return guarded([&] {
    auto& backend = static_cast<Group*>(group)->backend;
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::MAX;
    for (auto& tensor : host::tensor_list(tensors, n)) {
      std::vector<at::Tensor> one{tensor};
      backend->allreduce(one, options)->wait();
    }
  });
}

// Copies each tensor from rank `root` to every rank, in place.
char* host_dist_broadcast(void* group, void** tensors, size_t n, int root) {
  return guarded([&] {
    auto& backend = static_cast<Group*>(group)->backend;
    c10d::BroadcastOptions options;
    options.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& tensor : host::tensor_list(tensors, n)) {
      std::vector<at::Tensor> one{tensor};
      works.push_back(backend->broadcast(one, options));
    }
    for (auto& work : works) work->wait();
  });
}


}  // extern "C"

// Gradient buckets all-reduced during the backward pass, as DDP's reducer: each parameter's
// gradient is a slice of its bucket's flat tensor; a hook after the gradient's
// accumulation counts the bucket down, and a bucket whose gradients are all in starts its
// all-reduce while backward goes on with the rest. Buckets start strictly in order, so all
// ranks issue the same collectives in the same order.
namespace {

struct Reducer {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::vector<at::Tensor> flats;
  std::vector<size_t> bucket_of;  // per parameter
  std::vector<size_t> sizes;      // parameters per bucket
  std::vector<size_t> pending;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t next = 0;
  bool armed = false;
  std::string error;
  std::mutex mutex;

  void launch_ready() {
    while (next < flats.size() && pending[next] == 0) launch(next++);
  }

  void launch(size_t b) {
    try {
      std::vector<at::Tensor> one{flats[b]};
      works[b] = backend->allreduce(one, c10d::AllreduceOptions{});
    } catch (const std::exception& e) {
      if (error.empty()) error = e.what();
    }
  }

  void ready(size_t param) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed) return;
    auto b = bucket_of[param];
    if (pending[b] > 0 && --pending[b] == 0) launch_ready();
  }
};

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  Reducer* reducer;
  size_t index;
  ReadyHook(Reducer* r, size_t i) : reducer(r), index(i) {}
  void operator()(const torch::autograd::Variable&) override { reducer->ready(index); }
};

}  // namespace

extern "C" {

// `params` in bucket order, `sizes[b]` of them in bucket b, whose flat tensor is flats[b].
char* host_dist_reducer(void* group, void** params, size_t n_params, void** flats, const size_t* sizes,
                        size_t n_buckets, void** out) {
  return guarded([&] {
    auto reducer = new Reducer();
    reducer->backend = static_cast<Group*>(group)->backend;
    for (size_t b = 0; b < n_buckets; ++b) {
      reducer->flats.push_back(*static_cast<at::Tensor*>(flats[b]));
      reducer->sizes.push_back(sizes[b]);
      for (size_t i = 0; i < sizes[b]; ++i) reducer->bucket_of.push_back(b);
    }
    if (reducer->bucket_of.size() != n_params) throw std::runtime_error("bucket sizes do not add up to the parameters");
    reducer->pending = reducer->sizes;
    reducer->works.resize(n_buckets);
    for (size_t i = 0; i < n_params; ++i) {
      auto& param = *static_cast<at::Tensor*>(params[i]);
      torch::autograd::impl::set_post_acc_grad_hooks(param, std::make_unique<ReadyHook>(reducer, i));
    }
    *out = reducer;
  });
}

// The next backward pass is the last before an optimizer step: all-reduce its buckets.
void host_dist_reducer_arm(void* reducer) {
  auto r = static_cast<Reducer*>(reducer);
  std::lock_guard<std::mutex> lock(r->mutex);
  r->armed = true;
}

// After that backward pass: starts the buckets no hook started (parameters without a
// gradient this time), waits for all, and makes ready for the next step.
char* host_dist_reducer_finish(void* reducer) {
  auto r = static_cast<Reducer*>(reducer);
  std::lock_guard<std::mutex> lock(r->mutex);
  auto result = guarded([&] {
    while (r->next < r->flats.size()) r->launch(r->next++);
    if (!r->error.empty()) throw std::runtime_error(r->error);
    for (auto& work : r->works) {
      if (work) work->wait();
    }
  });
  r->pending = r->sizes;
  r->works.assign(r->works.size(), nullptr);
  r->next = 0;
  r->armed = false;
  r->error.clear();
  return result;
}

}  // extern "C"
