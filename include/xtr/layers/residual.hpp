#pragma once
// A sublayer f in the residual stream x, with its norms where the stack places them (x-transformers' pre_norm,
// sandwich_norm):
//   pre-norm (default):  x ← x + f(norm₀(x))                       norm₀ at `<block>.0.0`
//   sandwich:            x ← x + norm₁(f(norm₀(x)))                 norm₁ at `<block>.0.1`
//   post-norm:           x ← norm₂(x + f(x))                        norm₂ at `<block>.0.2` (a new buffer: x is f's
//                                                                   saved input)
// and their backwards. The sublayer writes its branch straight into x when nothing comes between (pre-norm: the
// GEMM epilogue adds into the residual stream), into a fresh buffer otherwise.
#include <string>

#include "xtr/backend/ops.hpp"
#include "xtr/layers/layer_inputs.hpp"
#include "xtr/layers/norm.hpp"
#include "xtr/layers/pass.hpp"

namespace xtr {

/// Where a stack's norms sit relative to the residual add.
enum class NormPlacement { pre, sandwich, post };

template <class Sublayer, class Norm, class Backend>
class Residual {
 public:
  using T = typename Backend::scalar;
  using Inputs = LayerInputs<Backend>;
  using NormSaved = typename NormLayer<Norm, Backend>::Saved;

  struct Saved {
    NormSaved first, second;                 // norm₀ (pre, sandwich) and norm₁ / norm₂
    typename Sublayer::Saved inner;
  };

  /// Registers the norms under `<block>.0.*` and the sublayer's parameters under `<block>.1.` (in x-transformers'
  /// order: the norms first). `declare_sublayer(prefix)` registers the sublayer's own.
  template <class DeclareSublayer>
  void declare(ParameterStore<T>& store, const std::string& block, Index dim, NormPlacement placement,
               NormStorage storage, DeclareSublayer&& declare_sublayer) {
    placement_ = placement;
    if (placement != NormPlacement::post) first_.declare(store, block + "0.0", dim, storage);
    if (placement == NormPlacement::sandwich) second_.declare(store, block + "0.1", dim, storage);
    declare_sublayer(sublayer, block + "1.");
    if (placement == NormPlacement::post) second_.declare(store, block + "0.2", dim, storage);
  }

  Sublayer sublayer;

  /// One residual step on x (N, D); post-norm moves x to a new buffer.
  Saved forward(Pass<Backend>& pass, const Inputs& in, View<T>& x) const {
    Saved s;
    const Index N = x.rows, D = x.cols;
    switch (placement_) {
      case NormPlacement::pre: {
        View<T> h = pass.allocate(N, D);
        s.first = first_.forward(pass, x, nullptr, h, false, true);
        s.inner = sublayer.forward(pass, in, h, x, true);
        break;
      }
      case NormPlacement::sandwich: {
        View<T> h = pass.allocate(N, D), y = pass.allocate(N, D);
        s.first = first_.forward(pass, x, nullptr, h, false, true);
        s.inner = sublayer.forward(pass, in, h, y, false);
        s.second = second_.forward(pass, y, nullptr, x, true, true);
        break;
      }
      case NormPlacement::post: {
        View<T> y = pass.allocate(N, D), next = pass.allocate(N, D);
        s.inner = sublayer.forward(pass, in, x, y, false);
        s.second = second_.forward(pass, x, y.data, next, false, true);
        x = next;
        break;
      }
    }
    return s;
  }

  /// dx: d loss / d x after this step; on return, in the same buffer, d loss / d x before it (the temporaries can
  /// then be released).
  void backward(Pass<Backend>& pass, const Inputs& in, const Saved& s, View<T> dx) const {
    const Index N = dx.rows, D = dx.cols;
    switch (placement_) {
      case NormPlacement::pre: {
        View<T> dh = pass.allocate(N, D);
        sublayer.backward(pass, in, s.inner, dx, dh, false);
        first_.backward(pass, s.first, dh, dx);
        break;
      }
      case NormPlacement::sandwich: {
        View<T> dy = pass.allocate(N, D), dh = pass.allocate(N, D);
        kernel<Backend, ops::Fill>::run(dy, T(0));
        second_.backward(pass, s.second, dx, dy);
        sublayer.backward(pass, in, s.inner, dy, dh, false);
        first_.backward(pass, s.first, dh, dx);
        break;
      }
      case NormPlacement::post: {
        View<T> dsum = pass.allocate(N, D), dh = pass.allocate(N, D);
        kernel<Backend, ops::Fill>::run(dsum, T(0));
        second_.backward(pass, s.second, dx, dsum);  // d (x + f(x))
        sublayer.backward(pass, in, s.inner, dsum, dh, false);
        kernel<Backend, ops::Axpby>::run(dsum, dh, T(1), T(1));
        kernel<Backend, ops::Axpby>::run(dh, dx, T(1), T(0));
        break;
      }
    }
  }

  /// The forward without saving (decoding n new rows per sequence).
  void decode(Pass<Backend>& pass, const Inputs& in, View<T>& x) const {
    const Index N = x.rows, D = x.cols;
    switch (placement_) {
      case NormPlacement::pre: {
        View<T> h = pass.allocate(N, D);
        first_.forward(pass, x, nullptr, h, false, false);
        sublayer.decode(pass, in, h, x, true);
        break;
      }
      case NormPlacement::sandwich: {
        View<T> h = pass.allocate(N, D), y = pass.allocate(N, D);
        first_.forward(pass, x, nullptr, h, false, false);
        sublayer.decode(pass, in, h, y, false);
        second_.forward(pass, y, nullptr, x, true, false);
        break;
      }
      case NormPlacement::post: {
        View<T> y = pass.allocate(N, D), next = pass.allocate(N, D);
        sublayer.decode(pass, in, x, y, false);
        second_.forward(pass, x, y.data, next, false, false);
        x = next;
        break;
      }
    }
  }

 private:
  NormPlacement placement_ = NormPlacement::pre;
  NormLayer<Norm, Backend> first_, second_;
};

}  // namespace xtr
