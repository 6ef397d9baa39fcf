#pragma once
// Layer stacks described by policies: Decoder<Policies...> (causal) and Encoder<Policies...> (bidirectional) of
// (self-attention, feed-forward) layers, (self-attention, cross-attention, feed-forward) with CrossAttend, and
// CrossAttender<Policies...> of (cross-attention, feed-forward) layers.
// Each axis takes at most one policy, in any order; a missing axis gets x-transformers' default:
//   position AbsoluteLearned, norm LayerNorm, feed-forward GELU, attention MultiHeadAttention, no cross-attention.
// Sizes are run-time values in LayersConfig (x-transformers' AttentionLayers keywords and defaults).
#include <boost/hana/find_if.hpp>
#include <boost/hana/optional.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "xtr/core/fields.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/policies/any.hpp"
#include "xtr/policies/absolute_learned.hpp"
#include "xtr/policies/attention.hpp"
#include "xtr/policies/concepts.hpp"
#include "xtr/policies/cross_attend.hpp"
#include "xtr/policies/feedforward.hpp"
#include "xtr/policies/layer_norm.hpp"
#include "xtr/policies/no_position.hpp"
#include "xtr/policies/rms_norm.hpp"
#include "xtr/policies/rotary.hpp"
#include "xtr/policies/scale_norm.hpp"
#include "xtr/policies/score_bias.hpp"
#include "xtr/policies/simple_rms_norm.hpp"

namespace xtr {

/// Which policy each Any<...> slot takes, by name ("" = x-transformers' default: AbsoluteLearned, LayerNorm, GELU,
/// NoScoreBias). A static slot accepts only its own name (or "").
struct PolicyNames {
  std::string position, norm, feedforward, score_bias;
};

/// Sizes, rates and options of a layer stack: x-transformers' AttentionLayers keywords, with their defaults.
/// x-transformers: Decoder(dim, depth, heads=8, attn_dim_head=64, attn_kv_heads=None, ff_mult=4, attn_dropout=0,
/// ff_dropout=0, rotary_emb_dim=None, pre_norm=True, sandwich_norm=False, ff_no_bias=False, ...); its rotary base is
/// fixed at 10000 (rotary_theta is xtr's, for models trained here). Each policy's options are a struct of its own
/// (policies/*.hpp) held here by value; every field is listed once, in fields() (and the policies' fields()).
struct LayersConfig {
  Index dim = 0;           // model width (required)
  Index depth = 0;         // number of (attention, feed-forward) layer pairs (required)
  Index heads = 8;         // query heads
  Index dim_head = 64;     // width of each head, independent of dim
  Index kv_heads = 0;      // key/value heads for grouped-query attention; 0 = heads
  Index ff_mult = 4;       // feed-forward inner width = ff_mult · dim
  double attn_dropout = 0;  // on the attention probabilities
  double ff_dropout = 0;    // after the feed-forward activation
  Index rotary_dim = 0;     // Rotary: rotated channels per head; 0 = dim_head / 2
  double rotary_theta = 10000;
  Index dim_context = 0;    // CrossAttend: width of the context; 0 = dim (x-transformers' cross_attn_dim_context)
  bool norm_unit_offset = true;  // norm gains stored as gain − 1, init 0 (x-transformers' norm_add_unit_offset, its
                                 // default from 1.31.3); false: the gain itself, init 1 (older checkpoints)
  bool norm_bias = false;        // LayerNorm adds a learned bias β (x-transformers before 1.27.1: nn.LayerNorm)
  bool pre_norm = true;          // false: post-norm, x ← norm(x + f(x)), and no final norm (x-transformers' pre_norm)
  bool sandwich_norm = false;    // x ← x + norm(f(norm(x))) (x-transformers' sandwich_norm; needs pre_norm)
  bool ff_no_bias = false;       // feed-forward without biases (a gated first projection keeps its own, as there)
  Rotary rotary{};               // Rotary's options: xpos, interpolation, base rescaling
  MultiHeadAttention attention{};  // qk_norm, memory keys/values, value gates, head scale, value residual
  ALiBi alibi{};                 // ALiBi's options
  RelativePositionBias rel_pos_bias{};     // RelativePositionBias's options
  DynamicPositionBias dynamic_pos_bias{};  // DynamicPositionBias's options
  PolicyNames policies{};        // the choice of each Any<...> slot

