#pragma once
// xtr: transformers composed from compile-time policies, trained and sampled natively.
//
//   using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;
//   xtr::AutoregressiveWrapper model(Net({.num_tokens = 256, .max_seq_len = 1024,
//                                         .layers = {.dim = 512, .depth = 6, .heads = 8}}));
#include "xtr/core/arena.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/parameters.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/data/text_dataset.hpp"
#include "xtr/generation/sampling.hpp"
#include "xtr/io/json.hpp"
#include "xtr/io/safetensors.hpp"
#include "xtr/io/state_dict.hpp"
#include "xtr/io/x_transformers.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/policies/absolute_learned.hpp"
#include "xtr/policies/attention.hpp"
#include "xtr/policies/concepts.hpp"
#include "xtr/policies/feedforward.hpp"
#include "xtr/policies/layer_norm.hpp"
#include "xtr/policies/no_position.hpp"
#include "xtr/policies/rms_norm.hpp"
#include "xtr/policies/rotary.hpp"
#include "xtr/training/adamw.hpp"
#include "xtr/training/checkpoint.hpp"
#include "xtr/wrappers/autoregressive_wrapper.hpp"
#include "xtr/wrappers/loss.hpp"
