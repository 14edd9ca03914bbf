// Tensors arrive from Rust as tch handles (at::Tensor*); both shims read lists of them.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace host {

// The tensors behind `n` handles (sharing their storage).
inline std::vector<at::Tensor> tensor_list(void** handles, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) list.push_back(*static_cast<at::Tensor*>(handles[i]));
  return list;
}

}  // namespace host
