#pragma once
// The policy axes. A policy names its axis; each axis is constrained by a concept, so a type that is not a
// policy of the expected axis is rejected at the point of use with the concept's name. A policy is compile-time
// because a kernel's inner loop changes with it (the norm formula, the activation, the score bias, the rotation);
// presence flags and counts outside inner loops are run-time options (LayersConfig, TransformerConfig).
#include <concepts>
#include <string_view>

namespace xtr {

namespace axis {
struct position {  // how token positions enter the model
  static constexpr std::string_view any_name = "AnyPosition";
};
struct norm {  // the normalisation before or after each sublayer and at the end
  static constexpr std::string_view any_name = "AnyNorm";
};
struct feedforward {  // the position-wise feed-forward block
  static constexpr std::string_view any_name = "AnyFeedForward";
};
struct attention {};        // the token-mixing attention
struct cross_attention {};  // whether layers also attend to a context (CrossAttend)
struct score_bias {  // what is added to the attention scores (ALiBi, T5 buckets, dynamic position bias)
  static constexpr std::string_view any_name = "AnyScoreBias";
};
}  // namespace axis

/// How a norm scales x̂: a gain per channel, one scalar gain, or none.
enum class NormGain { channel, scalar, none };

template <class P>
concept Policy = requires {
  typename P::axis;
  { P::name } -> std::convertible_to<std::string_view>;
};
template <class Axis, class Candidates>
struct Any;
namespace detail {
template <class P>
inline constexpr bool is_any_slot = false;
template <class Axis, class Candidates>
inline constexpr bool is_any_slot<Any<Axis, Candidates>> = true;
}  // namespace detail

template <class P>
concept PositionEncoding = Policy<P> && std::same_as<typename P::axis, axis::position>;
template <class P>
concept NormPolicy = Policy<P> && std::same_as<typename P::axis, axis::norm> && (detail::is_any_slot<P> || requires {
  { P::eps } -> std::convertible_to<double>;
  { P::subtracts_mean } -> std::convertible_to<bool>;
  { P::gain } -> std::convertible_to<NormGain>;
});
template <class P>
concept FeedForwardPolicy = Policy<P> && std::same_as<typename P::axis, axis::feedforward> &&
                            (detail::is_any_slot<P> || requires {
                              { P::gated } -> std::convertible_to<bool>;
                              typename P::activation;
                            });
template <class P>
concept AttentionPolicy = Policy<P> && std::same_as<typename P::axis, axis::attention>;
template <class P>
concept CrossAttentionPolicy = Policy<P> && std::same_as<typename P::axis, axis::cross_attention>;
template <class P>
concept ScoreBiasPolicy = Policy<P> && std::same_as<typename P::axis, axis::score_bias> &&
                          (detail::is_any_slot<P> || requires {
                            { P::has_table } -> std::convertible_to<bool>;
                          });

}  // namespace xtr
