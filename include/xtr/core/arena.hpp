#pragma once
// Activation arena: a bump allocator reset once per forward pass. The first pass sizes it (growing by whole blocks);
// reset() then merges the blocks into one, so every later pass of the same shape does no heap allocation at all.
// The blocks come from a Memory (core/memory.hpp): the model's backend's.
#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "xtr/core/memory.hpp"
#include "xtr/core/tensor.hpp"

namespace xtr {

class Arena {
 public:
  static constexpr std::size_t alignment = 64;

  explicit Arena(const Memory& memory = host_memory()) : memory_(&memory) {}
  [[nodiscard]] const Memory& memory() const { return *memory_; }

  /// `count` uninitialised elements of U, 64-byte aligned, valid until the next reset().
  template <class U>
  U* allocate(Index count) {
    const Index elements = std::max<Index>(checked_mul(count, Index(sizeof(U)), "Arena: bytes of an allocation"),
                                           Index(sizeof(U)));  // checked_mul refuses a negative count
    const std::size_t bytes = round_up(static_cast<std::size_t>(elements));
    if (blocks_.empty() || used_ + bytes > blocks_.back().size) {
      grow(bytes);
    }
    std::byte* p = blocks_.back().data.get() + used_;
    used_ += bytes;
    total_ += bytes;
    high_water_ = std::max(high_water_, total_);
    return reinterpret_cast<U*>(p);
  }
  /// A (rows, cols) row-major view of fresh, uninitialised memory.
  template <class T>
  MatrixView<T> matrix(Index rows, Index cols) {
    return {allocate<T>(checked_mul(rows, cols, "Arena: a (rows, cols) matrix")), rows, cols};
  }
  template <class T>
  MatrixView<T> zeros(Index rows, Index cols) {
    auto m = matrix<T>(rows, cols);
    m.setZero();
    return m;
  }

  /// A point to come back to: memory allocated after it can be handed back with release() (scratch of one step of a
  /// backward, say), stack-wise.
  struct Mark {
    std::size_t blocks = 0, used = 0, total = 0;
  };
  [[nodiscard]] Mark mark() const { return {blocks_.size(), used_, total_}; }
  /// Makes the memory allocated since `m` reusable. Pointers into it must not be used again. (While the arena is
  /// still growing, a release across a new block keeps that block: the next reset() merges everything.)
  void release(const Mark& m) {
    if (blocks_.size() != m.blocks) return;
    used_ = m.used;
    total_ = m.total;
  }

  /// Frees nothing; makes all memory reusable. Several blocks from a first pass become one block.
  void reset() {
    if (blocks_.size() > 1) {
      blocks_.clear();
      grow(high_water_);
    }
    used_ = 0;
    total_ = 0;
  }
  /// Heap allocations made so far (for tests: a steady-state pass adds none).
  [[nodiscard]] std::size_t heap_allocations() const { return heap_allocations_; }
  [[nodiscard]] std::size_t bytes_reserved() const {
    std::size_t n = 0;
    for (const auto& b : blocks_) n += b.size;
    return n;
  }

 private:
  struct Block {
    std::unique_ptr<std::byte, detail::MemoryFree> data;
    std::size_t size;
  };
  static std::size_t round_up(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }
  void grow(std::size_t at_least) {
    const std::size_t size = std::max<std::size_t>(at_least, std::size_t{1} << 20);
    blocks_.push_back(
        {std::unique_ptr<std::byte, detail::MemoryFree>(static_cast<std::byte*>(memory_->allocate(size)), {memory_}),
         size});
    used_ = 0;
    ++heap_allocations_;
  }

  const Memory* memory_;
  std::vector<Block> blocks_;
  std::size_t used_ = 0, total_ = 0, high_water_ = 0, heap_allocations_ = 0;
};

}  // namespace xtr