  /// The policies' options structs held above, each under its key: the one list that validation ("layers.<key>."),
  /// the checkpoint metadata (JSON "layers": {"<key>": {...}}), description parsing and the docs test iterate, so a
  /// new options struct is a member and a line here.
  static constexpr auto policy_options() {
    using L = LayersConfig;
    return std::tuple{std::pair{"rotary", &L::rotary}, std::pair{"attention", &L::attention},
                      std::pair{"alibi", &L::alibi}, std::pair{"rel_pos_bias", &L::rel_pos_bias},
                      std::pair{"dynamic_pos_bias", &L::dynamic_pos_bias}};
  }
  /// f(key, options) for each entry of policy_options(), on `config`'s structs (const or not).
  template <class Config, class F>
    requires std::is_same_v<std::remove_cvref_t<Config>, LayersConfig>
  static constexpr void for_each_policy_options(Config& config, F&& f) {
    std::apply([&](const auto&... entry) { (f(std::string_view(entry.first), config.*(entry.second)), ...); },
               policy_options());
  }

  static constexpr auto fields() {
    using L = LayersConfig;
    return std::tuple{
        field("dim", "dim", &L::dim, rules::positive, "model width"),
        field("depth", "depth", &L::depth, rules::positive, "layers"),
        field("heads", "heads", &L::heads, rules::positive, "query heads"),
        field("dim_head", "attn_dim_head", &L::dim_head, rules::positive, "width of each head"),
        field("kv_heads", "attn_kv_heads", &L::kv_heads, rules::non_negative, "key/value heads (GQA); 0 = heads"),
        field("ff_mult", "ff_mult", &L::ff_mult, rules::positive, "feed-forward inner width / dim"),
        field("attn_dropout", "attn_dropout", &L::attn_dropout, rules::probability, "dropout on the probabilities"),
        field("ff_dropout", "ff_dropout", &L::ff_dropout, rules::probability, "dropout after the activation"),
        field("rotary_dim", "rotary_emb_dim", &L::rotary_dim, rules::non_negative,
              "rotated channels per head; 0 = dim_head / 2"),
        field("rotary_theta", "", &L::rotary_theta, rules::positive_real, "rotary base θ"),
        field("dim_context", "cross_attn_dim_context", &L::dim_context, rules::non_negative,
              "CrossAttend: context width; 0 = dim"),
        field("norm_unit_offset", "norm_add_unit_offset", &L::norm_unit_offset, rules::any<bool>,
              "norm gains stored as gain − 1"),
        field("norm_bias", "", &L::norm_bias, rules::any<bool>, "LayerNorm bias β (releases before 1.27.1)"),
        field("pre_norm", "pre_norm", &L::pre_norm, rules::any<bool>, "false: post-norm, no final norm"),
        field("sandwich_norm", "sandwich_norm", &L::sandwich_norm, rules::any<bool>,
              "a second norm on each branch's output"),
        field("ff_no_bias", "ff_no_bias", &L::ff_no_bias, rules::any<bool>, "feed-forward without biases")};
  }
};

namespace detail {
template <class P>
struct axis_of {
  using type = void;
};
template <Policy P>
struct axis_of<P> {
  using type = typename P::axis;
};
template <class P, class... Options>
inline constexpr bool one_of = (std::is_same_v<P, Options> || ...);

template <class Axis, class... Ps>
inline constexpr int count_axis = (0 + ... + int(std::is_same_v<typename axis_of<Ps>::type, Axis>));

/// The policy of `Axis` among Ps, or Default.
template <class Axis, class Default, class... Ps>
struct pick_axis_impl {
  static constexpr auto found = boost::hana::find_if(boost::hana::tuple_t<Ps...>, [](auto t) {
                                  using P = typename std::decay_t<decltype(t)>::type;
                                  return boost::hana::bool_c<std::is_same_v<typename axis_of<P>::type, Axis>>;
                                }).value_or(boost::hana::type_c<Default>);
  using type = typename std::decay_t<decltype(found)>::type;
};
template <class Axis, class Default, class... Ps>
using pick_axis = typename pick_axis_impl<Axis, Default, Ps...>::type;
}  // namespace detail

/// A stack of depth pre-norm residual layers with a final norm; each layer is (self-attention if SelfAttend,
/// cross-attention if CrossAttend is among the policies, feed-forward).
template <bool Causal, bool SelfAttend, class... Policies>
struct AttentionLayers {
  static_assert((Policy<Policies> && ...),
                "xtr: every argument of Decoder<...>/Encoder<...>/CrossAttender<...> must be a policy: a position "
                "encoding, a norm, a feed-forward, an attention type or CrossAttend");
  static_assert(detail::count_axis<axis::position, Policies...> <= 1,
                "xtr: a layer stack takes one position encoding; keep one of AbsoluteLearned, Rotary, NoPosition");
  static_assert(detail::count_axis<axis::norm, Policies...> <= 1,
                "xtr: a layer stack takes one norm; keep one of LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm");
  static_assert(detail::count_axis<axis::feedforward, Policies...> <= 1,
                "xtr: a layer stack takes one feed-forward; keep one of GELU, GEGLU, SwiGLU, SiLU, ReLUSquared");
  static_assert(detail::count_axis<axis::attention, Policies...> <= 1,
                "xtr: a layer stack takes one attention policy; keep one MultiHeadAttention");
  static_assert(detail::count_axis<axis::cross_attention, Policies...> <= 1,
                "xtr: CrossAttend appears twice; name it once");
  static_assert(detail::count_axis<axis::score_bias, Policies...> <= 1,
                "xtr: a layer stack takes one score bias; keep one of ALiBi, RelativePositionBias, DynamicPositionBias");

