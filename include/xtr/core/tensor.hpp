#pragma once
// Tensors: an owning, 64-byte aligned, row-major buffer with a shape, in a backend's memory (core/memory.hpp; host
// memory unless told otherwise), and Eigen views over it.
#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "xtr/core/checked.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/memory.hpp"

namespace xtr {

using Index = std::int64_t;

/// A row-major matrix type and views over contiguous or row-strided memory.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixView = Eigen::Map<RowMatrix<T>>;  // contiguous (rows, cols)
template <class T>
using ConstMatrixView = Eigen::Map<const RowMatrix<T>>;
template <class T>
using StridedView = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;  // rows `stride` apart
template <class T>
using ConstStridedView = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using VectorView = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;

/// Up to four extents, outermost first.
struct Shape {
  std::array<Index, 4> extent{};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<Index> dims) {
    require(dims.size() <= 4, "a shape has at most 4 dimensions, got ", dims.size());
    for (Index d : dims) {
      require(d >= 0, "a shape's extents must be >= 0, got ", d);
      extent[rank++] = d;
    }
    (void)numel();  // sizes from outside: the element count must stay within kMaxElements
  }
  /// The element count (checked: a shape beyond kMaxElements cannot be built).
  [[nodiscard]] Index numel() const {
    Index n = 1;
    for (int i = 0; i < rank; ++i) n = checked_mul(n, extent[i], "a tensor's element count");
    return n;
  }
  [[nodiscard]] Index operator[](int i) const { return extent[i]; }
  [[nodiscard]] Index rows() const { return rank == 0 ? 1 : numel() / extent[rank - 1]; }  // all but the last
  [[nodiscard]] Index cols() const { return rank == 0 ? 1 : extent[rank - 1]; }
  [[nodiscard]] std::vector<Index> dims() const { return {extent.begin(), extent.begin() + rank}; }
  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank == b.rank && std::equal(a.extent.begin(), a.extent.begin() + a.rank, b.extent.begin());
  }
  [[nodiscard]] std::string str() const {
    std::string s = "(";
    for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(extent[i]);
    return s + ")";
  }
};

namespace detail {
/// Frees through the Memory that allocated.
struct MemoryFree {
  const Memory* memory = &host_memory();
  void operator()(void* p) const noexcept { memory->deallocate(p); }
};
}  // namespace detail

/// Tag for a Tensor whose contents start undefined (a buffer written before it is read: no memset, no page touched).
struct Uninitialized {};

/// An owning, zero-initialised (unless Uninitialized), 64-byte aligned tensor of T, in host memory or the given
/// Memory (which a copy keeps; an assignment keeps the destination's).
template <class T>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape, const Memory& memory = host_memory()) : data_(nullptr, {&memory}) { resize(shape); }
  Tensor(Shape shape, Uninitialized, const Memory& memory = host_memory()) : data_(nullptr, {&memory}) {
    reserve(shape);
  }
  Tensor(const Tensor& other) : Tensor(other.shape_, Uninitialized{}, other.memory()) {
    std::copy_n(other.data(), size(), data());
  }
  Tensor& operator=(const Tensor& other) {
    if (this != &other) {
      reserve(other.shape_);
      std::copy_n(other.data(), size(), data());
    }
    return *this;
  }
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  /// Reallocates only when the element count grows; contents are zeroed.
  void resize(Shape shape) {
    reserve(shape);
    fill(T(0));
  }
  void fill(T value) { std::fill_n(data(), size(), value); }

  [[nodiscard]] T* data() { return data_.get(); }
  [[nodiscard]] const T* data() const { return data_.get(); }
  [[nodiscard]] Index size() const { return shape_.numel(); }
  [[nodiscard]] const Shape& shape() const { return shape_; }
  /// Where the elements live.
  [[nodiscard]] const Memory& memory() const { return *data_.get_deleter().memory; }
  [[nodiscard]] std::span<T> span() { return {data(), static_cast<std::size_t>(size())}; }
  [[nodiscard]] std::span<const T> span() const { return {data(), static_cast<std::size_t>(size())}; }
  T& operator[](Index i) { return data_.get()[i]; }
  const T& operator[](Index i) const { return data_.get()[i]; }

  /// The tensor as a (rows, cols) matrix: all leading dimensions folded into rows.
  [[nodiscard]] MatrixView<T> matrix() { return {data(), shape_.rows(), shape_.cols()}; }
  [[nodiscard]] ConstMatrixView<T> matrix() const { return {data(), shape_.rows(), shape_.cols()}; }
  [[nodiscard]] VectorView<T> vector() { return {data(), size()}; }

 private:
  void reserve(Shape shape) {
    if (shape.numel() > capacity_) {
      data_.reset();  // the old block first: peak memory is the larger of the two, not their sum
      capacity_ = 0;
      data_.reset(static_cast<T*>(memory().allocate(sizeof(T) * std::size_t(std::max<Index>(shape.numel(), 1)))));
      capacity_ = shape.numel();
    }
    shape_ = shape;
  }

  std::unique_ptr<T, detail::MemoryFree> data_;
  Index capacity_ = 0;
  Shape shape_;
};

}  // namespace xtr
