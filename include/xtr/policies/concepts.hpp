#pragma once
// The policy axes. A policy names its axis; each axis is constrained by a concept, so a type that is not a
// policy of the expected axis is rejected at the point of use with the concept's name. A policy is compile-time
// because a kernel's inner loop changes with it (the norm formula, the activation, the score bias, the rotation);
// presence flags and counts outside inner loops are run-time options (LayersConfig, TransformerConfig).
#include <concepts>
#include <string_view>

namespace xtr {

namespace axis {
struct position {};         // how token positions enter the model
struct norm {};             // the normalisation before each sublayer and at the end
struct feedforward {};      // the position-wise feed-forward block
struct attention {};        // the token-mixing attention
struct cross_attention {};  // whether layers also attend to a context (CrossAttend)
struct score_bias {};       // what is added to the attention scores (ALiBi, T5 buckets, dynamic position bias)
}  // namespace axis

/// How a norm scales x̂: a gain per channel, one scalar gain, or none.
enum class NormGain { channel, scalar, none };

template <class P>
concept Policy = requires {
  typename P::axis;
  { P::name } -> std::convertible_to<std::string_view>;
};
template <class P>
concept PositionEncoding = Policy<P> && std::same_as<typename P::axis, axis::position>;
template <class P>
concept NormPolicy = Policy<P> && std::same_as<typename P::axis, axis::norm> && requires {
  { P::eps } -> std::convertible_to<double>;
  { P::subtracts_mean } -> std::convertible_to<bool>;
  { P::gain } -> std::convertible_to<NormGain>;
};
template <class P>
concept FeedForwardPolicy = Policy<P> && std::same_as<typename P::axis, axis::feedforward> && requires {
  { P::gated } -> std::convertible_to<bool>;
  typename P::activation;
};
template <class P>
concept AttentionPolicy = Policy<P> && std::same_as<typename P::axis, axis::attention>;
template <class P>
concept CrossAttentionPolicy = Policy<P> && std::same_as<typename P::axis, axis::cross_attention>;
template <class P>
concept ScoreBiasPolicy = Policy<P> && std::same_as<typename P::axis, axis::score_bias> && requires {
  { P::has_table } -> std::convertible_to<bool>;
};

}  // namespace xtr
