// PyTorch's c10d through a C interface: the TCPStore rendezvous, a process group (Gloo on
// CPU, NCCL on CUDA where the build found NCCL), and the collectives data-parallel training
// needs. Compiled only where gloo's headers exist (the torch wheel does not ship them).
//
// Every entry point that can fail returns null on success or an error message the caller
// frees with host_dist_free_error.
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <memory>
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

char* message(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

// Runs `body`, turning any exception into an error message.
template <typename F>
char* guarded(F body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

std::vector<at::Tensor> borrowed(void** handles, size_t n) {
  std::vector<at::Tensor> tensors;
  tensors.reserve(n);
  for (size_t i = 0; i < n; ++i) tensors.push_back(*static_cast<at::Tensor*>(handles[i]));
  return tensors;
}

}  // namespace

extern "C" {

void host_dist_free_error(char* error) { std::free(error); }

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
    for (auto& tensor : borrowed(tensors, n)) {
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
    for (auto& tensor : borrowed(tensors, n)) {
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
    for (auto& tensor : borrowed(tensors, n)) {
      std::vector<at::Tensor> one{tensor};
      works.push_back(backend->broadcast(one, options));
    }
    for (auto& work : works) work->wait();
  });
}

char* host_dist_barrier(void* group) {
  return guarded([&] { static_cast<Group*>(group)->backend->barrier()->wait(); });
}

}  // extern "C"
