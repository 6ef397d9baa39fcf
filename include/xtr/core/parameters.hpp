#pragma once
// Named parameters in two flat buffers (values, gradients). Names follow x-transformers' state_dict, so checkpoints
// read like theirs; one flat buffer lets the optimiser, the gradient norm and zero_grad run as one loop.
#include <algorithm>
#include <cmath>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "xtr/core/checked.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tensor.hpp"

namespace xtr {

/// A handle to one registered parameter (stable across moves of the store).
struct ParameterId {
  int index = -1;
};

/// How a parameter is initialised (PyTorch defaults, as x-transformers leaves them).
struct Init {
  enum Kind { constant, uniform, normal } kind = constant;
  double a = 0;  // constant value, uniform bound, or normal std
  static Init fill(double v) { return {constant, v}; }
  static Init uniform_bound(double bound) { return {uniform, bound}; }
  static Init normal_std(double std) { return {normal, std}; }
};

template <class T>
class ParameterStore {
 public:
  /// Values and gradients will live in `memory` (the model's backend's, core/memory.hpp).
  explicit ParameterStore(const Memory& memory = host_memory()) : memory_(&memory) {}
  [[nodiscard]] const Memory& memory() const { return *memory_; }

  struct Entry {
    std::string name;
    Shape shape;
    Index offset = 0;
    Init init;
    int alias_of = -1;  // index of the entry whose storage this name shares (tied parameters), or -1
  };

  /// Registers a parameter; storage is laid out by allocate().
  ParameterId add(std::string name, Shape shape, Init init) {
    require(!allocated(), "parameter '", name, "' registered after the store was allocated");
    for (const auto& e : entries_) require(e.name != name, "parameter name '", name, "' registered twice");
    const Index offset = total_;
    total_ = checked_add(total_, checked_mul(shape.rows(), shape.cols(), "parameter '" + name + "' " + shape.str()),
                         "the parameter count");
    entries_.push_back({std::move(name), shape, offset, init});
    return {static_cast<int>(entries_.size()) - 1};
  }

  /// Registers `name` as a second name of `target` (tied weights, as x-transformers' `decoder.token_emb =
  /// encoder.token_emb`): one storage, so gradients from both uses add up; state dicts list both names.
  ParameterId alias(std::string name, ParameterId target) {
    require(!allocated(), "parameter '", name, "' registered after the store was allocated");
    for (const auto& e : entries_) require(e.name != name, "parameter name '", name, "' registered twice");
    const Entry& t = entries_.at(std::size_t(target.index));
    entries_.push_back({std::move(name), t.shape, t.offset, t.init, t.alias_of >= 0 ? t.alias_of : target.index});
    return {static_cast<int>(entries_.size()) - 1};
  }

  /// Allocates values and gradients and initialises values from `seed` (each parameter its own random stream).
  void allocate(std::uint64_t seed) {
    try {
      values_ = Tensor<T>(Shape{total_}, *memory_);
      grads_ = Tensor<T>(Shape{total_}, *memory_);
    } catch (const std::bad_alloc&) {
      values_ = {};
      grads_ = {};
      throw Error("xtr: cannot allocate " + std::to_string(total_) + " parameters (" +
                  std::to_string(2 * total_ * Index(sizeof(T)) >> 20) + " MiB of values and gradients): out of memory");
    } catch (...) {  // the Memory's own error (a device's names the bytes asked for and what is free)
      values_ = {};
      grads_ = {};
      throw;
    }
    const RandomStream root{seed, 0};
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const auto& e = entries_[i];
      if (e.alias_of >= 0) continue;
      const RandomStream rs = root.fork(i);
      T* v = values_.data() + e.offset;
      for (Index j = 0; j < e.shape.numel(); ++j) {
        switch (e.init.kind) {
          case Init::constant: v[j] = T(e.init.a); break;
          case Init::uniform: v[j] = T(e.init.a * (2.0 * rs.open_uniform(j) - 1.0)); break;
          case Init::normal: v[j] = T(e.init.a * rs.normal(j)); break;
        }
      }
    }
  }
  [[nodiscard]] bool allocated() const { return values_.size() == total_ && total_ > 0; }

  [[nodiscard]] MatrixView<T> value(ParameterId id) { return view(values_, id); }
  [[nodiscard]] MatrixView<T> grad(ParameterId id) { return view(grads_, id); }
  [[nodiscard]] const Entry& entry(ParameterId id) const { return entries_[id.index]; }
  [[nodiscard]] const std::vector<Entry>& entries() const { return entries_; }
  [[nodiscard]] Index count() const { return total_; }  // scalars in all parameters

  [[nodiscard]] Tensor<T>& values() { return values_; }
  [[nodiscard]] const Tensor<T>& values() const { return values_; }
  [[nodiscard]] Tensor<T>& grads() { return grads_; }
  [[nodiscard]] const Tensor<T>& grads() const { return grads_; }

  [[nodiscard]] const Entry* find(const std::string& name) const {
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.name == name; });
    return it == entries_.end() ? nullptr : &*it;
  }
  void zero_grad() { grads_.fill(T(0)); }

  /// "name[i] = value" of the first non-finite entry of `buffer` (values(), grads() or an optimizer moment laid out
  /// like them), or "" when every entry is finite.
  [[nodiscard]] std::string first_non_finite(const Tensor<T>& buffer) const {
    const T* x = buffer.data();
    for (Index i = 0; i < buffer.size(); ++i)
      if (!std::isfinite(double(x[i]))) {
        for (const auto& e : entries_)
          if (e.alias_of < 0 && i >= e.offset && i < e.offset + e.shape.numel())
            return e.name + "[" + std::to_string(i - e.offset) + "] = " + std::to_string(double(x[i]));
        return "entry " + std::to_string(i);
      }
    return {};
  }

 private:
  MatrixView<T> view(Tensor<T>& buffer, ParameterId id) {
    const Entry& e = entries_[id.index];
    return {buffer.data() + e.offset, e.shape.rows(), e.shape.cols()};
  }

  const Memory* memory_;
  std::vector<Entry> entries_;
  Index total_ = 0;
  Tensor<T> values_, grads_;
};

}  // namespace xtr
