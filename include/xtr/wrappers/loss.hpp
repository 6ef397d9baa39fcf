#pragma once
// A scalar loss that remembers how to differentiate itself: `auto loss = model(batch); loss.backward();`.
// Scaling a loss scales its gradients: `(loss / accumulate_every).backward()`.
#include <cstdint>

#include "xtr/core/error.hpp"

namespace xtr {

class Loss {
 public:
  using BackwardFn = void (*)(void* owner, double scale, std::uint64_t forward_id);

  Loss() = default;
  Loss(double value, void* owner, BackwardFn fn, std::uint64_t forward_id)
      : value_(value), owner_(owner), backward_(fn), forward_id_(forward_id) {}

  /// The loss value, times the scale applied with / and * (as PyTorch's (loss / k).item()).
  [[nodiscard]] double item() const { return value_ * scale_; }
  explicit operator double() const { return item(); }

  /// Adds scale · d loss / d parameter to every parameter's gradient.
  void backward() const {
    require(backward_ != nullptr, "this loss has no backward (it was not produced by a model)");
    backward_(owner_, scale_, forward_id_);
  }

  friend Loss operator/(Loss l, double d) {
    l.scale_ /= d;
    return l;
  }
  friend Loss operator*(Loss l, double s) {
    l.scale_ *= s;
    return l;
  }
  friend Loss operator*(double s, Loss l) { return l * s; }

 private:
  double value_ = 0, scale_ = 1;
  void* owner_ = nullptr;
  BackwardFn backward_ = nullptr;
  std::uint64_t forward_id_ = 0;
};

/// What every model's backward checks before adding gradients: the loss comes from the model's latest forward pass
/// (`current`), and that pass has not been differentiated yet (`last_backward` then records `forward_id`).
inline void claim_backward(bool current, std::uint64_t forward_id, std::uint64_t& last_backward) {
  require(current, "backward() on a loss whose forward pass was replaced by a later forward; call backward() first");
  require(forward_id != last_backward,
          "backward() called twice for the same forward pass (its gradients are already in); run the forward again");
  last_backward = forward_id;
}

}  // namespace xtr
