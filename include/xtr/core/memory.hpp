#pragma once
// Where a backend's buffers live. A model's parameters and gradients, its activation arena, its KV caches and its
// optimizer's moments are allocated from the Memory its backend names (Backend::memory(); host memory when the
// backend names none): host memory for the CPU and reference backends, memory the GPU reaches for the CUDA backend.
// A Memory is a pair of functions, not a type parameter, so Tensor, Arena and ParameterStore stay one type each and
// every kernel signature stays as it is.
#include <concepts>
#include <cstddef>
#include <new>
#include <string_view>

namespace xtr {

struct Memory {
  std::string_view name;
  /// `bytes` (> 0) of memory aligned to at least 64 bytes; throws (std::bad_alloc or xtr::Error naming the bytes)
  /// when it cannot.
  void* (*allocate)(std::size_t bytes);
  /// Frees what allocate returned (null: nothing).
  void (*deallocate)(void* p) noexcept;
};

namespace detail {
inline constexpr std::align_val_t host_alignment{64};
inline void* host_allocate(std::size_t bytes) { return ::operator new(bytes, host_alignment); }
inline void host_deallocate(void* p) noexcept { ::operator delete(p, host_alignment); }
}  // namespace detail

/// Host memory, 64-byte aligned (throws std::bad_alloc when exhausted): the CPU and reference backends'.
inline const Memory& host_memory() {
  static constexpr Memory memory{"host", &detail::host_allocate, &detail::host_deallocate};
  return memory;
}

/// The memory backend B keeps its buffers in: B::memory() when B declares it, host memory otherwise.
template <class B>
const Memory& memory_of() {
  if constexpr (requires { { B::memory() } -> std::same_as<const Memory&>; }) {
    return B::memory();
  } else {
    return host_memory();
  }
}

}  // namespace xtr
