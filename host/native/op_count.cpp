// What one stretch of work asks of libtorch: every ATen operator dispatched (counted by
// name through a global RecordFunction callback, the hook torch.profiler itself uses) and
// the bytes the CPU and device allocators hand out (through the allocators' memory
// reporting, as torch.profiler's profile_memory). Both are thread-local state that
// libtorch hands on to the autograd engine's threads, so the backward pass counts too and
// other threads' work does not. The benchmarks compare these with transformers' counts for
// the same training step.
#include <ATen/record_function.h>
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <atomic>
#include <map>
#include <mutex>
#include <sstream>

#include "shim.h"

using host::guarded;

namespace {

std::mutex counts_mutex;
std::map<std::string, int64_t> counts;
thread_local at::CallbackHandle callback = 0;
std::atomic<int64_t> bytes_allocated{0};
std::atomic<int64_t> allocations{0};

std::unique_ptr<at::ObserverContext> count_op(const at::RecordFunction& fn) {
  std::lock_guard<std::mutex> lock(counts_mutex);
  ++counts[fn.name()];
  return nullptr;
}

// Receives every allocation and free of the allocators while it is installed.
struct AllocationReporter : c10::MemoryReportingInfoBase {
  void reportMemoryUsage(void*, int64_t size, size_t, size_t, c10::Device) override {
    if (size > 0) {
      bytes_allocated += size;
      ++allocations;
    }
  }
  bool memoryProfilingEnabled() const override { return true; }
};

}  // namespace

extern "C" {

// Starts counting on this thread and the threads it hands work to.
char* host_op_count_start() {
  return guarded([&] {
    TORCH_CHECK(callback == 0, "operator counting is already on");
    {
      std::lock_guard<std::mutex> lock(counts_mutex);
      counts.clear();
    }
    bytes_allocated = 0;
    allocations = 0;
    callback = at::addThreadLocalCallback(at::RecordFunctionCallback(count_op).scopes({at::RecordScope::FUNCTION}));
    c10::ThreadLocalDebugInfo::_push(c10::DebugInfoKind::PROFILER_STATE, std::make_shared<AllocationReporter>());
  });
}

// Stops counting; `out` receives "bytes<TAB>allocations" on the first line, then one
// "name<TAB>count" line per operator (malloc'ed; freed with host_free_error).
char* host_op_count_stop(char** out) {
  return guarded([&] {
    TORCH_CHECK(callback != 0, "operator counting is not on");
    at::removeCallback(callback);
    callback = 0;
    c10::ThreadLocalDebugInfo::_pop(c10::DebugInfoKind::PROFILER_STATE);
    std::ostringstream text;
    text << bytes_allocated.load() << '\t' << allocations.load() << '\n';
    std::lock_guard<std::mutex> lock(counts_mutex);
    for (const auto& [name, count] : counts) text << name << '\t' << count << '\n';
    *out = host::message(text.str());
  });
}

}  // extern "C"
