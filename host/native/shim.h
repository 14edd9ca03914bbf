// What both shims share: tensors arrive from Rust as tch handles (at::Tensor*), and every
// entry point that can fail returns null on success or an error message (libtorch's own)
// that the caller frees with host_free_error.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace host {

// The tensors behind `n` handles (sharing their storage).
inline std::vector<at::Tensor> tensor_list(void** handles, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) list.push_back(*static_cast<at::Tensor*>(handles[i]));
  return list;
}

// A copy of `text` for the caller (malloc'ed; freed with host_free_error).
inline char* message(const std::string& text) {
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

}  // namespace host
