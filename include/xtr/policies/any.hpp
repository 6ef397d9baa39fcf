#pragma once
// Run-time choice within an axis: Any<Axis> in a slot takes the policy named by the configuration
// (LayersConfig::policies) when the model is built, and every op dispatches to that policy's kernel, once per call
// (a switch outside the kernel's loops). One model type then loads any description (checkpoints, xt_eval) with compile
// time linear in the number of policies, not in the number of their combinations, as Eigen's Dynamic sizes stand in
// for fixed ones. Static slots cost nothing and stay the way to write a model in code.
//
//   using Net = TransformerWrapper<Decoder<AnyPosition, AnyNorm, AnyFeedForward, AnyScoreBias>>;   // = AnyDecoder
//   Net net({.num_tokens = 256, .max_seq_len = 64, .layers = {.dim = 64, .depth = 2,
//            .policies = {.position = "Rotary", .norm = "RMSNorm", .feedforward = "SwiGLU", .score_bias = "ALiBi"}}});
#include <string>
#include <string_view>
#include <type_traits>

#include "xtr/core/error.hpp"
#include "xtr/policies/absolute_learned.hpp"
#include "xtr/policies/concepts.hpp"
#include "xtr/policies/feedforward.hpp"
#include "xtr/policies/layer_norm.hpp"
#include "xtr/policies/no_position.hpp"
#include "xtr/policies/rms_norm.hpp"
#include "xtr/policies/rotary.hpp"
#include "xtr/policies/scale_norm.hpp"
#include "xtr/policies/score_bias.hpp"
#include "xtr/policies/simple_rms_norm.hpp"

namespace xtr {

template <class... Ps>
struct PolicyList {
  static constexpr int size = int(sizeof...(Ps));
  template <class P>
  static constexpr bool contains = (std::is_same_v<P, Ps> || ...);
  /// "A, B, C"
  static std::string names() {
    std::string s;
    ((s += (s.empty() ? "" : ", ") + std::string(Ps::name)), ...);
    return s;
  }
};

/// Every policy of each axis the library implements.
using Positions = PolicyList<AbsoluteLearned, Rotary, NoPosition>;
using Norms = PolicyList<LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm>;
using FeedForwards = PolicyList<GELU, GEGLU, SwiGLU, SiLU, ReLUSquared>;
using ScoreBiases = PolicyList<NoScoreBias, ALiBi, RelativePositionBias, DynamicPositionBias>;

/// The run-time policy of an axis, one of `Candidates`.
template <class Axis, class Candidates>
struct Any {
  using axis = Axis;
  using candidates = Candidates;
  static constexpr std::string_view name = Axis::any_name;
};
using AnyPosition = Any<axis::position, Positions>;
using AnyNorm = Any<axis::norm, Norms>;
using AnyFeedForward = Any<axis::feedforward, FeedForwards>;
using AnyScoreBias = Any<axis::score_bias, ScoreBiases>;

template <class P>
inline constexpr bool is_any = false;
template <class Axis, class Candidates>
inline constexpr bool is_any<Any<Axis, Candidates>> = true;

namespace detail {
template <class List>
struct list_ops;
template <class... Ps>
struct list_ops<PolicyList<Ps...>> {
  static int index(std::string_view name) {
    int i = 0, found = -1;
    ((found = found < 0 && Ps::name == name ? i : found, ++i), ...);
    return found;
  }
  template <class F>
  static decltype(auto) visit(int index, F&& f) {
    using R = decltype(f.template operator()<typename std::tuple_element<0, std::tuple<Ps...>>::type>());
    if constexpr (std::is_void_v<R>) {
      int i = 0;
      ((i++ == index ? (f.template operator()<Ps>(), 0) : 0), ...);
    } else {
      R result{};
      int i = 0;
      ((i++ == index ? (result = f.template operator()<Ps>(), 0) : 0), ...);
      return result;
    }
  }
};
}  // namespace detail

/// The policy of slot `Slot` that the name selects, as an index: a static slot is itself (the name must be empty or
/// its own); Any<...> looks the name up among its candidates (empty: the first, x-transformers' default).
template <class Slot>
int resolve_policy(std::string_view name, std::string_view what) {
  if constexpr (is_any<Slot>) {
    using Ops = detail::list_ops<typename Slot::candidates>;
    if (name.empty()) return 0;
    const int i = Ops::index(name);
    require(i >= 0, what, " '", name, "' is not one of ", Slot::candidates::names());
    return i;
  } else {
    require(name.empty() || name == Slot::name, what, " '", name, "' contradicts the model type's ", Slot::name);
    return 0;
  }
}

/// f.template operator()<P>() for the policy P of slot `Slot` at `index` (from resolve_policy).
template <class Slot, class F>
decltype(auto) visit_policy(int index, F&& f) {
  if constexpr (is_any<Slot>) {
    return detail::list_ops<typename Slot::candidates>::visit(index, f);
  } else {
    return f.template operator()<Slot>();
  }
}

/// The name of the policy at `index` of slot `Slot`.
template <class Slot>
std::string_view policy_name(int index) {
  return visit_policy<Slot>(index, []<class P>() { return P::name; });
}

}  // namespace xtr