  static constexpr bool causal = Causal;
  static constexpr bool self_attend = SelfAttend;
  static constexpr bool cross_attend = !SelfAttend || detail::count_axis<axis::cross_attention, Policies...> == 1;
  using position = detail::pick_axis<axis::position, AbsoluteLearned, Policies...>;
  using norm = detail::pick_axis<axis::norm, LayerNorm, Policies...>;
  using feedforward = detail::pick_axis<axis::feedforward, GELU, Policies...>;
  using attention = detail::pick_axis<axis::attention, MultiHeadAttention, Policies...>;
  using score_bias = detail::pick_axis<axis::score_bias, NoScoreBias, Policies...>;

  /// What this type resolved to, e.g. "Decoder<Rotary, LayerNorm, GELU, MultiHeadAttention>".
  static std::string describe() {
    const char* stack = !SelfAttend ? "CrossAttender<" : Causal ? "Decoder<" : "Encoder<";
    return std::string(stack) + std::string(position::name) + ", " + std::string(norm::name) + ", " +
           std::string(feedforward::name) + ", " + std::string(attention::name) +
           (std::is_same_v<score_bias, NoScoreBias> ? std::string() : ", " + std::string(score_bias::name)) +
           (SelfAttend && cross_attend ? ", CrossAttend>" : ">");
  }
};

/// Causal self-attention stack (x-transformers' Decoder); Decoder<..., CrossAttend> also attends to a context.
template <class... Policies>
struct Decoder : AttentionLayers<true, true, Policies...> {};

/// Bidirectional self-attention stack (x-transformers' Encoder).
template <class... Policies>
struct Encoder : AttentionLayers<false, true, Policies...> {};

/// Cross-attention-only stack: each layer attends to the context, not to its own tokens (x-transformers'
/// CrossAttender).
template <class... Policies>
struct CrossAttender : AttentionLayers<false, false, Policies...> {};

namespace detail {
/// Decoder<Ps...> with CrossAttend added unless already there (XTransformer's decoder, as x-transformers sets
/// cross_attend=True itself).
template <class Stack>
struct with_cross_attention {
  using type = Stack;
};
template <class... Ps>
  requires(count_axis<axis::cross_attention, Ps...> == 0)
struct with_cross_attention<Decoder<Ps...>> {
  using type = Decoder<Ps..., CrossAttend>;
};
}  // namespace detail

template <class L>
concept LayerStack = requires {
  { L::causal } -> std::convertible_to<bool>;
  { L::self_attend } -> std::convertible_to<bool>;
  { L::cross_attend } -> std::convertible_to<bool>;
  requires PositionEncoding<typename L::position>;
  requires NormPolicy<typename L::norm>;
  requires FeedForwardPolicy<typename L::feedforward>;
  requires AttentionPolicy<typename L::attention>;
  requires ScoreBiasPolicy<typename L::score_bias>;
};

}  // namespace xtr
