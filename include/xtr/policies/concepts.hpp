#pragma once
// The policy axes. A policy names its axis; each axis is constrained by a concept, so a type that is not a
// policy of the expected axis is rejected at the point of use with the concept's name.
#include <concepts>
#include <string_view>

namespace xtr {

namespace axis {
struct position {};     // how token positions enter the model
struct norm {};         // the normalisation before each sublayer and at the end
struct feedforward {};  // the position-wise feed-forward block
struct attention {};    // the token-mixing attention
struct cross_attention {};  // whether layers also attend to a context (CrossAttend)
}  // namespace axis

template <class P>
concept Policy = requires {
  typename P::axis;
  { P::name } -> std::convertible_to<std::string_view>;
};
template <class P>
concept PositionEncoding = Policy<P> && std::same_as<typename P::axis, axis::position>;
template <class P>
concept NormPolicy = Policy<P> && std::same_as<typename P::axis, axis::norm>;
template <class P>
concept FeedForwardPolicy = Policy<P> && std::same_as<typename P::axis, axis::feedforward> && requires {
  { P::gated } -> std::convertible_to<bool>;
};
template <class P>
concept AttentionPolicy = Policy<P> && std::same_as<typename P::axis, axis::attention>;
template <class P>
concept CrossAttentionPolicy = Policy<P> && std::same_as<typename P::axis, axis::cross_attention>;

}  // namespace xtr
