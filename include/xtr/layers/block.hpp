#pragma once
// One layer of a stack: its sublayers in order, each in the residual stream with its norms,
//   Decoder / Encoder:            (self-attention, feed-forward)
//   with CrossAttend:             (self-attention, cross-attention, feed-forward)
//   CrossAttender:                (cross-attention, feed-forward)
// as a heterogeneous Boost.Hana tuple: forward folds over it, backward folds over it reversed, decode like forward.
// Block i of x-transformers' `attn_layers.layers` is the i-th sublayer overall, so layer l's parts take consecutive
// block indices.
#include <boost/hana/at.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/reverse.hpp>
#include <boost/hana/size.hpp>
#include <boost/hana/transform.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/zip_with.hpp>

#include <string>
#include <type_traits>

#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/cross_attention.hpp"
#include "xtr/layers/feedforward.hpp"
#include "xtr/layers/residual.hpp"
#include "xtr/layers/self_attention.hpp"

namespace xtr {

namespace detail {
/// The sublayer types of one layer of `Layers`, in order.
template <class Layers, class Backend>
auto block_parts() {
  namespace hana = boost::hana;
  using Norm = typename Layers::norm;
  using SA = Residual<SelfAttention<Layers, Backend>, Norm, Backend>;
  using CA = Residual<CrossAttention<Layers, Backend>, Norm, Backend>;
  using FF = Residual<FeedForward<Layers, Backend>, Norm, Backend>;
  if constexpr (Layers::self_attend && Layers::cross_attend) {
    return hana::tuple<SA, CA, FF>{};
  } else if constexpr (Layers::self_attend) {
    return hana::tuple<SA, FF>{};
  } else {
    return hana::tuple<CA, FF>{};
  }
}
}  // namespace detail

template <class Layers, class Backend>
class Block {
 public:
  using T = typename Backend::scalar;
  using Inputs = LayerInputs<Backend>;
  using Parts = decltype(detail::block_parts<Layers, Backend>());
  /// What each part's backward needs, in the same order.
  using Saved = decltype(boost::hana::transform(std::declval<Parts>(), [](const auto& part) {
    return typename std::decay_t<decltype(part)>::Saved{};
  }));
  static constexpr Index size = decltype(boost::hana::size(std::declval<Parts>()))::value;

  /// Registers the parameters of layer `layer` (blocks layer · size ...) in x-transformers' order and names.
  void declare(ParameterStore<T>& store, const std::string& prefix, Index layer, const LayersConfig& L, Index kv_heads,
               Index dim_context, NormPlacement placement, NormStorage storage) {
    Index block = layer * size;
    boost::hana::for_each(parts_, [&](auto& part) {
      const std::string name = prefix + "attn_layers.layers." + std::to_string(block++) + ".";
      part.declare(store, name, L.dim, placement, storage, [&](auto& sublayer, const std::string& p) {
        using Sub = std::decay_t<decltype(sublayer)>;
        if constexpr (std::is_same_v<Sub, FeedForward<Layers, Backend>>) {
          sublayer.declare(store, p, L);
        } else if constexpr (std::is_same_v<Sub, CrossAttention<Layers, Backend>>) {
          sublayer.declare(store, p, L, kv_heads, dim_context);
        } else {
          sublayer.declare(store, p, L, kv_heads);
          if (L.attention.value_residual && layer > 0) sublayer.declare_value_mix(store, p);
        }
      });
    });
  }

  Saved forward(Pass<Backend>& pass, const Inputs& in, View<T>& x) const {
    Saved saved;
    auto pairs = boost::hana::zip_with([](const auto& part, auto& s) { return std::pair{&part, &s}; }, parts_, saved);
    boost::hana::for_each(pairs, [&](auto pair) { *pair.second = pair.first->forward(pass, in, x); });
    return saved;
  }
  void backward(Pass<Backend>& pass, const Inputs& in, const Saved& saved, View<T>& dx) const {
    auto pairs = boost::hana::zip_with([](const auto& part, const auto& s) { return std::pair{&part, &s}; }, parts_, saved);
    boost::hana::for_each(boost::hana::reverse(pairs), [&](auto pair) {
      const Arena::Mark scratch = pass.arena.mark();  // each sublayer's backward temporaries die with it
      pair.first->backward(pass, in, *pair.second, dx);
      pass.arena.release(scratch);
    });
  }
  void decode(Pass<Backend>& pass, const Inputs& in, View<T>& x) const {
    boost::hana::for_each(parts_, [&](const auto& part) { part.decode(pass, in, x); });
  }

  /// The self-attention sublayer.
  [[nodiscard]] const SelfAttention<Layers, Backend>& self_attention() const
    requires(Layers::self_attend)
  {
    return boost::hana::at_c<0>(parts_).sublayer;
  }
  /// The cross-attention sublayer (for projecting a context once into the cache).
  [[nodiscard]] const CrossAttention<Layers, Backend>& cross_attention() const
    requires(Layers::cross_attend)
  {
    return boost::hana::at_c<Layers::self_attend ? 1 : 0>(parts_).sublayer;
  }

 private:
  Parts parts_;
};

}  // namespace xtr
