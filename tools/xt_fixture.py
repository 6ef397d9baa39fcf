#!/usr/bin/env python3
"""Golden fixtures from the real x-transformers, for xtr's parity tests.

For each named configuration this script builds
    AutoregressiveWrapper(TransformerWrapper(num_tokens, max_seq_len, attn_layers=Decoder(...)))
trains it briefly (Adam, random windows of a small English text embedded below), and writes ONE file
    <out>/<name>.safetensors
holding the TransformerWrapper state dict under x-transformers' own names, plus
    fixture.tokens  (I64, (B, T+1))      held-out text windows
    fixture.logits  (F32, (B, T, V))     net(tokens[:, :-1]) in eval mode
    fixture.loss    (F32, (1,))          AutoregressiveWrapper(tokens), i.e. what training minimises
    grad.<param>    (F32, like <param>)  d fixture.loss / d param, one backward from zeroed grads
    fixture.prompt  (I64, (1, 8))        first 8 tokens of row 0
    fixture.greedy  (I64, (1, 16))       generate(prompt, 16, temperature=0., cache_kv=True)
and string metadata (config JSON, versions, description, vocabulary, training settings).

Encoder configurations (kind="encoder", see make_encoder_fixture) have no AutoregressiveWrapper: TransformerWrapper(
attn_layers=Encoder(...)) is trained as a denoiser with a key-padding mask, and its file holds, besides the weights,
    fixture.tokens  (I64, (B, T))        held-out windows, CORRUPT of the positions replaced by MASK_ID
    fixture.targets (I64, (B, T))        the uncorrupted windows
    fixture.mask    (BOOL, (B, T))       True = real token; row 1's last FIXTURE_PAD positions are padding (False)
    fixture.logits  (F32, (B, T, V))     net(tokens, mask=mask) in eval mode (padded positions included)
    fixture.loss    (F32, (1,))          F.cross_entropy(logits[mask], targets[mask])
    grad.<param>    (F32, like <param>)  d fixture.loss / d param
and no prompt/greedy.

XTransformer configurations (kind="xtransformer", see make_xtransformer_fixture) are the encoder-decoder
XTransformer(**config) trained on a variable-length copy task (vocabulary 18: 0 = padding, 1 = start, 2..17 content;
tgt = [1, src[:L], src[:L]] padded with -100). Their file holds every model.state_dict() entry (encoder.*,
decoder.net.*; with tie_token_emb both embedding names, as separate equal tensors), plus
    fixture.src      (I64, (B, 12))      held-out sources, content then 0-padding; row 0 has L = 12, row 1 L < 12
    fixture.src_mask (BOOL, (B, 12))     True = real source token
    fixture.tgt      (I64, (B, 25))      [1, src[:L], src[:L]], then -100 (ignore_index)
    fixture.encoded  (F32, (B, 12, dim)) model.encoder(src, mask=src_mask, return_embeddings=True), eval mode
    fixture.logits   (F32, (B, 24, 18))  model.decoder.net(tgt[:, :-1] with -100 -> 0, context=encoded,
                                         context_mask=src_mask), eval mode
    fixture.loss     (F32, (1,))         model(src, tgt, mask=src_mask), eval mode
    grad.<param>     (F32, like <param>) d fixture.loss / d param (both names of a tied embedding: the same sum)
    fixture.greedy   (I64, (1, 24))      model.generate(src[:1], [[1]], 24, mask=src_mask[:1], temperature=0.,
                                         cache_kv=True) (new tokens only)
    fixture.greedy_nocache (I64, (1, 24)) the same with cache_kv=False (the script requires them equal)

Option decoders (OPTION_CONFIGS, merged into CONFIGS): the base decoder plus one x-transformers option each, in the
decoder format above. Where x-transformers cannot decode a config with the kv cache (net.can_cache_kv False, e.g.
memory tokens, or generate(cache_kv=True) raising), fixture.greedy comes from cache_kv=False and the `generate`
metadata says so ("cache_kv": false, "no_cache_reason"). reference_forward does not implement these options: with
--facts they get check_facts_fp64 / check_option_behaviour instead of check_facts / check_misc / check_init. A few
option configs combine several options, and one (encoder_rel_pos_bias_mask, kind "encoder", T5 bias) is an encoder:
reference_forward implements the T5 bias (t5_bucket), so it keeps check_facts (reference: True).

After writing, each file is re-read with safetensors.torch.load_file, the model is rebuilt from the
`config` metadata alone, and the forward must reproduce fixture.logits bit for bit. An independent
plain-tensor re-implementation of the forward (`reference_forward`, written from the facts this
script prints) must reproduce the logits to 1e-4 (observed <= 1.2e-5 with |logits| up to 12), and autograd through
it in float64 must reproduce every grad.* tensor: that is what "verified in code" means for the facts.

Usage:
    python3 tools/xt_fixture.py [names...|all] [--out tests/fixtures] [--facts] [--steps N]
(--steps defaults to each config's own step count: 250 for the decoders and the encoder, see CONFIGS for the
XTransformers)
Python is only a tool here: nothing in the C++ build or tests runs this script.
"""
import argparse
import importlib.metadata
import json
import math
import os

import torch
import torch.nn.functional as F

import safetensors
import safetensors.torch
from fixture_io import file_summary, write_and_reload
from x_transformers import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper, XTransformer

try:  # x-transformers warns (via loguru) that rotary dim < 32 is small; these are toy models on purpose
    from loguru import logger as _loguru
    _loguru.disable("x_transformers")
except ImportError:  # pragma: no cover
    pass

# ----------------------------------------------------------------------------------------------------------------------
# data: a small deterministic English text; the vocabulary is its sorted character set (ids < NUM_TOKENS)

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "A small model learns to spell the words it sees again and again. "
    "Every morning the baker opens the shop and sells warm bread to the people of the town. "
    "The river runs past the old mill, and the children play on the green hill by the water. "
    "She reads a book by the window while the rain falls on the quiet street. "
    "We write the same sentences many times, so the network can remember them well. "
)
HELD_OUT_TEXT = (
    "The old baker reads the book by the river while the children sell bread on the hill. "
    "In the morning the quick dog runs to the mill and the fox sleeps by the warm window. "
)
NUM_TOKENS = 64
VOCAB = "".join(sorted(set(TRAIN_TEXT + HELD_OUT_TEXT)))
assert len(VOCAB) <= NUM_TOKENS, len(VOCAB)
STOI = {c: i for i, c in enumerate(VOCAB)}

MAX_SEQ_LEN = 32
SEED = 1234
BATCH = 2          # fixture batch
SEQ = 24           # fixture T (tokens hold T+1)
PROMPT = 8
GREEDY = 16
TRAIN = dict(steps=250, lr=3e-3, batch=16, window=MAX_SEQ_LEN, optimizer="torch.optim.Adam (default betas/eps)")


def encode(s):
    return [STOI[c] for c in s]


def decode(ids):
    return "".join(VOCAB[i] if i < len(VOCAB) else "?" for i in ids)


# ----------------------------------------------------------------------------------------------------------------------
# configurations: `config` is exactly the constructor keywords (attn_layers carries its class under "type")

CONFIGS = {
    "decoder_rotary_layernorm": dict(
        config={"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN,
                "attn_layers": {"type": "Decoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                                "rotary_pos_emb": True}},
        description="Decoder, rotary positions (rotary dim = dim_head // 2), default pre-LayerNorm (gain stored as "
                    "gamma = gain - 1), GELU feed-forward (mult 4, with biases), untied to_logits.",
    ),
    "decoder_absolute_rmsnorm_swiglu": dict(
        config={"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN,
                "attn_layers": {"type": "Decoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                                "use_rmsnorm": True, "ff_glu": True, "ff_swish": True}},
        description="Decoder, learned absolute positions (scaled by dim ** -0.5), pre-RMSNorm (gain stored as "
                    "g = gain - 1), SwiGLU feed-forward (inner dim = 4 * dim, proj rows [value; gate]).",
    ),
    "decoder_rotary_gqa_geglu": dict(
        config={"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN,
                "attn_layers": {"type": "Decoder", "dim": 32, "depth": 2, "heads": 4, "attn_kv_heads": 2,
                                "attn_dim_head": 16, "rotary_pos_emb": True, "ff_glu": True}},
        description="Decoder, rotary positions, grouped-query attention (4 query heads, 2 kv heads; query head i "
                    "uses kv head i % kv_heads), default pre-LayerNorm, GEGLU feed-forward (exact-erf GELU gate).",
    ),
    "decoder_noposition_rmsnorm_geglu": dict(
        config={"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN, "use_abs_pos_emb": False,
                "attn_layers": {"type": "Decoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                                "use_rmsnorm": True, "ff_glu": True}},
        description="Decoder without any position encoding (use_abs_pos_emb=False, no rotary: order comes from the "
                    "causal mask alone), pre-RMSNorm (gain stored as g = gain - 1), GEGLU feed-forward.",
    ),
    # an Encoder has no AutoregressiveWrapper: see make_encoder_fixture for what is trained and exported
    "encoder_rotary_layernorm_mask": dict(
        kind="encoder",
        config={"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN,
                "attn_layers": {"type": "Encoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                                "rotary_pos_emb": True}},
        description="Encoder (bidirectional), rotary positions, default pre-LayerNorm, GELU feed-forward; trained as "
                    "a denoiser (some inputs replaced by MASK_ID, every non-padded position predicts the original "
                    "token) with a key-padding mask (True = real token, False = padding).",
    ),
    # the encoder-decoder XTransformer: see make_xtransformer_fixture; `config` is XTransformer's own keywords
    "xtransformer_copy_tied": dict(
        kind="xtransformer",
        steps=600,
        config={"dim": 32, "tie_token_emb": True,
                "enc_num_tokens": 18, "enc_depth": 2, "enc_heads": 2, "enc_attn_dim_head": 16, "enc_max_seq_len": 12,
                "dec_num_tokens": 18, "dec_depth": 2, "dec_heads": 2, "dec_attn_dim_head": 16,
                "dec_max_seq_len": 25},
        description="XTransformer (encoder-decoder) on a variable-length copy task; tied token embedding (the "
                    "decoder's token_emb IS the encoder's), learned absolute positions in both stacks, default "
                    "pre-LayerNorm, GELU feed-forward; decoder layers are [self-attention, cross-attention, "
                    "feed-forward] per block.",
    ),
    "xtransformer_rotary_rmsnorm_gqa": dict(
        kind="xtransformer",
        steps=1500,
        config={"dim": 32, "tie_token_emb": False,
                "enc_num_tokens": 18, "enc_depth": 2, "enc_heads": 4, "enc_attn_dim_head": 8, "enc_max_seq_len": 12,
                "enc_rotary_pos_emb": True, "enc_use_rmsnorm": True,
                "dec_num_tokens": 18, "dec_depth": 2, "dec_heads": 4, "dec_attn_kv_heads": 2, "dec_attn_dim_head": 8,
                "dec_max_seq_len": 25, "dec_rotary_pos_emb": True, "dec_use_rmsnorm": True, "dec_ff_glu": True},
        description="XTransformer (encoder-decoder) on a variable-length copy task; untied token embeddings, rotary "
                    "positions in both stacks (rotary dim = dim_head // 2 = 4; none in cross-attention), "
                    "pre-RMSNorm, encoder GELU feed-forward, decoder GEGLU feed-forward, decoder grouped-query "
                    "attention (4 query heads, 2 kv heads) in self- AND cross-attention.",
    ),
}


def option_decoder(attn=None, wrapper=None, depth=2):
    """The base decoder of the option fixtures (num_tokens 64, max_seq_len 32, dim 32, depth 2, heads 2, attn_dim_head
    16, everything else x-transformers' default) plus one option: `attn` are Decoder keywords, `wrapper`
    TransformerWrapper keywords (placed before attn_layers, as in decoder_noposition_rmsnorm_geglu)."""
    return {"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN, **(wrapper or {}),
            "attn_layers": {"type": "Decoder", "dim": 32, "depth": depth, "heads": 2, "attn_dim_head": 16,
                            **(attn or {})}}


# one decoder per x-transformers option, on top of the base decoder above (default pre-LayerNorm, GELU feed-forward,
# learned absolute positions unless the option turns them off). `reference: False`: the plain-tensor
# reference_forward does not implement the option, so --facts skips its checks for these files and runs only
# check_facts_fp64 (x-transformers' own model in float64 vs the fixture's float32 logits, loss and grads).
OPTION_CONFIGS = {
    "decoder_alibi": dict(
        config=option_decoder({"alibi_pos_bias": True, "alibi_num_heads": 1}),
        description="Decoder with ALiBi on 1 of 2 heads (alibi_num_heads=1): head 0 adds -slope * |i - j| to its "
                    "attention logits, slope 2 ** -8 (x-transformers' slope list for 1 head), head 1 has no bias; "
                    "the learned absolute position embedding stays on (x-transformers only disables it for "
                    "rotary / T5 relative bias); slopes are a non-persistent buffer (not in the file).",
    ),
    "decoder_rel_pos_bias": dict(
        config=option_decoder({"rel_pos_bias": True}),
        description="Decoder with T5 relative position bias (rel_pos_bias=True, defaults: 32 buckets, max distance "
                    "128, causal bucketing: distances 0..15 exact, then log buckets; lengths <= 32 reach buckets "
                    "0..21): one table attn_layers.rel_pos.relative_attention_bias.weight (buckets, heads) shared by "
                    "all layers, multiplied by dim_head ** 0.5 and added to the scaled logits; no absolute positions.",
    ),
    "decoder_dynamic_pos_bias": dict(
        config=option_decoder({"dynamic_pos_bias": True}),
        description="Decoder with dynamic position bias (dynamic_pos_bias=True): an MLP Linear(1, dim // 4), SiLU, "
                    "Linear(8, 8), SiLU, Linear(8, heads) of the relative position i - j (as a float) gives a "
                    "per-head bias added to the attention logits, shared by all layers (attn_layers.rel_pos.mlp.*); "
                    "the learned absolute position embedding stays on.",
    ),
    "decoder_rotary_xpos": dict(
        config=option_decoder({"rotary_pos_emb": True, "rotary_xpos": True}),
        description="Decoder with xPos rotary (rotary_xpos=True, scale_base 512): rotary as decoder_rotary_layernorm, "
                    "and q / k rotated dims multiplied by scale ** (+-(pos - n // 2) / 512) with the persistent "
                    "buffer attn_layers.rotary_pos_emb.scale = (arange(0, rd, 2) + 0.4 rd) / (1.4 rd).",
    ),
    "decoder_rotary_interpolation": dict(
        config=option_decoder({"rotary_pos_emb": True, "rotary_interpolation_factor": 2.0}),
        description="Decoder with rotary position interpolation (rotary_interpolation_factor=2.0): rotary angles "
                    "are pos * inv_freq / 2; the inv_freq buffer is unchanged, so the factor is known only from "
                    "the config.",
    ),
    "decoder_rotary_base_rescale": dict(
        config=option_decoder({"rotary_pos_emb": True, "rotary_base_rescale_factor": 2.0}),
        description="Decoder with NTK-aware rotary base rescaling (rotary_base_rescale_factor=2.0): base = 10000 * "
                    "2 ** (rd / (rd - 2)) with rd = 8, visible in the stored inv_freq buffer.",
    ),
    "decoder_scalenorm": dict(
        config=option_decoder({"use_scalenorm": True}),
        description="Decoder with ScaleNorm everywhere (use_scalenorm=True): y = x / max(||x||, 1e-12) * sqrt(dim) "
                    "* (g + 1) with ONE scalar gain per norm, stored g = gain - 1 (shape (1,), init 0).",
    ),
    "decoder_simple_rmsnorm": dict(
        config=option_decoder({"use_simple_rmsnorm": True}),
        description="Decoder with SimpleRMSNorm everywhere (use_simple_rmsnorm=True): y = x / max(||x||, 1e-12) * "
                    "sqrt(dim), no gain at all (no norm parameters in the file).",
    ),
    "decoder_post_norm": dict(
        config=option_decoder({"pre_norm": False}),
        description="Decoder with post-norm (pre_norm=False): x = LayerNorm(x + branch(x)) after every attention "
                    "and feed-forward layer (norm stored as layers.{i}.0.2.gamma, the third norm slot), no "
                    "pre-branch norm and NO final norm (attn_layers.final_norm is Identity).",
    ),
    "decoder_sandwich_norm": dict(
        config=option_decoder({"sandwich_norm": True}),
        description="Decoder with sandwich norm (sandwich_norm=True): pre-norm as usual (layers.{i}.0.0) plus a "
                    "second LayerNorm on each branch output before the residual add (layers.{i}.0.1); final norm "
                    "kept.",
    ),
    "decoder_qk_norm": dict(
        config=option_decoder({"attn_qk_norm": True}),
        description="Decoder with cosine-sim attention (attn_qk_norm=True): q and k l2-normalised per head, logits "
                    "= 10 * q.k (qk_norm_scale 10, a constant, replaces dim_head ** -0.5); no new parameters.",
    ),
    "decoder_qk_norm_scale": dict(
        config=option_decoder({"attn_qk_norm": True, "attn_qk_norm_scale": 6}),
        description="Decoder with cosine-sim attention at a non-default scale (attn_qk_norm=True, "
                    "attn_qk_norm_scale=6): q and k l2-normalised per head, logits = 6 * q.k; no new parameters.",
    ),
    "decoder_qk_norm_dim_scale": dict(
        config=option_decoder({"attn_qk_norm": True, "attn_qk_norm_dim_scale": True}),
        description="Decoder with qk norm and learned per-dimension scales (attn_qk_norm_dim_scale=True): q, k "
                    "l2-normalised, times qk_norm_q_scale (heads, 1, dim_head) / qk_norm_k_scale (kv_heads, 1, "
                    "dim_head) (init dim_head ** 0.25, used as is), logits scaled by dim_head ** -0.5.",
    ),
    "decoder_mem_kv": dict(
        config=option_decoder({"attn_num_mem_kv": 2}),
        description="Decoder with 2 learned memory key/values per attention layer (attn_num_mem_kv=2): mem_k, mem_v "
                    "(kv_heads, 2, dim_head), init N(0, 1), prepended to every query's keys/values (always "
                    "visible, no position), not part of the kv cache.",
    ),
    "decoder_gate_values": dict(
        config=option_decoder({"attn_gate_values": True}),
        description="Decoder with gated attention values (attn_gate_values=True): the merged head outputs are "
                    "multiplied by sigmoid(to_v_gate(x)) before to_out, to_v_gate a bias-less Linear(dim, heads * "
                    "dim_head) on the (normed) attention input, zero-initialised (gate 0.5 at init).",
    ),
    "decoder_head_scale": dict(
        config=option_decoder({"attn_head_scale": True}),
        description="Decoder with per-head output scaling (attn_head_scale=True): each head's attention output is "
                    "multiplied by head_scale_params (1, heads, 1, 1), init 1, before the heads are merged.",
    ),
    "decoder_value_residual": dict(
        config=option_decoder({"add_value_residual": True}, depth=3),
        description="Decoder with value residual learning (add_value_residual=True, learned_value_residual_mix "
                    "default True), depth 3: every later attention layer's values become v1 + mix * (v - v1), v1 "
                    "the FIRST layer's values (after to_v, before any mixing), mix = sigmoid(Linear(dim, heads)(x)) "
                    "per token and head (to_value_residual_mix.0, with bias, on the normed attention input); the "
                    "first layer has no mixer. Depth 3 so that two layers read layer 0's values.",
    ),
    "decoder_relu_squared": dict(
        config=option_decoder({"ff_relu_squared": True}),
        description="Decoder with ReLU-squared feed-forward (ff_relu_squared=True): relu(x) ** 2 instead of GELU.",
    ),
    "decoder_swish": dict(
        config=option_decoder({"ff_swish": True}),
        description="Decoder with SiLU feed-forward (ff_swish=True without ff_glu): silu(x) instead of GELU, plain "
                    "(not gated) feed-forward.",
    ),
    "decoder_ff_no_bias": dict(
        config=option_decoder({"ff_no_bias": True}),
        description="Decoder whose feed-forward linears have no bias (ff_no_bias=True): only ff.0.0.weight and "
                    "ff.2.weight.",
    ),
    "decoder_tie_embedding": dict(
        config=option_decoder(wrapper={"tie_embedding": True}),
        description="Decoder with tied output embedding (TransformerWrapper tie_embedding=True): no to_logits "
                    "parameter, logits = h @ token_emb.emb.weight.T * dim ** -0.5 (tie_embedding_scale defaults to "
                    "dim ** -0.5).",
    ),
    "decoder_post_emb_norm": dict(
        config=option_decoder(wrapper={"post_emb_norm": True}),
        description="Decoder with a LayerNorm after the embedding (TransformerWrapper post_emb_norm=True): x = "
                    "LN(token_emb + pos_emb) * gamma before the layers; this norm has NO unit offset: "
                    "post_emb_norm.gamma is the gain itself, init 1 (unlike the layers' norms).",
    ),
    "decoder_l2norm_embed": dict(
        config=option_decoder(wrapper={"l2norm_embed": True}),
        description="Decoder with l2-normalised embeddings (TransformerWrapper l2norm_embed=True): x = "
                    "l2norm(token_emb[ids]) + l2norm(pos_emb[pos]) (the position embedding is NOT scaled by "
                    "dim ** -0.5 here), both tables initialised N(0, 1e-5).",
    ),
    "decoder_memory_tokens": dict(
        config=option_decoder(wrapper={"num_memory_tokens": 2}),
        description="Decoder with 2 memory tokens (TransformerWrapper num_memory_tokens=2): memory_tokens (2, dim), "
                    "init N(0, 1), prepended to the embedded sequence (after the position embedding, so they get "
                    "none) and run through the causal layers and final norm like tokens (so they see only each "
                    "other, while every token sees them), dropped before to_logits. "
                    "x-transformers cannot kv-cache this model (can_cache_kv False): greedy is uncached.",
    ),
    # sub-options and combinations (a second batch; same base decoder, format, training and checks)
    "decoder_dpb_norm_log": dict(
        config=option_decoder({"dynamic_pos_bias": True, "dynamic_pos_bias_norm": True,
                               "dynamic_pos_bias_log_distance": True, "dynamic_pos_bias_mlp_depth": 3}),
        description="Decoder with dynamic position bias and all its sub-options: log distance (the MLP input is "
                    "sign(i - j) * log(|i - j| + 1) instead of i - j), mlp depth 3 (Linear(1, 8), Linear(8, 8), "
                    "Linear(8, 8), each followed by a norm and SiLU, then Linear(8, heads)), norm: the FIRST block's "
                    "norm is x-transformers' LayerNorm (bias-less, `mlp.0.1.gamma` used as is, init 1, no unit "
                    "offset), the two later ones are torch nn.LayerNorm with weight and bias (`mlp.{1,2}.1.weight`, "
                    "`.bias`); one MLP shared by all layers (attn_layers.rel_pos.mlp.*); the learned absolute "
                    "position embedding stays on.",
    ),
    "decoder_qk_norm_groups": dict(
        config=option_decoder({"attn_qk_norm": True, "attn_qk_norm_groups": 2, "attn_qk_norm_dim_scale": True}),
        description="Decoder with grouped qk norm and learned dim scales (attn_qk_norm_groups=2, "
                    "attn_qk_norm_dim_scale=True): each head's q and k (dim_head 16) are split into 2 groups of 8 "
                    "consecutive dims, each group l2-normalised on its own (so |q| = sqrt(2) per head), then "
                    "multiplied by qk_norm_q_scale (heads, 1, 16) / qk_norm_k_scale (kv_heads, 1, 16) (init "
                    "16 ** 0.25 = 2, used as is); logits scaled by dim_head ** -0.5. x-transformers asserts "
                    "dim_head % groups == 0 and dim_head // groups > 2 (16 // 2 = 8).",
    ),
    "decoder_value_residual_fixed_gqa": dict(
        config=option_decoder({"heads": 4, "attn_kv_heads": 2, "add_value_residual": True,
                               "learned_value_residual_mix": False}, depth=3),
        description="Decoder with value residual learning at a FIXED mix (add_value_residual=True, "
                    "learned_value_residual_mix=False) and grouped-query attention (4 query heads, 2 kv heads), "
                    "depth 3: every later attention layer's values become v1.lerp(v, 0.5) = (v1 + v) / 2, v1 the "
                    "first layer's values (after to_v, per kv head, before the GQA repeat); no "
                    "to_value_residual_mix parameters; query head i uses kv head i % 2.",
    ),
    "decoder_alibi_rotary_all": dict(
        config=option_decoder({"heads": 4, "alibi_pos_bias": True, "rotary_pos_emb": True}),
        description="Decoder with ALiBi on all 4 heads (alibi_num_heads defaults to heads: slopes 2 ** -2, 2 ** -4, "
                    "2 ** -6, 2 ** -8 for heads 0..3, bias -slope * |i - j|) AND rotary positions (rotary dim 8); no "
                    "learned absolute positions (rotary turns them off). With rotary, AttentionLayers passes the "
                    "positions `pos` to every attention, so ALiBi comes from forward_custom_pos(pos) (same values "
                    "without a cache). x-transformers cannot kv-cache this model: with a cache that bias is (h, n, n) "
                    "instead of (h, 1, n) and broadcasts the one new query to n rows, which crashes the rotary of the "
                    "second layer (RuntimeError): greedy is uncached.",
    ),
    "decoder_combo": dict(
        config=option_decoder({"heads": 4, "attn_kv_heads": 1, "rotary_pos_emb": True, "rotary_xpos": True,
                               "use_rmsnorm": True, "sandwich_norm": True, "ff_glu": True, "ff_swish": True,
                               "ff_no_bias": True, "attn_qk_norm": True, "attn_gate_values": True,
                               "attn_head_scale": True},
                              wrapper={"post_emb_norm": True, "tie_embedding": True}),
        description="Decoder combining many options: 4 query heads sharing ONE kv head (attn_kv_heads=1), xPos "
                    "rotary, RMSNorm with sandwich norm (pre-norm `.0.0.g` and a norm on each branch output "
                    "`.0.1.g`, final norm kept), SwiGLU feed-forward with ff_no_bias (which removes only ff.2's "
                    "bias: the GLU projection ff.0.proj keeps its bias), qk norm (l2, fixed scale 10), gated values, "
                    "per-head output scale; wrapper: post_emb_norm (LayerNorm, gain used as is; no position "
                    "embedding to add since rotary is on) and tie_embedding (logits = h @ token_emb.T * dim ** -0.5, "
                    "no to_logits).",
    ),
    "decoder_mem_kv_t5": dict(
        config=option_decoder({"rel_pos_bias": True, "rel_pos_num_buckets": 8, "rel_pos_max_distance": 16,
                               "attn_num_mem_kv": 3}, wrapper={"num_memory_tokens": 2}),
        description="Decoder with T5 relative position bias on 8 buckets, max distance 16 (causal: distances 0..3 "
                    "exact, 4..11 in log buckets 4..6, >= 12 in bucket 7), 3 learned memory key/values per "
                    "attention layer (bias 0, always visible) and 2 memory tokens (wrapper num_memory_tokens=2) "
                    "prepended to the sequence: the T5 distances count them (text token t sits at position t + 2, "
                    "memory tokens at 0, 1); no absolute positions. x-transformers cannot kv-cache memory tokens: "
                    "greedy is uncached.",
    ),
    # an Encoder option fixture: make_encoder_fixture (denoising with key padding); reference_forward implements the
    # T5 bias, so this one keeps the independent-forward checks of check_facts
    "encoder_rel_pos_bias_mask": dict(
        kind="encoder",
        reference=True,
        config={"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN,
                "attn_layers": {"type": "Encoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                                "rel_pos_bias": True}},
        description="Encoder (bidirectional) with T5 relative position bias (rel_pos_bias=True, defaults: 32 "
                    "buckets, max distance 128), non-causal bucketing: 16 buckets per direction, bucket = 16 * "
                    "(key after query) + (d for d < 8, else 8 + floor(log(d / 8) / log(16) * 8)), d = |i - j|; "
                    "bias = table[bucket, h] * dim_head ** 0.5; no absolute positions (x-transformers turns them "
                    "off for rel_pos_bias); default pre-LayerNorm, GELU; trained as a denoiser with a key-padding "
                    "mask like encoder_rotary_layernorm_mask.",
    ),
}
for _spec in OPTION_CONFIGS.values():
    _spec.setdefault("reference", False)
CONFIGS.update(OPTION_CONFIGS)

# the encoder fixture: a denoising task with key padding
MASK_ID = NUM_TOKENS - 1    # never occurs in the text (ids >= len(VOCAB) are unused), so it marks corrupted inputs
CORRUPT = 0.2               # fraction of input positions replaced by MASK_ID (training and fixture)
PAD_MAX = 8                 # training: each row pads a random 0..PAD_MAX trailing positions
FIXTURE_PAD = 5             # fixture: row 1 pads its last 5 positions

LAYER_CLASSES = {"Decoder": Decoder, "Encoder": Encoder}


def build(config):
    """TransformerWrapper from the `config` dict alone (what a reader of the fixture has)."""
    cfg = json.loads(json.dumps(config))
    al = cfg.pop("attn_layers")
    cls = LAYER_CLASSES[al.pop("type")]
    return TransformerWrapper(**cfg, attn_layers=cls(**al))


def setup_torch():
    torch.set_num_threads(1)               # fixed reduction order: same bytes on every rerun
    torch.use_deterministic_algorithms(True)


def train_adam(module, steps, lr, step_loss):
    """`steps` Adam steps (default betas/eps) on module's parameters, in train mode; step_loss() draws a batch and
    returns its loss. Returns every step's loss."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    losses = []
    for _ in range(steps):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------------------------------------------------
# an independent plain-tensor forward, written from the facts below; it must match x-transformers to 1e-4

def t5_bucket(rel, causal, num_buckets, max_distance):
    """T5 relative position bucket of rel = key position - query position (LongTensor), as written in the T5 paper /
    x-transformers' RelativePositionBias: with n = query - key, a causal stack clamps n at 0 and uses all buckets; a
    bidirectional one uses num_buckets // 2 per direction, the upper half for keys AFTER the query (n < 0), and |n|.
    Within a direction: n < max_exact = buckets // 2 is its own bucket, larger n go to max_exact + floor(log(n /
    max_exact) / log(max_distance / max_exact) * (buckets - max_exact)), clamped to buckets - 1."""
    n = -rel
    if causal:
        nb, offset, n = num_buckets, torch.zeros_like(n), n.clamp(min=0)
    else:
        nb = num_buckets // 2
        offset, n = (n < 0).long() * nb, n.abs()
    max_exact = nb // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (nb - max_exact)).long()
    large = large.clamp(max=nb - 1)
    return offset + torch.where(n < max_exact, n, large)


def reference_forward(sd, config, tokens, gqa_map="modulo", mask=None, zero_padded_queries=True):
    """logits (B, T, V); `mask` (B, T) bool, True = real token (x-transformers' convention): padded keys get
    -finfo.max before the softmax, and the attention branch's output (after to_out) is ZEROED at padded query
    positions (Attention.forward: einx.where(mask, out, 0.)); the feed-forward branch and the logits are still
    computed there. Causal for a Decoder config. With rel_pos_bias (T5) the bias table[bucket(j - i), h] * dim_head **
    0.5 is added to the scaled logits (t5_bucket below; one table for all layers)."""
    al = config["attn_layers"]
    causal_stack = al["type"] == "Decoder"
    assert ("pos_emb.emb.weight" in sd) == (config.get("use_abs_pos_emb", True) and not al.get("rotary_pos_emb")
                                            and not al.get("rel_pos_bias"))
    dim, depth = al["dim"], al["depth"]
    H = al.get("heads", 8)
    dh = al.get("attn_dim_head", 64)
    kvh = al.get("attn_kv_heads", H)
    rms = al.get("use_rmsnorm", False)
    glu, swish = al.get("ff_glu", False), al.get("ff_swish", False)
    B, T = tokens.shape
    gain_name = "g" if rms else "gamma"

    def norm(x, stored):  # stored = gain - 1  (norm_add_unit_offset=True)
        if rms:   # F.normalize: x / max(||x||_2, 1e-12), times sqrt(dim)
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(dim) * (stored + 1.0)
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)              # biased variance, eps 1e-5, no bias term
        return (x - mu) / torch.sqrt(var + 1e-5) * (stored + 1.0)

    x = sd["token_emb.emb.weight"][tokens]                        # (B, T, dim)
    if "pos_emb.emb.weight" in sd:
        x = x + sd["pos_emb.emb.weight"][:T] * dim ** -0.5

    rot = None
    if al.get("rotary_pos_emb"):
        rd = dh // 2
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))  # (rd/2,)
        assert torch.equal(inv_freq, sd["attn_layers.rotary_pos_emb.inv_freq"])
        ang = torch.arange(T).float()[:, None] * inv_freq[None, :]          # (T, rd/2)
        rot = (rd, ang.to(x.dtype).cos(), ang.to(x.dtype).sin())      # angles in fp32, as x-transformers

    def rope(t):  # (B, h, T, dh): pairs (2i, 2i+1) of the first rd dims rotated by angle p * inv_freq[i]
        rd, c, s = rot
        a, rest = t[..., :rd], t[..., rd:]
        x0, x1 = a[..., 0::2], a[..., 1::2]
        y = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
        return torch.cat((y, rest), dim=-1)

    rel_bias = None
    if al.get("rel_pos_bias"):
        pos = torch.arange(T)
        bucket = t5_bucket(pos[None, :] - pos[:, None], causal_stack, al.get("rel_pos_num_buckets", 32),
                           al.get("rel_pos_max_distance", 128))                       # (T, T), rel = j - i
        rel_bias = sd["attn_layers.rel_pos.relative_attention_bias.weight"][bucket].permute(2, 0, 1) * dh ** 0.5

    causal = torch.ones(T, T, dtype=torch.bool).triu(1)            # (T, T): True = masked out
    if not causal_stack:
        causal = torch.zeros(T, T, dtype=torch.bool)
    masked = causal[None, None]                                     # (1 or B, 1, T, T)
    if mask is not None:
        masked = masked | ~mask[:, None, None, :]
    for l in range(depth):
        a, f = f"attn_layers.layers.{2 * l}", f"attn_layers.layers.{2 * l + 1}"
        h = norm(x, sd[f"{a}.0.0.{gain_name}"])
        q = (h @ sd[f"{a}.1.to_q.weight"].T).view(B, T, H, dh).transpose(1, 2)
        k = (h @ sd[f"{a}.1.to_k.weight"].T).view(B, T, kvh, dh).transpose(1, 2)
        v = (h @ sd[f"{a}.1.to_v.weight"].T).view(B, T, kvh, dh).transpose(1, 2)
        if rot is not None:
            q, k = rope(q), rope(k)
        idx = torch.arange(H) % kvh if gqa_map == "modulo" else torch.arange(H) // (H // kvh)
        k, v = k[:, idx], v[:, idx]
        sim = (q @ k.transpose(-1, -2)) * dh ** -0.5
        if rel_bias is not None:
            sim = sim + rel_bias
        sim = sim.masked_fill(masked, -torch.finfo(sim.dtype).max)
        o = sim.softmax(-1) @ v                                    # (B, H, T, dh)
        o = o.transpose(1, 2).reshape(B, T, H * dh)
        o = o @ sd[f"{a}.1.to_out.weight"].T
        if mask is not None and zero_padded_queries:
            o = o * mask[..., None].to(o.dtype)                   # padded queries: attention adds nothing
        x = x + o

        h = norm(x, sd[f"{f}.0.0.{gain_name}"])
        if glu:
            pj = h @ sd[f"{f}.1.ff.0.proj.weight"].T + sd[f"{f}.1.ff.0.proj.bias"]
            up, gate = pj.chunk(2, dim=-1)
            h = up * (F.silu(gate) if swish else F.gelu(gate))
        else:
            h = h @ sd[f"{f}.1.ff.0.0.weight"].T + sd[f"{f}.1.ff.0.0.bias"]
            h = F.silu(h) if swish else F.gelu(h)
        x = x + h @ sd[f"{f}.1.ff.2.weight"].T + sd[f"{f}.1.ff.2.bias"]

    x = norm(x, sd[f"attn_layers.final_norm.{gain_name}"])
    return x @ sd["to_logits.weight"].T


# ----------------------------------------------------------------------------------------------------------------------
# facts, each checked against the installed x-transformers

def check_init(name, config, out):
    """Default init of each parameter kind, measured on a widened copy of the config (tight statistics)."""
    from x_transformers.x_transformers import LayerNorm, RMSNorm
    wide = json.loads(json.dumps(config))
    wide["num_tokens"] = 512
    wide["attn_layers"]["dim"] = 256
    torch.manual_seed(0)
    net = build(wide)
    dim = 256
    lines = []

    def uniform(t, bound, what):
        t = t.detach().flatten().double()
        assert t.abs().max() <= bound * (1 + 1e-6), (what, t.abs().max().item(), bound)
        assert t.abs().max() >= 0.97 * bound, (what, t.abs().max().item(), bound)
        assert abs(t.std().item() / (bound / math.sqrt(3)) - 1) < 0.05, (what, t.std().item(), bound)

    def normal(t, std, what):
        t = t.detach().flatten().double()
        assert abs(t.std().item() / std - 1) < 0.05, (what, t.std().item(), std)
        assert t.abs().max().item() > 3.5 * std, (what, "tails too short for a normal")
        assert abs(t.mean().item()) < 0.05 * std, what

    normal(net.token_emb.emb.weight, math.sqrt(2.0 / dim), "token_emb")
    lines.append("`token_emb.emb.weight` (num_tokens, dim): kaiming_normal_, N(0, std = sqrt(2 / dim))")
    if hasattr(net.pos_emb, "emb"):
        normal(net.pos_emb.emb.weight, 1.0, "pos_emb")
        lines.append("`pos_emb.emb.weight` (max_seq_len, dim): nn.Embedding default N(0, 1); "
                     "the forward multiplies it by dim ** -0.5")
    n_lin = 0
    for mname, m in net.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            uniform(m.weight, bound, mname)
            if m.bias is not None:
                uniform(m.bias, bound, mname + ".bias")
            n_lin += 1
        if isinstance(m, (LayerNorm, RMSNorm)):
            p = m.gamma if isinstance(m, LayerNorm) else m.g
            assert torch.all(p == 0), mname
    lines.append(f"every nn.Linear ({n_lin} checked: to_q/to_k/to_v/to_out, ff, to_logits): PyTorch default, "
                 "weight and bias U(-1/sqrt(in_features), +1/sqrt(in_features)); to_q/k/v/out and to_logits have "
                 "no bias, feed-forward linears do")
    lines.append("norm gains (`gamma` for LayerNorm, `g` for RMSNorm): stored 0 at init (gain 1, unit offset)")
    acc = out.setdefault("init", [])
    acc.extend(line for line in lines if line not in acc)


def check_misc(net, model, tokens, config, out):
    """Behaviours that are easy to get wrong, each observed on the real modules."""
    from x_transformers.x_transformers import Attention, FeedForward
    lines = out.setdefault("misc", [])

    def add(line):
        if line not in lines:
            lines.append(line)

    al = config["attn_layers"]
    for m in net.modules():
        if isinstance(m, torch.nn.GELU):
            assert m.approximate == "none"
            add("GELU is exact (erf), nn.GELU(approximate='none')")
        if isinstance(m, Attention):
            assert m.scale == al.get("attn_dim_head", 64) ** -0.5 and not m.attend.flash
            add("attention: sim = q k^T * dim_head ** -0.5, causal positions j > i filled with -finfo(float32).max "
                "before softmax; einsum path (attn_flash defaults to False); q/k/v/out projections have no bias")
        if isinstance(m, FeedForward):
            lin = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
            assert lin[0].in_features == al["dim"]
            inner = lin[-1].in_features
            assert inner == 4 * al["dim"]
            add("feed-forward inner dim = int(dim * ff_mult), ff_mult 4, also for GLU variants (no 2/3 rescale); "
                "GLU proj is Linear(dim, 2 * inner) whose output splits as [value | gate] (value first): "
                "out = value * act(gate); proj_out is `ff.2` because the Sequential drops None entries and keeps "
                "Dropout at index 1")
    single = Attention(16, heads=1, dim_head=16)
    assert isinstance(single.to_out, torch.nn.Identity)
    add("with heads == 1 (and dim_out == dim) Attention has NO to_out projection (nn.Identity)")

    # the wrapper feeds all T+1 tokens to the net and drops the last logit
    seen = []
    h = net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model(tokens)
    h.remove()
    assert seen == [tokens.shape[1]], seen
    add("AutoregressiveWrapper.forward runs net on all T+1 tokens, then cross_entropy(logits[:, :-1], x[:, 1:]) "
        "(mean, ignore_index -100); not net(x[:, :-1]) (equal up to float rounding, thanks to causality)")

    # the kv cache holds keys before rotary
    if al.get("rotary_pos_emb"):
        cap = []
        attn0 = net.attn_layers.layers[0][1]
        h = attn0.to_k.register_forward_hook(lambda mod, args, res: cap.append(res))
        with torch.no_grad():
            _, inter = net(tokens, return_intermediates=True)
        h.remove()
        B, T = tokens.shape
        kvh = al.get("attn_kv_heads", al.get("heads", 8))
        k_pre = cap[0].view(B, T, kvh, -1).transpose(1, 2)
        assert torch.equal(inter.attn_intermediates[0].cached_kv[0], k_pre)
        add("kv cache (generate with cache_kv=True) stores keys BEFORE rotary; rotary is re-applied to the whole "
            "cached key sequence at every step (positions 0..n-1), the query takes the last positions")


def check_facts(name, config, sd, inputs, mask, loss_fn, logits, grads, loss_value, out):
    """inputs (B, T) and mask (B, T) or None: what fixture.logits is net(inputs, mask=mask) of; loss_fn(logits) is
    fixture.loss as a function of the logits."""
    from x_transformers.x_transformers import LayerNorm, RMSNorm, apply_rotary_pos_emb, RotaryEmbedding
    from x_transformers.attend import Attend
    al = config["attn_layers"]
    dim = al["dim"]
    facts = {}

    # parameter list
    facts["params"] = [(k, tuple(v.shape)) for k, v in sd.items()]

    # norm gain storage: y = normalize(x) * (stored + 1)
    torch.manual_seed(5)
    x = torch.randn(3, 5, dim)
    r = torch.randn(dim)
    ln = LayerNorm(dim, unit_offset=True)
    assert torch.all(ln.gamma == 0) and ln.ln.eps == 1e-5 and ln.ln.weight is None and ln.ln.bias is None
    ln.gamma.data.copy_(r)
    assert torch.allclose(ln(x), F.layer_norm(x, (dim,), eps=1e-5) * (r + 1), atol=1e-6)
    rn = RMSNorm(dim, unit_offset=True)
    assert torch.all(rn.g == 0)
    rn.g.data.copy_(r)
    rms = x.pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(rn(x), x / rms * (r + 1), atol=1e-5)
    facts["norm"] = (
        "norm_add_unit_offset=True (x-transformers 2.x default): stored gain = gain - 1, init 0. "
        "LayerNorm: y = (x - mean) / sqrt(biased var + 1e-5) * (gamma + 1), no bias, param `gamma`. "
        "RMSNorm: y = x / max(||x||_2, 1e-12) * sqrt(dim) * (g + 1), param `g` (an L2 clamp, not eps inside the sqrt)."
    )

    # rotary
    if al.get("rotary_pos_emb"):
        dh = al.get("attn_dim_head", 64)
        rd = dh // 2
        inv = sd["attn_layers.rotary_pos_emb.inv_freq"]
        assert inv.shape == (rd // 2,), inv.shape
        assert torch.equal(inv, 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd)))
        re = RotaryEmbedding(rd)
        freqs, scale = re.forward_from_seq_len(7)                       # (1, 7, rd): [f0, f0, f1, f1, ...]
        assert scale == 1.0 and freqs.shape == (1, 7, rd)
        assert torch.equal(freqs[0, :, 0::2], freqs[0, :, 1::2])
        t = torch.randn(2, 3, 7, dh)
        got = apply_rotary_pos_emb(t, freqs)
        ang = torch.arange(7).float()[:, None] * inv[None, :]
        c, s = ang.cos(), ang.sin()
        x0, x1 = t[..., 0:rd:2], t[..., 1:rd:2]
        want = torch.cat((torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), -1).flatten(-2), t[..., rd:]), -1)
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.equal(got[..., rd:], t[..., rd:])
        facts["rotary"] = (
            f"rotary dim = dim_head // 2 = {rd} (of dim_head {dh}); buffer `attn_layers.rotary_pos_emb.inv_freq` "
            f"shape ({rd // 2},) = 1 / 10000 ** (arange(0, {rd}, 2) / {rd}). Interleaved pairs: dims (2i, 2i+1) of "
            f"the first {rd} rotate by angle pos * inv_freq[i]: y[2i] = x[2i] cos - x[2i+1] sin, y[2i+1] = x[2i+1] "
            f"cos + x[2i] sin; dims {rd}..{dh - 1} pass through. Applied to q and k (k per kv head) after the head "
            f"split, positions 0..T-1; no abs pos emb when rotary is on."
        )

    # no position encoding at all
    if not al.get("rotary_pos_emb") and not config.get("use_abs_pos_emb", True):
        probe = build(config)
        assert "pos_emb.emb.weight" not in sd and not any(k.startswith("pos_emb.") for k in probe.state_dict())
        assert not isinstance(probe.pos_emb, torch.nn.Module)
        with torch.no_grad():
            assert probe.pos_emb(inputs) == 0, "pos_emb should be always(0)"
        facts["position"] = ("use_abs_pos_emb=False (and no rotary): TransformerWrapper.pos_emb is always(0), no "
                             "parameter; x = token_emb[ids] only, order comes from the causal mask alone")

    # T5 relative position bias: the buckets of t5_bucket (used by reference_forward) are x-transformers' own
    if al.get("rel_pos_bias"):
        from x_transformers.x_transformers import RelativePositionBias
        causal = al["type"] == "Decoder"
        nb, md = al.get("rel_pos_num_buckets", 32), al.get("rel_pos_max_distance", 128)
        probe = build(config)
        rp = probe.attn_layers.rel_pos
        assert isinstance(rp, RelativePositionBias) and rp.causal == causal and rp.scale == al["attn_dim_head"] ** 0.5
        assert not any(k.startswith("pos_emb.") for k in sd), "rel_pos_bias should turn the absolute positions off"
        n = 3 * md
        pos = torch.arange(n)
        rel = pos[None, :] - pos[:, None]
        got = rp._relative_position_bucket(rel, causal=causal, num_buckets=nb, max_distance=md)
        assert torch.equal(got, t5_bucket(rel, causal, nb, md))
        T = inputs.shape[1]
        used = sorted(set(t5_bucket(torch.arange(T)[None, :] - torch.arange(T)[:, None], causal, nb, md)
                          .flatten().tolist()))
        if causal:
            side = "causal: n = max(i - j, 0), all buckets"
        else:
            side = (f"bidirectional: {nb // 2} buckets per direction, buckets {nb // 2}..{nb - 1} for keys AFTER the "
                    f"query (j > i), n = |i - j|")
        facts["position"] = (
            f"T5 relative position bias (rel_pos_bias=True, {nb} buckets, max distance {md}), {side}; within a "
            f"direction n < max_exact = {(nb if causal else nb // 2) // 2} is its own bucket, larger n map to "
            f"max_exact + floor(log(n / max_exact) / log({md} / max_exact) * (buckets - max_exact)), clamped; bias[h, "
            f"i, j] = relative_attention_bias.weight[bucket, h] * dim_head ** 0.5 added to the scaled logits, one "
            f"table for all layers; no absolute position embedding. Length {T} uses buckets {used} "
            f"(x-transformers' _relative_position_bucket equals this formula for |i - j| < {n})")

    # GQA mapping, straight from Attend's repeat
    H = al.get("heads", 8)
    kvh = al.get("attn_kv_heads", H)
    if kvh != H:
        att = Attend(heads=H, causal=al["type"] == "Decoder")
        T = 4
        q = torch.randn(1, H, T, 8)
        k = torch.randn(1, kvh, T, 8)
        v = torch.randn(1, kvh, T, 8)
        o, _ = att(q, k, v)
        idx = torch.arange(H) % kvh
        o2, _ = att(q, k[:, idx], v[:, idx])
        assert torch.allclose(o, o2, atol=1e-6)
        idx_wrong = torch.arange(H) // (H // kvh)
        o3, _ = att(q, k[:, idx_wrong], v[:, idx_wrong])
        assert not torch.allclose(o, o3, atol=1e-3)
        facts["gqa"] = (f"heads {H}, kv heads {kvh}: query head i uses kv head i % {kvh} (Attend repeats "
                        f"'b kvh n d -> b (r kvh) n d'), NOT i // {H // kvh}; to_k/to_v weights are "
                        f"(kv_heads * dim_head, dim) with heads contiguous along rows")

    # the independent forward
    ref = reference_forward(sd, config, inputs, mask=mask)
    err = (ref - logits).abs().max().item()
    assert err < 1e-4, f"{name}: reference forward differs from x-transformers by {err}"
    facts["reference_forward_max_abs_err"] = err
    if kvh != H:
        bad = reference_forward(sd, config, inputs, gqa_map="block", mask=mask)
        assert (bad - logits).abs().max().item() > 1e-3, "GQA mapping check cannot discriminate"
    # the same forward in float64: how far x-transformers' own fp32 logits are from exact
    sd64 = {k: v.double() for k, v in sd.items()}
    sd64["attn_layers.rotary_pos_emb.inv_freq"] = sd["attn_layers.rotary_pos_emb.inv_freq"] \
        if "attn_layers.rotary_pos_emb.inv_freq" in sd else None
    sd64 = {k: v for k, v in sd64.items() if v is not None}
    ref64 = reference_forward(sd64, config, inputs, mask=mask)
    facts["fp32_logits_vs_fp64_max_abs_err"] = (ref64 - logits.double()).abs().max().item()
    facts["max_abs_logit"] = logits.abs().max().item()

    # gradients: autograd through the float64 reference forward vs the saved grad.* tensors
    params64 = {k: v.clone().requires_grad_(True) for k, v in sd64.items() if k != "attn_layers.rotary_pos_emb.inv_freq"}
    full = {**sd64, **params64}
    lg = reference_forward(full, config, inputs, mask=mask)
    loss64 = loss_fn(lg)
    loss64.backward()
    worst = (0.0, "")
    for k, p in params64.items():
        g = grads[k].double()
        d = (p.grad - g).abs().max().item() / max(g.abs().max().item(), 1e-30)
        worst = max(worst, (d, k))
    assert worst[0] < 1e-3, f"{name}: grad.{worst[1]} differs from fp64 reference by relative {worst[0]}"
    facts["grad_vs_fp64_worst_rel_err"] = worst
    facts["loss_vs_fp64_abs_err"] = abs(loss64.item() - loss_value)

    facts["to_logits"] = ("`to_logits` = LinearNoBias(dim, num_tokens): weight (num_tokens, dim), no bias, separate "
                          "from token_emb (tie_embedding=False), applied to attn_layers.final_norm output")
    out[name] = facts


# ----------------------------------------------------------------------------------------------------------------------

def cache_support(net, model, prompt):
    """(True, None) if AutoregressiveWrapper.generate really decodes `net` with the kv cache; else (False, why).
    generate(cache_kv=True) silently decodes WITHOUT a cache when net.can_cache_kv is False (memory tokens), and
    may assert or raise for other options: both are reported, and the fixture then records uncached greedy."""
    if not net.can_cache_kv:
        why = ("net.can_cache_kv is False" + (f" (num_memory_tokens = {net.num_memory_tokens} > 0)"
                                              if net.num_memory_tokens > 0 else "") +
               ": AutoregressiveWrapper.generate ignores cache_kv=True and recomputes the whole sequence each step")
        return False, why
    try:
        model.generate(prompt, 2, temperature=0., cache_kv=True)
    except Exception as e:  # an assert or error inside x-transformers' cached path
        return False, f"generate(cache_kv=True) raises {type(e).__name__}: {e}"
    return True, None


def check_option_behaviour(name, config, weights, tokens):
    """The claims of an option config's description, asserted on the real modules (a model rebuilt from `config` and
    the saved weights, and a fresh one for init values). Returns the lines print_facts shows."""
    from x_transformers.x_transformers import (AlibiPositionalBias, DynamicPositionBias, LayerNorm,
                                               RelativePositionBias, ReluSquared, ScaleNorm, SimpleRMSNorm)
    al, lines = config["attn_layers"], []
    torch.manual_seed(0)
    fresh = build(config)
    net = build(config)
    net.load_state_dict(weights, strict=True)
    net.eval()
    x_in = tokens[:, :-1]
    dim, dh, H = al["dim"], al["attn_dim_head"], al["heads"]
    attns = [blk for (_, blk, _), t in zip(net.attn_layers.layers, net.attn_layers.layer_types) if t == "a"]
    ffs = [blk for (_, blk, _), t in zip(net.attn_layers.layers, net.attn_layers.layer_types) if t == "f"]
    has_abs = "pos_emb.emb.weight" in weights
    n_mem_tok = config.get("num_memory_tokens", 0)
    lines.append(f"learned absolute position embedding: {'present' if has_abs else 'absent'}")

    def attend_inputs(inp):
        """(q, k, v, attn_bias) each attention layer hands to its Attend (after qk norm / rotary / mem kv), for
        net(inp)."""
        seen = []
        hooks = [a.attend.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append((*args[:3], kwargs.get("attn_bias"))), with_kwargs=True)
            for a in attns]
        with torch.no_grad():
            net(inp)
        for hk in hooks:
            hk.remove()
        assert len(seen) == len(attns)
        return seen

    if al.get("alibi_pos_bias"):
        rp = net.attn_layers.rel_pos
        na = al.get("alibi_num_heads", H)
        assert math.log2(na).is_integer()
        slopes = [2.0 ** (-8.0 * (h + 1) / na) for h in range(na)]      # power-of-two head counts
        assert isinstance(rp, AlibiPositionalBias) and has_abs == (not al.get("rotary_pos_emb"))
        assert rp.slopes.flatten().tolist() == slopes, rp.slopes
        b = rp(5, 5)
        d = (torch.arange(5)[:, None] - torch.arange(5)[None, :]).abs().float()
        assert b.shape == (H, 5, 5)
        for h in range(H):
            assert torch.equal(b[h], -d * slopes[h] if h < na else torch.zeros(5, 5))
        if na == 1 and H == 2:
            lines.append("ALiBi, alibi_num_heads=1 of 2: bias[h=0] = -|i - j| * 2 ** -8, bias[h=1] = 0 (the "
                         "un-ALiBi'd heads are the LAST ones, zero-padded); abs pos emb kept")
        else:
            lines.append(f"ALiBi on {na} of {H} heads: bias[h] = -|i - j| * slope[h], slopes " +
                         ", ".join(f"2 ** {math.log2(x):g}" for x in slopes) +
                         (f", heads {na}..{H - 1} zero" if na < H else "") +
                         ("; abs pos emb kept" if has_abs else "; no abs pos emb (rotary turns it off)"))
        if al.get("rotary_pos_emb"):
            # rotary makes AttentionLayers pass `pos` to every attention: ALiBi then comes from forward_custom_pos
            T = x_in.shape[1]
            custom = rp.forward_custom_pos(torch.arange(T))
            assert torch.equal(custom, rp(T, T)), "forward_custom_pos(arange) should equal the plain ALiBi bias"
            for _, _, _, ab in attend_inputs(x_in):
                assert torch.equal(ab, custom)
            try:
                AutoregressiveWrapper(net).generate(x_in[:1, :PROMPT], 2, temperature=0., cache_kv=True)
                crashed = None
            except RuntimeError as e:
                crashed = str(e)
            assert (crashed is not None) == (al["depth"] >= 2), crashed
            lines.append("ALiBi + rotary: AttentionLayers computes pos = arange(cache length + n) for rotary and passes "
                         "it to every attention, which then takes ALiBi from forward_custom_pos(pos): the same (h, n, "
                         "n) values as without rotary in a full forward (asserted on the Attend inputs). With the kv "
                         "cache that bias is (h, cache + 1, cache + 1) instead of (h, 1, cache + 1): the one new query "
                         "is broadcast to cache + 1 rows, so the first layer outputs cache + 1 tokens and the second "
                         "layer's rotary fails (RuntimeError: " + (crashed or "")[:80] + "); at depth 1 the last row "
                         "happens to be right. Greedy is therefore uncached")
    if al.get("rel_pos_bias"):
        rp = net.attn_layers.rel_pos
        nb, md = al.get("rel_pos_num_buckets", 32), al.get("rel_pos_max_distance", 128)
        assert isinstance(rp, RelativePositionBias) and rp.scale == dh ** 0.5 and rp.causal and not has_abs
        assert rp.num_buckets == nb and rp.max_distance == md
        n = torch.arange(MAX_SEQ_LEN + n_mem_tok)
        buckets = rp._relative_position_bucket(-n, causal=True, num_buckets=nb, max_distance=md)
        assert torch.equal(buckets, t5_bucket(-n, True, nb, md))
        me = nb // 2
        assert buckets[:me].tolist() == list(range(me)), buckets
        b = rp(4, 4)
        tab = weights["attn_layers.rel_pos.relative_attention_bias.weight"]
        assert torch.equal(b[:, 3, 1], tab[2] * dh ** 0.5)                      # query 3, key 1: distance 2
        if (nb, md) == (32, 128):
            lines.append(f"T5 bias: bucket(distance) = distance for 0..15, then 16 + floor(log(d / 16) / log(8) * 16), "
                         f"max bucket at distance 31 is {int(buckets.max())}; bias[h, i, j] = table[bucket(i - j), h] "
                         f"* dim_head ** 0.5; one table for all layers; no abs pos emb")
        else:
            first = {}
            for d, bk in enumerate(buckets.tolist()):
                first.setdefault(bk, d)
            lines.append(f"T5 bias, {nb} buckets, max distance {md}: bucket(d) = d for d < {me}, then {me} + "
                         f"floor(log(d / {me}) / log({md} / {me}) * {nb - me}) clamped to {nb - 1}; first distance of "
                         f"each bucket: " + ", ".join(f"{bk}: {d}" for bk, d in sorted(first.items())) +
                         f"; bias[h, i, j] = table[bucket(i - j), h] * dim_head ** 0.5; one table for all layers; "
                         f"no abs pos emb")
    if al.get("dynamic_pos_bias"):
        rp = net.attn_layers.rel_pos
        mlp_depth = al.get("dynamic_pos_bias_mlp_depth", 2)
        use_norm, log_d = al.get("dynamic_pos_bias_norm", False), al.get("dynamic_pos_bias_log_distance", False)
        assert isinstance(rp, DynamicPositionBias) and has_abs
        assert len(rp.mlp) == mlp_depth + 1 and rp.log_distance == log_d
        b = rp(4, 4)
        P = "attn_layers.rel_pos.mlp"

        def mlp(dist):          # from the saved weights alone, written from the description
            h = torch.tensor([[math.copysign(math.log(abs(dist) + 1), dist) if log_d else float(dist)]])
            for i in range(mlp_depth):
                h = h @ weights[f"{P}.{i}.0.weight"].T + weights[f"{P}.{i}.0.bias"]
                if use_norm and i == 0:
                    h = F.layer_norm(h, (h.shape[-1],), eps=1e-5) * weights[f"{P}.0.1.gamma"]
                elif use_norm:
                    h = F.layer_norm(h, (h.shape[-1],), weights[f"{P}.{i}.1.weight"], weights[f"{P}.{i}.1.bias"],
                                     eps=1e-5)
                h = F.silu(h)
            return (h @ weights[f"{P}.{mlp_depth}.weight"].T + weights[f"{P}.{mlp_depth}.bias"])[0]

        for i, j in ((3, 1), (3, 3), (3, 0)):
            assert torch.allclose(b[:, i, j], mlp(i - j), atol=1e-6), (i, j)
        if not (use_norm or log_d or mlp_depth != 2):
            lines.append("dynamic bias: bias[h, i, j] = MLP(float(i - j))[h] (Linear(1, 8), SiLU, Linear(8, 8), SiLU, "
                         "Linear(8, heads)), no scale; abs pos emb kept; the last Linear's bias adds a per-head "
                         "constant to every logit of a row, so softmax ignores it and its exact gradient is 0")
        else:
            if use_norm:
                fr = fresh.attn_layers.rel_pos.mlp
                assert type(fr[0][1]).__name__ == "LayerNorm" and not isinstance(fr[0][1], torch.nn.LayerNorm)
                assert not fr[0][1].unit_offset and torch.all(fr[0][1].gamma == 1)
                for i in range(1, mlp_depth):
                    assert isinstance(fr[i][1], torch.nn.LayerNorm) and fr[i][1].bias is not None
                    assert torch.all(fr[i][1].weight == 1) and torch.all(fr[i][1].bias == 0)
            lines.append("dynamic bias: bias[h, i, j] = MLP(" +
                         ("sign(i - j) * log(|i - j| + 1)" if log_d else "float(i - j)") + ")[h], the MLP = " +
                         f"{mlp_depth} blocks [Linear(1 or 8, 8)" + (", norm" if use_norm else "") + ", SiLU] then "
                         "Linear(8, heads); no scale; abs pos emb kept" +
                         ("; norms: block 0 x-transformers LayerNorm (`mlp.0.1.gamma` as is, init 1, no bias, no unit "
                          "offset), later blocks torch nn.LayerNorm (`mlp.{i}.1.weight` init 1, `.bias` init 0), "
                          "eps 1e-5" if use_norm else "") +
                         " (checked from the saved weights at i - j = 2, 0, 3); the last Linear's bias is a per-head "
                         "constant, so its exact gradient is 0")
    if al.get("rotary_pos_emb"):
        re = net.attn_layers.rotary_pos_emb
        rd = dh // 2
        base = 10000 * al.get("rotary_base_rescale_factor", 1.0) ** (rd / (rd - 2))
        assert torch.equal(re.inv_freq, 1.0 / (base ** (torch.arange(0, rd, 2).float() / rd)))
        assert re.interpolation_factor == al.get("rotary_interpolation_factor", 1.0)
        freqs, scale = re(torch.arange(6))
        assert torch.allclose(freqs[0, :, 0::2], torch.arange(6).float()[:, None] * re.inv_freq / re.interpolation_factor)
        if al.get("rotary_xpos"):
            assert torch.allclose(re.scale, (torch.arange(0, rd, 2) + 0.4 * rd) / (1.4 * rd))
            want = re.scale[None, :] ** ((torch.arange(6) - 3).float()[:, None] / 512)
            assert torch.allclose(scale[0, :, 0::2], want) and "attn_layers.rotary_pos_emb.scale" in weights
            lines.append("xPos: q rotated dims * scale ** ((pos - n // 2) / 512), k * the inverse (n = current "
                         "length, which cancels in q.k); `scale` is a persistent buffer")
        else:
            assert scale == 1.0
        lines.append(f"rotary inv_freq = 1 / base ** (arange(0, {rd}, 2) / {rd}), base = {base:.6g}; angles = pos * "
                     f"inv_freq / {re.interpolation_factor}")
    norms = [m for m in net.modules() if isinstance(m, (LayerNorm, ScaleNorm, SimpleRMSNorm))]
    if al.get("use_scalenorm"):
        assert all(isinstance(m, ScaleNorm) and m.g.shape == (1,) and m.unit_offset for m in norms)
        xx = torch.randn(3, dim)
        m = norms[0]
        assert torch.allclose(m(xx), F.normalize(xx, dim=-1) * dim ** 0.5 * (m.g + 1), atol=1e-6)
        lines.append("ScaleNorm: y = x / max(||x||, 1e-12) * sqrt(dim) * (g + 1), g shape (1,), init 0")
    if al.get("use_simple_rmsnorm"):
        assert norms and all(isinstance(m, SimpleRMSNorm) for m in norms) and not any("norm" in k for k in weights)
        xx = torch.randn(3, dim)
        assert torch.allclose(norms[0](xx), F.normalize(xx, dim=-1) * dim ** 0.5)
        lines.append("SimpleRMSNorm: y = x / max(||x||, 1e-12) * sqrt(dim), no parameter")
    if al.get("pre_norm") is False:
        assert type(net.attn_layers.final_norm).__name__ == "Identity"
        assert all(n[0] is None and n[1] is None and n[2] is not None for n, _, _ in net.attn_layers.layers)
        lines.append("post-norm: only norm slot 2 (layers.{i}.0.2, applied to x + branch(x)); final_norm is Identity")
    if al.get("sandwich_norm"):
        assert all(n[0] is not None and n[1] is not None and n[2] is None for n, _, _ in net.attn_layers.layers)
        assert type(net.attn_layers.final_norm).__name__ != "Identity"
        lines.append("sandwich: slots 0 (pre) and 1 (on the branch output, before the residual add); final norm kept")
    if al.get("attn_qk_norm"):
        for a in attns:
            if al.get("attn_qk_norm_dim_scale"):
                assert a.attend.scale == dh ** -0.5
            else:
                assert a.attend.scale == al.get("attn_qk_norm_scale", 10) and a.qk_norm_q_scale == 1
        groups = al.get("attn_qk_norm_groups", 1)
        assert all(a.qk_norm_groups == groups for a in attns)
        if groups > 1:
            assert dh % groups == 0 and dh // groups > 2 and not al.get("rotary_pos_emb")
            B, T = x_in.shape
            for a, (q, k, _, _) in zip(attns, attend_inputs(x_in)):
                qn = (q / a.qk_norm_q_scale).reshape(B, H, T, groups, dh // groups).norm(dim=-1)
                kn = (k / a.qk_norm_k_scale).reshape(B, k.shape[1], T, groups, dh // groups).norm(dim=-1)
                assert torch.allclose(qn, torch.ones_like(qn), atol=1e-5)
                assert torch.allclose(kn, torch.ones_like(kn), atol=1e-5)
                whole = (q / a.qk_norm_q_scale).norm(dim=-1)
                assert torch.allclose(whole, torch.full_like(whole, math.sqrt(groups)), atol=1e-5)
        if al.get("attn_qk_norm_dim_scale"):
            fa = [m for m in fresh.modules() if type(m).__name__ == "Attention"][0]
            assert torch.all(fa.qk_norm_q_scale == dh ** 0.25) and fa.qk_norm_q_scale.shape == (H, 1, dh)
            if groups == 1:
                lines.append(f"qk norm + dim scale: q = l2norm(q) * q_scale, k = l2norm(k) * k_scale (init dim_head "
                             f"** 0.25 = {dh ** 0.25:g}), logits * dim_head ** -0.5")
            else:
                lines.append(f"grouped qk norm + dim scale: each head's q, k split into {groups} groups of "
                             f"{dh // groups} consecutive dims, each group l2-normalised on its own (checked on the "
                             f"Attend inputs: every group has norm 1 before the scale, each head sqrt({groups})), then "
                             f"* q_scale / k_scale (init dim_head ** 0.25 = {dh ** 0.25:g}), logits * dim_head ** -0.5")
        else:
            scale = al.get("attn_qk_norm_scale", 10)
            lines.append(f"qk norm: q, k l2-normalised per head, logits = {scale} * q.k (constant qk_norm_scale)")
    if al.get("attn_num_mem_kv"):
        with torch.no_grad():
            _, inter = net(x_in, return_intermediates=True)
        T = x_in.shape[1] + n_mem_tok
        nm = al["attn_num_mem_kv"]
        assert all(i.cached_kv[0].shape[-2] == T for i in inter.attn_intermediates)
        if not n_mem_tok and not al.get("rel_pos_bias"):
            lines.append("memory kv: concatenated in front of the keys/values after the kv cache is taken (the cache "
                         "holds only the T real keys)")
        else:
            for a, (q, k, v, ab) in zip(attns, attend_inputs(x_in)):
                assert k.shape[-2] == nm + T and torch.equal(k[:, :, :nm], a.mem_k[None].expand(k.shape[0], -1, -1, -1))
                if al.get("rel_pos_bias"):
                    assert ab.shape == (H, T, nm + T) and torch.all(ab[..., :nm] == 0)
                    assert torch.equal(ab[..., nm:], net.attn_layers.rel_pos(T, T))
            lines.append(f"memory kv ({nm}): mem_k / mem_v concatenated in front of the keys/values after the kv cache "
                         f"is taken (the cache holds only the {T} sequence keys" +
                         (f", memory tokens included" if n_mem_tok else "") + ")" +
                         ("; the T5 bias is zero-padded on the left for them (bias 0, always visible), and computed "
                          f"as rel_pos({T}, {T}) over the whole sequence" + (" INCLUDING the memory tokens (text token "
                                                                             f"t at position t + {n_mem_tok})"
                                                                             if n_mem_tok else "")
                          if al.get("rel_pos_bias") else ""))
    if al.get("attn_gate_values"):
        fa = [m for m in fresh.modules() if type(m).__name__ == "Attention"][0]
        assert isinstance(fa.to_v_gate, torch.nn.Linear) and fa.to_v_gate.bias is None
        assert torch.all(fa.to_v_gate.weight == 0)
        lines.append("gate values: to_v_gate = Linear(dim, heads * dim_head, bias=False), zero init; out = "
                     "merge(heads) * sigmoid(to_v_gate(x)) before to_out")
    if al.get("attn_head_scale"):
        fa = [m for m in fresh.modules() if type(m).__name__ == "Attention"][0]
        assert torch.all(fa.head_scale_params == 1)
        lines.append("head scale: head_scale_params (1, heads, 1, 1), init 1")
    if al.get("add_value_residual"):
        learned = al.get("learned_value_residual_mix", True)
        mixers = [not isinstance(a.to_value_residual_mix, torch.nn.Module) for a in attns]
        assert mixers == ([True] + [False] * (len(attns) - 1) if learned else [True] * len(attns)), mixers
        kvh = al.get("attn_kv_heads", H)
        captured = []
        hooks = [a.to_v.register_forward_hook(lambda mod, args, res: captured.append(res)) for a in attns]
        mix_out = []
        if learned:
            hooks += [a.to_value_residual_mix.register_forward_hook(lambda mod, args, res: mix_out.append(res))
                      for a in attns[1:]]
        with torch.no_grad():
            _, inter = net(x_in, return_intermediates=True)
        for h in hooks:
            h.remove()
        B, T = x_in.shape
        vs = [c.view(B, T, kvh, dh).transpose(1, 2) for c in captured]
        for l in range(1, len(attns)):
            if learned:
                want = vs[0] + mix_out[l - 1] * (vs[l] - vs[0])
            else:
                want = (vs[0] + vs[l]) / 2
            assert torch.allclose(inter.attn_intermediates[l].cached_kv[1], want, atol=1e-6)
        if learned:
            lines.append("value residual: layer l >= 1 uses v = v0 + sigmoid(Linear(x))[per token, head] * (v - v0), "
                         "v0 = layer 0's to_v output (also what the kv cache stores for l >= 1: the mixed values)")
        else:
            assert not any("value_residual_mix" in k for k in weights)
            lines.append(f"value residual, fixed mix (learned_value_residual_mix=False): layer l >= 1 uses v = "
                         f"v0.lerp(v, 0.5) = (v0 + v) / 2 per kv head ({kvh} kv heads, before the GQA repeat), v0 = "
                         f"layer 0's to_v output; no mixer parameters; the kv cache stores the mixed values")
    glu = al.get("ff_glu", False)
    for f in ffs:
        act = f.ff[0].act if glu else f.ff[0][-1]
        if al.get("ff_relu_squared"):
            assert isinstance(act, ReluSquared)
        elif al.get("ff_swish"):
            assert isinstance(act, torch.nn.SiLU)
        if al.get("ff_no_bias"):
            assert f.ff[-1].bias is None
            assert (f.ff[0].proj.bias is not None) if glu else (f.ff[0][0].bias is None)
    if al.get("ff_relu_squared"):
        lines.append("feed-forward activation: relu(x) ** 2 (ReluSquared), plain (not GLU), biases kept")
    elif al.get("ff_swish") and not glu:
        lines.append("feed-forward activation: nn.SiLU, plain (not GLU: ff_glu is off), biases kept")
    elif al.get("ff_swish"):
        lines.append("feed-forward: SwiGLU, ff.0.proj Linear(dim, 2 * inner) split [value | gate], value * silu(gate)")
    if al.get("ff_no_bias") and not glu:
        lines.append("feed-forward: ff.0.0 and ff.2 without bias; GELU")
    elif al.get("ff_no_bias"):
        lines.append("ff_no_bias with ff_glu: only ff.2 loses its bias; the GLU projection ff.0.proj KEEPS its bias "
                     "(GLU always builds nn.Linear(dim, 2 * inner) with bias)")
    if config.get("tie_embedding"):
        with torch.no_grad():
            h = net(x_in, return_embeddings=True)
            assert torch.allclose(net(x_in), h @ weights["token_emb.emb.weight"].T * dim ** -0.5, atol=1e-6)
        assert "to_logits.weight" not in weights
        lines.append("tied logits = h @ token_emb.emb.weight.T * dim ** -0.5 (tie_embedding_scale default)")
    if config.get("post_emb_norm") or config.get("l2norm_embed"):
        with torch.no_grad():
            _, inter = net(x_in, return_intermediates=True)
        te = weights["token_emb.emb.weight"][x_in]
        pe = weights["pos_emb.emb.weight"][:x_in.shape[1]] if has_abs else torch.zeros(())
        if config.get("post_emb_norm"):
            assert isinstance(fresh.post_emb_norm, LayerNorm) and not fresh.post_emb_norm.unit_offset
            assert torch.all(fresh.post_emb_norm.gamma == 1)
            want = F.layer_norm(te + pe * dim ** -0.5, (dim,), eps=1e-5) * weights["post_emb_norm.gamma"]
            assert torch.allclose(inter.initial_embeds, want, atol=1e-6)
            lines.append("post_emb_norm: LN(token_emb + pos_emb * dim ** -0.5) * gamma, gamma init 1 and used as is "
                         "(no unit offset, unlike the layers' norms)" if has_abs else
                         "post_emb_norm: LN(token_emb) * gamma (no position embedding: rotary), gamma init 1 and used "
                         "as is (no unit offset; even with use_rmsnorm it is a LayerNorm)")
        if config.get("l2norm_embed"):
            assert net.pos_emb.scale == 1.0
            assert fresh.token_emb.emb.weight.std().item() < 1e-4 and fresh.pos_emb.emb.weight.std().item() < 1e-4
            want = F.normalize(te, dim=-1) + F.normalize(pe, dim=-1)
            assert torch.allclose(inter.initial_embeds, want, atol=1e-6)
            lines.append("l2norm_embed: x = l2norm(token_emb[ids]) + l2norm(pos_emb[pos]) (no dim ** -0.5), both "
                         "tables init N(0, 1e-5)")
    if config.get("num_memory_tokens"):
        assert not net.can_cache_kv and net.memory_tokens.shape == (config["num_memory_tokens"], dim)
        with torch.no_grad():
            _, i1 = net(x_in, return_intermediates=True)
            _, i2 = net((x_in + 1) % len(VOCAB), return_intermediates=True)
        assert torch.equal(i1.memory_tokens, i2.memory_tokens)
        lines.append("memory tokens: prepended before the layers at sequence positions 0..m-1, so under the causal "
                     "mask they see only each other (their outputs do not depend on the text) while every token "
                     "sees all of them; can_cache_kv False (generate(cache_kv=True) silently runs uncached)")
    return lines


def check_facts_fp64(name, config, weights, loaded, out):
    """For the option configs (no reference_forward): the fixture's own model, rebuilt from `config` and the saved
    weights and run by x-transformers in float64, vs the float32 fixture.logits, fixture.loss and every grad.*.
    This bounds the fixture's float32 error (what a C++ comparison inherits); it is no independent check."""
    setup_torch()
    net64 = build(config)
    net64.load_state_dict(weights, strict=True)
    net64 = net64.double().eval()
    # DynamicPositionBias feeds its MLP float32 positions (arange(...).float(), exact integers) whatever the model
    # dtype: cast a Linear's input to its weight dtype where they differ (a no-op everywhere else)
    for m in net64.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_pre_hook(lambda mod, args: tuple(
                a.to(mod.weight.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
    # Attend computes the softmax in float32 whatever the input dtype (F.softmax(..., dtype=torch.float32)); in
    # this check it runs in float64 like everything else
    from functools import partial
    from x_transformers.attend import Attend
    for m in net64.modules():
        if isinstance(m, Attend) and isinstance(m.attn_fn, partial) and m.attn_fn.func is F.softmax:
            m.attn_fn = partial(F.softmax, dim=m.attn_fn.keywords["dim"])
    tok = loaded["fixture.tokens"]
    with torch.no_grad():
        lg64 = net64(tok[:, :-1])
    err = (lg64 - loaded["fixture.logits"].double()).abs().max().item()
    assert err < 1e-4, f"{name}: fp64 logits differ from the fp32 fixture by {err}"
    for p in net64.parameters():
        p.grad = None
    loss64 = AutoregressiveWrapper(net64)(tok)
    loss64.backward()
    worst = (0.0, "")
    top = max(p.grad.abs().max().item() for p in net64.parameters())
    zero = []   # gradients that are exactly 0 in exact arithmetic (fp64 ~1e-17): the fp32 value is rounding noise
    for k, p in net64.named_parameters():
        g = loaded["grad." + k].double()
        if p.grad.abs().max().item() < 1e-12 * top:
            assert g.abs().max().item() < 1e-5 * top, (k, g.abs().max().item())
            if g.abs().max().item() > 0:
                zero.append((k, g.abs().max().item()))
            continue
        d = (p.grad - g).abs().max().item() / max(g.abs().max().item(), 1e-30)
        worst = max(worst, (d, k))
    assert worst[0] < 1e-3, f"{name}: grad.{worst[1]} differs from fp64 by relative {worst[0]}"
    # greedy: the fp64 model's argmax at every generated position must give the same tokens
    greedy = loaded["fixture.greedy"]
    with torch.no_grad():
        full = torch.cat((loaded["fixture.prompt"], greedy), dim=-1)
        step64 = net64(full[:, :-1])[0, PROMPT - 1:]
    assert torch.equal(step64.argmax(-1), greedy[0]), f"{name}: fp64 greedy differs"
    top2 = step64.topk(2, dim=-1).values
    margin64 = (top2[:, 0] - top2[:, 1]).min().item()
    behaviour = check_option_behaviour(name, config, weights, tok)
    out[name] = {"params": [(k, tuple(v.shape)) for k, v in weights.items()], "fp64_only": True, "zero_grads": zero,
                 "behaviour": behaviour, "greedy_margin_fp64": margin64,
                 "fp32_logits_vs_fp64_max_abs_err": err, "max_abs_logit": loaded["fixture.logits"].abs().max().item(),
                 "loss_vs_fp64_abs_err": abs(loss64.item() - loaded["fixture.loss"].item()),
                 "grad_vs_fp64_worst_rel_err": worst}


def make_fixture(name, out_dir, steps, facts_out):
    spec = CONFIGS[name]
    config = spec["config"]
    setup_torch()
    torch.manual_seed(SEED)

    net = build(config)
    model = AutoregressiveWrapper(net)

    # --- brief training so weights are not near init
    data = torch.tensor(encode(TRAIN_TEXT * 4), dtype=torch.long)
    gen = torch.Generator().manual_seed(SEED)

    def step_loss():
        starts = torch.randint(0, len(data) - TRAIN["window"], (TRAIN["batch"],), generator=gen)
        return model(torch.stack([data[s: s + TRAIN["window"]] for s in starts.tolist()]))

    losses = train_adam(model, steps, TRAIN["lr"], step_loss)
    first_loss, last_loss = losses[0], losses[-1]
    print(f"[{name}] trained {steps} steps: loss {first_loss:.4f} -> {last_loss:.4f}")

    # --- fixture inputs: held-out windows
    held = encode(HELD_OUT_TEXT)
    rows = [held[0: SEQ + 1], held[len(held) // 2: len(held) // 2 + SEQ + 1]]
    tokens = torch.tensor(rows, dtype=torch.long)                      # (B, T+1)
    assert tokens.shape == (BATCH, SEQ + 1) and int(tokens.max()) < config["num_tokens"]

    # --- logits in eval mode
    model.eval()
    with torch.no_grad():
        logits = net(tokens[:, :-1])                                    # (B, T, V)
        logits_full = net(tokens)[:, :-1]                               # what the wrapper's loss sees
    assert torch.allclose(logits, logits_full, atol=1e-5), "causality: net(x)[:, :-1] != net(x[:, :-1])"

    # --- loss and gradients exactly as the wrapper computes them
    model.train()
    for p in model.parameters():
        p.grad = None
    loss = model(tokens)
    loss.backward()
    ce = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])
    assert abs(ce.item() - loss.item()) < 1e-5, (ce.item(), loss.item())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens), loss.detach()), "train vs eval loss differ (dropout should be 0)"

    # --- greedy generation, cached vs uncached
    prompt = tokens[:1, :PROMPT].clone()
    greedy_nc = model.generate(prompt, GREEDY, temperature=0., cache_kv=False)
    use_cache, no_cache_reason = cache_support(net, model, prompt)
    if use_cache:
        greedy = model.generate(prompt, GREEDY, temperature=0., cache_kv=True)
        if not torch.equal(greedy, greedy_nc):
            raise SystemExit(f"[{name}] FAIL: cache_kv=True gives {greedy.tolist()} but cache_kv=False gives "
                             f"{greedy_nc.tolist()}")
    else:
        greedy = greedy_nc
        print(f"[{name}] NOTE: greedy recorded with cache_kv=False only: {no_cache_reason}")
    with torch.no_grad():   # how close greedy came to a tie: (top1 - top2) logit at each generated step
        full = torch.cat((prompt, greedy), dim=-1)
        step_logits = net(full[:, :-1])[0, PROMPT - 1:]                  # (GREEDY, V)
        top2 = step_logits.topk(2, dim=-1).values
        assert torch.equal(step_logits.argmax(-1), greedy[0])
        margin = (top2[:, 0] - top2[:, 1]).min().item()
    print(f"[{name}] prompt {decode(prompt[0].tolist())!r} -> greedy {decode(greedy[0].tolist())!r} "
          f"(smallest top1 - top2 logit margin {margin:.3f})")

    # --- assemble
    tensors = {}
    sd = net.state_dict()
    for k, v in sd.items():
        assert not k.startswith("fixture.") and not k.startswith("grad.")
        tensors[k] = v.detach().clone().contiguous()
    for k, p in net.named_parameters():
        assert p.requires_grad and p.grad is not None, k
        tensors["grad." + k] = p.grad.detach().clone().contiguous()
    tensors["fixture.tokens"] = tokens.contiguous()
    tensors["fixture.logits"] = logits.contiguous()
    tensors["fixture.loss"] = loss.detach().reshape(1).contiguous()
    tensors["fixture.prompt"] = prompt.contiguous()
    tensors["fixture.greedy"] = greedy.to(torch.long).contiguous()
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)

    meta = {
        "config": json.dumps(config, sort_keys=False),
        "x_transformers_version": importlib.metadata.version("x-transformers"),
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "description": spec["description"],
        "vocab": VOCAB,
        "token_mapping": "id = index of the character in `vocab` (sorted character set of the texts); "
                         "ids >= len(vocab) are unused",
        "train": json.dumps({**TRAIN, "steps": steps, "seed": SEED, "first_loss": round(first_loss, 4),
                             "last_loss": round(last_loss, 4)}),
        "generate": json.dumps({"seq_len": GREEDY, "temperature": 0.0, "cache_kv": True,
                                "filter_logits_fn": "unused (greedy)"} if use_cache else
                               {"seq_len": GREEDY, "temperature": 0.0, "cache_kv": False,
                                "filter_logits_fn": "unused (greedy)", "no_cache_reason": no_cache_reason}),
        "greedy_min_margin": f"{margin:.4f}",
        "logits": "net(fixture.tokens[:, :-1]) in eval mode",
        "loss": "AutoregressiveWrapper(net)(fixture.tokens): cross_entropy(net(tokens)[:, :-1], tokens[:, 1:]), "
                "mean over B*T",
        "grads": "grad.<name> = d fixture.loss / d <name>, one backward from zeroed grads",
    }
    path = os.path.join(out_dir, f"{name}.safetensors")
    loaded, meta_back = write_and_reload(path, tensors, meta)

    # --- verify: reload, rebuild from metadata alone, forward must be bit-identical
    net2 = build(json.loads(meta_back["config"])).eval()
    weights = {k: v for k, v in loaded.items() if not k.startswith(("fixture.", "grad."))}
    net2.load_state_dict(weights, strict=True)
    with torch.no_grad():
        re_logits = net2(loaded["fixture.tokens"][:, :-1])
    if not torch.equal(re_logits, loaded["fixture.logits"]):
        raise SystemExit(f"[{name}] FAIL: forward from saved weights differs by "
                         f"{(re_logits - loaded['fixture.logits']).abs().max().item()}")
    m2 = AutoregressiveWrapper(net2)
    g2 = m2.generate(loaded["fixture.prompt"], GREEDY, temperature=0., cache_kv=use_cache)
    assert torch.equal(g2, loaded["fixture.greedy"]), "greedy from saved weights differs"

    n_params = sum(p.numel() for p in net.parameters())
    print(f"[{name}] wrote {path}: {file_summary(path)}, {n_params} params, "
          f"loss {loss.item():.6f}; reload + rebuild reproduces logits exactly")

    if facts_out is not None and not spec.get("reference", True):
        print(f"[{name}] --facts: reference_forward does not implement this option: its checks (plain-tensor "
              f"forward, fp64 autograd, init, misc) are skipped; running check_facts_fp64 (x-transformers in fp64, "
              f"option behaviour on the real modules) only")
        check_facts_fp64(name, config, {k: weights[k] for k in sd}, loaded, facts_out)
    elif facts_out is not None:
        ordered = {k: weights[k] for k in sd}                            # state_dict order
        grads = {k[len("grad."):]: v for k, v in loaded.items() if k.startswith("grad.")}
        tok = loaded["fixture.tokens"]
        check_facts(name, config, ordered, tok[:, :-1], None,
                    lambda lg: F.cross_entropy(lg.transpose(1, 2), tok[:, 1:]), loaded["fixture.logits"], grads,
                    loaded["fixture.loss"].item(), facts_out)
        check_misc(net, model, tokens, config, facts_out)
        check_init(name, config, facts_out)
    return path

def corrupt(targets, gen):
    """The denoising input: each position replaced by MASK_ID with probability CORRUPT."""
    return targets.masked_fill(torch.rand(targets.shape, generator=gen) < CORRUPT, MASK_ID)


def encoder_loss(logits, targets, mask):
    """Mean cross-entropy over the non-padded positions (mask True) of logits (B, T, V) vs targets (B, T)."""
    return F.cross_entropy(logits[mask], targets[mask])


def check_misc_encoder(net, tokens, targets, mask, config, out):
    """What x-transformers does with a key-padding mask, observed on the real model (lines go to `misc`)."""
    lines = out.setdefault("misc", [])

    def add(line):
        if line not in lines:
            lines.append(line)

    net.eval()
    B, T = tokens.shape
    pad = ~mask
    with torch.no_grad():
        full = net(tokens, mask=mask)
        # row 0 has no padding: the same as running it alone without any mask
        alone = net(tokens[:1])
        d0 = (full[:1] - alone).abs().max().item()
        assert d0 < 1e-6, d0
        # padded keys are invisible: other token ids at the padded positions change no non-padded logit
        other = tokens.clone()
        other[pad] = (other[pad] + 7) % len(VOCAB)
        changed = net(other, mask=mask)
        d_keep = (changed - full)[mask].abs().max().item()
        d_pad = (changed - full)[pad].abs().max().item()
        assert d_keep < 1e-6 and d_pad > 1e-2, (d_keep, d_pad)
        # and the mask matters: without it the non-padded logits of row 1 move
        d_nomask = (net(tokens) - full)[1][mask[1]].abs().max().item()
        assert d_nomask > 1e-2, d_nomask
        # padded queries: each attention sublayer's output (after to_out) is exactly 0 there
        outs = []
        hooks = [m.register_forward_hook(lambda mod, args, res: outs.append(res[0] if isinstance(res, tuple) else res))
                 for m in net.modules() if type(m).__name__ == "Attention"]
        net(tokens, mask=mask)
        for h in hooks:
            h.remove()
        assert len(outs) == config["attn_layers"]["depth"]
        assert all(bool((o[pad] == 0).all()) and o[mask].abs().max().item() > 1e-3 for o in outs)
        assert torch.isfinite(full).all() and full[pad].abs().max().item() > 1
        # what an implementation that masks keys only (and lets padded queries attend) would get
        sd = net.state_dict()
        keys_only = reference_forward(sd, config, tokens, mask=mask, zero_padded_queries=False)
        ko_keep = (keys_only - full)[mask].abs().max().item()
        ko_pad = (keys_only - full)[pad].abs().max().item()
        assert ko_keep < 1e-4 and ko_pad > 1e-2, (ko_keep, ko_pad)
    add(f"Encoder key-padding mask: `mask` (B, T) bool, True = real token, False = padding. (1) Keys: sim is filled "
        f"with -finfo(float32).max where mask[b, j] is False (exp -> exactly 0), so padded tokens are invisible to "
        f"every query. (2) Queries: Attention.forward ends with `einx.where('b n, b n d, -> b n d', mask, out, 0.)` "
        f"(when no kv cache): the attention sublayer's output after to_out is ZEROED at padded positions, so there "
        f"the residual stream gets only the feed-forward branches; norms, feed-forwards and logits are still "
        f"computed at padded positions (ordinary, finite logits). Observed: changing the token ids at padded "
        f"positions moves non-padded logits by {d_keep:.2g} and padded ones by {d_pad:.2g}; dropping the mask moves "
        f"row 1's non-padded logits by {d_nomask:.2g}; the unpadded row equals a maskless run to {d0:.2g}; an "
        f"implementation that masks keys only (padded queries attend normally) matches the non-padded logits to "
        f"{ko_keep:.2g} but is off by {ko_pad:.3g} at the padded ones. A loss over the non-padded positions (as "
        f"here) and its gradients do not depend on (2). Rotary positions stay 0..T-1 whatever the mask. A query row "
        f"whose keys are all masked gets a zero attention output (Attend's row_is_entirely_masked); not exercised")
    add("Encoder: no causal mask (every query attends to every non-padded key); otherwise the same layers, names and "
        "parameters as a Decoder of the same keywords")


def make_encoder_fixture(name, out_dir, steps, facts_out):
    """Encoder fixture: no AutoregressiveWrapper. Denoising: the input is the text with CORRUPT of its positions
    replaced by MASK_ID, the target is the original text at every position; rows are padded at the end with a
    key-padding mask, and the loss is the mean cross-entropy over the non-padded positions."""
    spec = CONFIGS[name]
    config = spec["config"]
    setup_torch()
    torch.manual_seed(SEED)
    net = build(config)
    W = TRAIN["window"]

    data = torch.tensor(encode(TRAIN_TEXT * 4), dtype=torch.long)
    gen = torch.Generator().manual_seed(SEED)

    def step_loss():
        starts = torch.randint(0, len(data) - W, (TRAIN["batch"],), generator=gen)
        targets = torch.stack([data[s: s + W] for s in starts.tolist()])
        inputs = corrupt(targets, gen)
        pad = torch.randint(0, PAD_MAX + 1, (TRAIN["batch"],), generator=gen)
        mask = torch.arange(W)[None, :] < (W - pad)[:, None]
        return encoder_loss(net(inputs, mask=mask), targets, mask)

    losses = train_adam(net, steps, TRAIN["lr"], step_loss)
    first_loss, last_loss = losses[0], losses[-1]
    print(f"[{name}] trained {steps} steps: loss {first_loss:.4f} -> {last_loss:.4f}")

    # --- fixture inputs: held-out windows, corrupted with a fixed generator; row 1 padded at the end
    held = encode(HELD_OUT_TEXT)
    rows = [held[0: SEQ], held[len(held) // 2: len(held) // 2 + SEQ]]
    targets = torch.tensor(rows, dtype=torch.long)                     # (B, T)
    tokens = corrupt(targets, torch.Generator().manual_seed(SEED + 1))
    mask = torch.ones(BATCH, SEQ, dtype=torch.bool)
    mask[1, SEQ - FIXTURE_PAD:] = False
    for b in range(BATCH):
        n_corrupt = int((tokens[b] == MASK_ID)[mask[b]].sum())
        assert n_corrupt >= 2, (b, n_corrupt)
    assert bool(mask.any(dim=-1).all()), "a row with every key masked"
    assert int(tokens.max()) < config["num_tokens"]

    # --- logits in eval mode
    net.eval()
    with torch.no_grad():
        logits = net(tokens, mask=mask)                                   # (B, T, V)

    # --- loss and gradients, one backward from zeroed grads (train mode; dropout is 0)
    net.train()
    for p in net.parameters():
        p.grad = None
    train_logits = net(tokens, mask=mask)
    assert torch.equal(train_logits, logits), "train vs eval logits differ (dropout should be 0)"
    loss = encoder_loss(train_logits, targets, mask)
    loss.backward()
    assert abs(encoder_loss(logits, targets, mask).item() - loss.item()) < 1e-6
    acc = (logits.argmax(-1) == targets)[mask].float().mean().item()
    acc_corrupt = (logits.argmax(-1) == targets)[mask & (tokens == MASK_ID)].float().mean().item()
    print(f"[{name}] fixture loss {loss.item():.6f}; argmax accuracy {acc:.3f} over non-padded positions, "
          f"{acc_corrupt:.3f} over the corrupted ones")

    # --- assemble
    tensors = {}
    sd = net.state_dict()
    for k, v in sd.items():
        assert not k.startswith("fixture.") and not k.startswith("grad.")
        tensors[k] = v.detach().clone().contiguous()
    for k, p in net.named_parameters():
        assert p.requires_grad and p.grad is not None, k
        tensors["grad." + k] = p.grad.detach().clone().contiguous()
    tensors["fixture.tokens"] = tokens.contiguous()
    tensors["fixture.targets"] = targets.contiguous()
    tensors["fixture.mask"] = mask.contiguous()
    tensors["fixture.logits"] = logits.contiguous()
    tensors["fixture.loss"] = loss.detach().reshape(1).contiguous()
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64, torch.bool), (k, v.dtype)

    meta = {
        "config": json.dumps(config, sort_keys=False),
        "x_transformers_version": importlib.metadata.version("x-transformers"),
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "description": spec["description"],
        "vocab": VOCAB,
        "token_mapping": "id = index of the character in `vocab` (sorted character set of the texts); "
                         f"ids >= len(vocab) are unused, except {MASK_ID} = MASK_ID marking a corrupted input",
        "train": json.dumps({**TRAIN, "steps": steps, "seed": SEED, "task": "denoising", "mask_id": MASK_ID,
                             "corrupt": CORRUPT, "pad_max": PAD_MAX, "first_loss": round(first_loss, 4),
                             "last_loss": round(last_loss, 4)}),
        "tokens": f"held-out text windows (B={BATCH}, T={SEQ}), each position replaced by MASK_ID={MASK_ID} with "
                  f"probability {CORRUPT} (torch.Generator seed {SEED + 1})",
        "targets": "the uncorrupted text windows (B, T); every position holds a real token id",
        "mask": f"BOOL (B, T) key-padding mask, True = real token (attend), False = padding: row 1's last "
                f"{FIXTURE_PAD} positions; passed as net(tokens, mask=mask)",
        "logits": "net(fixture.tokens, mask=fixture.mask) in eval mode; padded positions hold ordinary logits "
                  "(queries are not masked, only keys)",
        "loss": "F.cross_entropy(logits[mask], targets[mask]): mean over the non-padded positions (padded ones are "
                "excluded, like ignore_index)",
        "grads": "grad.<name> = d fixture.loss / d <name>, one backward from zeroed grads",
    }
    path = os.path.join(out_dir, f"{name}.safetensors")
    loaded, meta_back = write_and_reload(path, tensors, meta)

    # --- verify: reload, rebuild from metadata alone, forward must be bit-identical
    net2 = build(json.loads(meta_back["config"])).eval()
    weights = {k: v for k, v in loaded.items() if not k.startswith(("fixture.", "grad."))}
    net2.load_state_dict(weights, strict=True)
    with torch.no_grad():
        re_logits = net2(loaded["fixture.tokens"], mask=loaded["fixture.mask"])
    if not torch.equal(re_logits, loaded["fixture.logits"]):
        raise SystemExit(f"[{name}] FAIL: forward from saved weights differs by "
                         f"{(re_logits - loaded['fixture.logits']).abs().max().item()}")
    check_misc_encoder(net2, loaded["fixture.tokens"], loaded["fixture.targets"], loaded["fixture.mask"], config,
                       facts_out if facts_out is not None else {})

    n_params = sum(p.numel() for p in net.parameters())
    print(f"[{name}] wrote {path}: {file_summary(path)}, {n_params} params, "
          f"loss {loss.item():.6f}; reload + rebuild reproduces logits exactly")

    if facts_out is not None:
        ordered = {k: weights[k] for k in sd}
        grads = {k[len("grad."):]: v for k, v in loaded.items() if k.startswith("grad.")}
        tg, mk = loaded["fixture.targets"], loaded["fixture.mask"]
        check_facts(name, config, ordered, loaded["fixture.tokens"], mk, lambda lg: encoder_loss(lg, tg, mk),
                    loaded["fixture.logits"], grads, loaded["fixture.loss"].item(), facts_out)
        check_init(name, config, facts_out)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# XTransformer (encoder-decoder): a variable-length copy task

XT_VOCAB = 18          # 0 = padding (also what -100 inputs become), 1 = start/prefix token, 2..17 content
XT_PAD, XT_START, XT_FIRST = 0, 1, 2
XT_SRC = 12            # source length S (padded)
XT_TGT = 2 * XT_SRC + 1  # [1, src[:L], src[:L]] padded to 25
XT_MIN_LEN = 6         # source lengths L are uniform in [6, 12]
XT_IGNORE = -100       # XTransformer's default ignore_index (pad_value 0)
XT_FIXTURE_LENS = (12, 7)  # held-out rows: row 0 unpadded (greedy runs on it), row 1 padded
XT_GREEDY = XT_TGT - 1     # generate 24 tokens after the start token
XT_TRAIN = dict(lr=3e-3, batch=16, optimizer="torch.optim.Adam (default betas/eps)")


def xt_split(config):
    """(dim, encoder keywords, decoder keywords) with the enc_/dec_ prefixes dropped, as XTransformer splits them."""
    enc = {k[4:]: v for k, v in config.items() if k.startswith("enc_")}
    dec = {k[4:]: v for k, v in config.items() if k.startswith("dec_")}
    return config["dim"], enc, dec


def xt_tensor_notes():
    """Metadata texts every XTransformer fixture shares (this script's and tools/xt_fixture_legacy.py's)."""
    return {
        "token_mapping": f"vocabulary {XT_VOCAB}: {XT_PAD} = padding (source padding, and the decoder input where "
                         f"tgt is {XT_IGNORE}), {XT_START} = start/prefix token, {XT_FIRST}..{XT_VOCAB - 1} content",
        "src_mask": "BOOL (B, S) True = real source token; passed as mask= (encoder keys, padded encoder queries "
                    "zeroed) and as the decoder's context_mask",
        "tgt": f"I64 (B, {XT_TGT}) = [{XT_START}, src[:L], src[:L]] then {XT_IGNORE} (ignore_index)",
        "encoded": "model.encoder(src, mask=src_mask, return_embeddings=True), eval mode (after the encoder's "
                   "final norm)",
        "logits": f"model.decoder.net(tgt[:, :-1] with {XT_IGNORE} -> {XT_PAD}, context=encoded, "
                  "context_mask=src_mask), eval mode",
        "loss": "model(src, tgt, mask=src_mask), eval mode: cross_entropy(decoder logits of all 25 inputs [:, :-1], "
                f"tgt[:, 1:], ignore_index={XT_IGNORE}), mean over the non-ignored targets",
    }


def xt_copy_batch(lengths, gen):
    """src (B, S) content ids then 0-padding, src_mask (B, S) True on real tokens, tgt (B, 2S+1) = [1, src[:L],
    src[:L]] then -100."""
    B = len(lengths)
    L = torch.tensor(lengths, dtype=torch.long)
    content = torch.randint(XT_FIRST, XT_VOCAB, (B, XT_SRC), generator=gen)
    src_mask = torch.arange(XT_SRC)[None, :] < L[:, None]
    src = content.masked_fill(~src_mask, XT_PAD)
    tgt = torch.full((B, XT_TGT), XT_IGNORE, dtype=torch.long)
    for b, n in enumerate(lengths):
        tgt[b, 0] = XT_START
        tgt[b, 1:1 + n] = src[b, :n]
        tgt[b, 1 + n:1 + 2 * n] = src[b, :n]
    return src, src_mask, tgt


def xt_decoder_input(tgt):
    """What the AutoregressiveWrapper feeds the decoder: -100 replaced by pad_value 0."""
    return torch.where(tgt == XT_IGNORE, XT_PAD, tgt)


def reference_stack(sd, prefix, kw, dim, tokens, *, causal, mask=None, context=None, context_mask=None,
                    gqa_map="modulo", cross_rotary=False, norm_context=False, zero_padded_queries=True):
    """Plain-tensor TransformerWrapper(attn_layers=Encoder/Decoder(dim, **kw)) under `prefix`: the final-normed
    embeddings (B, T, dim). With `context` (B, S, dim) each block is [self-attention, cross-attention, feed-forward]
    (state dict layers 3l, 3l+1, 3l+2), else [self-attention, feed-forward] (2l, 2l+1). Rules (x-transformers
    2.31.10): pre-norm on the query stream only, the context enters to_k/to_v as is; cross-attention has no rotary
    and no causal mask, keys masked by context_mask; a query row whose keys are all masked gets a zero attention
    output; with `mask` (self keys), the self-attention output after to_out is zeroed at padded query positions.
    The wrong variants (cross_rotary, norm_context, gqa_map="block") exist to show the fixture discriminates."""
    depth = kw["depth"]
    H = kw.get("heads", 8)
    dh = kw.get("attn_dim_head", 64)
    kvh = kw.get("attn_kv_heads", H)
    rms = kw.get("use_rmsnorm", False)
    glu, swish = kw.get("ff_glu", False), kw.get("ff_swish", False)
    gain_name = "g" if rms else "gamma"
    B, T = tokens.shape
    P = prefix

    def norm(x, stored):
        if rms:
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(dim) * (stored + 1.0)
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * (stored + 1.0)

    x = sd[f"{P}token_emb.emb.weight"][tokens]
    assert (f"{P}pos_emb.emb.weight" in sd) == (kw.get("use_abs_pos_emb", True) and not kw.get("rotary_pos_emb"))
    if f"{P}pos_emb.emb.weight" in sd:
        x = x + sd[f"{P}pos_emb.emb.weight"][:T] * dim ** -0.5

    def rot_for(n):
        rd = dh // 2
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
        assert torch.equal(inv_freq, sd[f"{P}attn_layers.rotary_pos_emb.inv_freq"])
        ang = torch.arange(n).float()[:, None] * inv_freq[None, :]
        return rd, ang.to(x.dtype).cos(), ang.to(x.dtype).sin()

    def rope(t, rot):
        rd, c, s = rot
        a, rest = t[..., :rd], t[..., rd:]
        x0, x1 = a[..., 0::2], a[..., 1::2]
        y = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
        return torch.cat((y, rest), dim=-1)

    idx = torch.arange(H) % kvh if gqa_map == "modulo" else torch.arange(H) // (H // kvh)

    def attend(a, h, kv_in, masked, rot_q, rot_k, any_key):
        n = kv_in.shape[1]
        q = (h @ sd[f"{a}.1.to_q.weight"].T).view(B, T, H, dh).transpose(1, 2)
        k = (kv_in @ sd[f"{a}.1.to_k.weight"].T).view(B, n, kvh, dh).transpose(1, 2)
        v = (kv_in @ sd[f"{a}.1.to_v.weight"].T).view(B, n, kvh, dh).transpose(1, 2)
        if rot_q is not None:
            q, k = rope(q, rot_q), rope(k, rot_k)
        k, v = k[:, idx], v[:, idx]
        sim = (q @ k.transpose(-1, -2)) * dh ** -0.5
        sim = sim.masked_fill(masked, -torch.finfo(sim.dtype).max)
        o = sim.softmax(-1) @ v
        if any_key is not None:                                   # rows with every key masked: zero output
            o = o * any_key[:, None, None, None].to(o.dtype)
        o = o.transpose(1, 2).reshape(B, T, H * dh)
        return o @ sd[f"{a}.1.to_out.weight"].T

    rot = rot_for(T) if kw.get("rotary_pos_emb") else None
    self_masked = (torch.ones(T, T, dtype=torch.bool).triu(1) if causal else torch.zeros(T, T, dtype=torch.bool))
    self_masked = self_masked[None, None]
    if mask is not None:
        self_masked = self_masked | ~mask[:, None, None, :]
    per_block = 3 if context is not None else 2
    for l in range(depth):
        a = f"{P}attn_layers.layers.{per_block * l}"
        h = norm(x, sd[f"{a}.0.0.{gain_name}"])
        o = attend(a, h, h, self_masked, rot, rot, mask.any(-1) if mask is not None else None)
        if mask is not None and zero_padded_queries:
            o = o * mask[..., None].to(o.dtype)
        x = x + o
        if context is not None:
            c = f"{P}attn_layers.layers.{per_block * l + 1}"
            h = norm(x, sd[f"{c}.0.0.{gain_name}"])
            ctx = norm(context, sd[f"{c}.0.0.{gain_name}"]) if norm_context else context
            S = context.shape[1]
            cm = context_mask if context_mask is not None else torch.ones(B, S, dtype=torch.bool)
            crot_q = crot_k = None
            if cross_rotary and rot is not None:
                crot_q, crot_k = rot, rot_for(S)
            x = x + attend(c, h, ctx, ~cm[:, None, None, :], crot_q, crot_k, cm.any(-1))
        f = f"{P}attn_layers.layers.{per_block * l + per_block - 1}"
        h = norm(x, sd[f"{f}.0.0.{gain_name}"])
        if glu:
            pj = h @ sd[f"{f}.1.ff.0.proj.weight"].T + sd[f"{f}.1.ff.0.proj.bias"]
            up, gate = pj.chunk(2, dim=-1)
            h = up * (F.silu(gate) if swish else F.gelu(gate))
        else:
            h = h @ sd[f"{f}.1.ff.0.0.weight"].T + sd[f"{f}.1.ff.0.0.bias"]
            h = F.silu(h) if swish else F.gelu(h)
        x = x + h @ sd[f"{f}.1.ff.2.weight"].T + sd[f"{f}.1.ff.2.bias"]
    return norm(x, sd[f"{P}attn_layers.final_norm.{gain_name}"])


def reference_xtransformer(sd, config, src, src_mask, dec_in, **variants):
    """(encoded (B, S, dim), decoder logits (B, T, V)) from the state dict alone; `variants` go to the decoder."""
    dim, enc_kw, dec_kw = xt_split(config)
    zpq = variants.pop("zero_padded_queries", True)
    enc = reference_stack(sd, "encoder.", enc_kw, dim, src, causal=False, mask=src_mask, zero_padded_queries=zpq)
    assert "encoder.to_logits.weight" not in sd                 # return_only_embed: the encoder has no head
    h = reference_stack(sd, "decoder.net.", dec_kw, dim, dec_in, causal=True, context=enc, context_mask=src_mask,
                        **variants)
    return enc, h @ sd["decoder.net.to_logits.weight"].T


def xt_greedy_margin(model, src, src_mask, greedy):
    """Smallest (top1 - top2) logit over the greedy steps, from one uncached decoder pass over [1, greedy[:-1]]."""
    with torch.no_grad():
        enc = model.encoder(src, mask=src_mask, return_embeddings=True)
        full = torch.cat((torch.full((greedy.shape[0], 1), XT_START, dtype=torch.long), greedy), dim=-1)
        step_logits = model.decoder.net(full[:, :-1], context=enc, context_mask=src_mask)[0]   # (GREEDY, V)
        assert torch.equal(step_logits.argmax(-1), greedy[0])
        top2 = step_logits.topk(2, dim=-1).values
        margins = top2[:, 0] - top2[:, 1]
    return margins.min().item(), margins


def check_misc_xtransformer(model, config, src, src_mask, tgt, encoded, logits, out):
    """Cross-attention, padding and tied-embedding facts, each observed on the real modules and asserted (every run,
    not only with --facts); `out` is this config's facts dict, the lines go to out["xt"] (printed by --facts)."""
    from x_transformers.x_transformers import Attention
    lines = out.setdefault("xt", [])

    def add(line):
        if line not in lines:
            lines.append(line)

    dim, enc_kw, dec_kw = xt_split(config)
    model.eval()
    sd = model.state_dict()
    dec_in = xt_decoder_input(tgt)[:, :-1]
    B, S = src.shape
    depth = dec_kw["depth"]
    pad = ~src_mask

    # layout: decoder.net.attn_layers.layers.{3l} self, {3l+1} cross, {3l+2} feed-forward
    dl = model.decoder.net.attn_layers
    assert dl.layer_types == ("a", "c", "f") * depth, dl.layer_types
    for l in range(depth):
        assert isinstance(dl.layers[3 * l][1], Attention) and dl.layers[3 * l][1].causal
        assert isinstance(dl.layers[3 * l + 1][1], Attention) and not dl.layers[3 * l + 1][1].causal
    kvh = dec_kw.get("attn_kv_heads", dec_kw.get("heads", 8))
    dh = dec_kw.get("attn_dim_head", 64)
    assert sd["decoder.net.attn_layers.layers.1.1.to_k.weight"].shape == (kvh * dh, dim)
    add("decoder layout: decoder.net.attn_layers.layers.{3l} = causal self-attention, {3l+1} = cross-attention "
        "(non-causal, queries from the decoder stream, keys/values from the encoder output), {3l+2} = feed-forward; "
        "each with its own pre-norm `.0.0.gamma|g`; the cross-attention block has the same parameter names and shapes "
        "as self-attention (to_q (h*dh, dim), to_k/to_v (kv_heads*dh, dim), to_out (dim, h*dh), no biases): "
        "dec_attn_kv_heads also makes the cross-attention grouped-query (query head i uses kv head i % kv_heads)")
    assert model.encoder.to_logits is None and not any(k.startswith("encoder.to_logits") for k in sd)
    add("encoder: TransformerWrapper(return_only_embed=True): no to_logits; its output (return_embeddings=True) is "
        "AFTER encoder.attn_layers.final_norm. The decoder's cross-attention reads it as is: the cross block's "
        "pre-norm applies to the decoder stream (queries) only, never to the context")
    if config.get("tie_token_emb"):
        assert model.decoder.net.token_emb is model.encoder.token_emb
        assert "decoder.net.to_logits.weight" in sd
        add("tie_token_emb=True: decoder.net.token_emb IS encoder.token_emb (one parameter, both names in the state "
            "dict, named_parameters lists it once as encoder.token_emb.emb.weight); the decoder's to_logits stays a "
            "separate LinearNoBias (dim -> num_tokens), not tied to the embedding")

    # the reference forward reproduces encoder output and logits; the wrong variants miss
    with torch.no_grad():
        enc_ref, lg_ref = reference_xtransformer(sd, config, src, src_mask, dec_in)
    e_err = (enc_ref - encoded).abs().max().item()
    l_err = (lg_ref - logits).abs().max().item()
    assert e_err < 1e-4 and l_err < 1e-4, (e_err, l_err)
    misses = {}
    variants = {"norm_context": dict(norm_context=True)}
    if dec_kw.get("rotary_pos_emb"):
        variants["cross_rotary"] = dict(cross_rotary=True)
    if kvh != dec_kw.get("heads", 8):
        variants["gqa_block"] = dict(gqa_map="block")
    for vname, v in variants.items():
        with torch.no_grad():
            _, lg_v = reference_xtransformer(sd, config, src, src_mask, dec_in, **v)
        misses[vname] = (lg_v - logits).abs().max().item()
        assert misses[vname] > 1e-2, (vname, misses[vname])
    add(f"independent plain-tensor reference (reference_xtransformer) reproduces encoder output to {e_err:.2g} and "
        f"decoder logits to {l_err:.2g}; wrong variants miss the logits by: "
        + ", ".join(f"{k} {v:.3g}" for k, v in misses.items()))
    if dec_kw.get("rotary_pos_emb"):
        add("cross-attention has NO rotary: the decoder's rotary is applied to self-attention q/k only (x-transformers "
            "rotates cross-attention only when context_pos is passed, which XTransformer never does); rotating "
            f"cross q/k (query pos 0..T-1, key pos 0..S-1) would move the logits by {misses['cross_rotary']:.3g}")

    with torch.no_grad():
        # encoder padded query rows: the encoder's self-attention output is zeroed there (mask given)
        outs = []
        hooks = [m.register_forward_hook(lambda mod, args, res: outs.append(res[0] if isinstance(res, tuple) else res))
                 for m in model.encoder.modules() if isinstance(m, Attention)]
        enc = model.encoder(src, mask=src_mask, return_embeddings=True)
        for hk in hooks:
            hk.remove()
        assert len(outs) == enc_kw["depth"]
        assert all(bool((o[pad] == 0).all()) and o[src_mask].abs().max().item() > 1e-3 for o in outs)
        assert torch.isfinite(enc).all() and enc[pad].abs().max().item() > 1e-2
        # ... and the decoder never reads encoder rows at padded positions (masked keys)
        junk = enc.clone()
        junk[pad] = 1e3
        d_junk = (model.decoder.net(dec_in, context=junk, context_mask=src_mask) - logits).abs().max().item()
        other = src.clone()
        other[pad] = XT_FIRST + 5
        d_other = (model.decoder.net(dec_in, context=model.encoder(other, mask=src_mask, return_embeddings=True),
                                     context_mask=src_mask) - logits).abs().max().item()
        assert d_junk == 0 and d_other == 0, (d_junk, d_other)
        d_nomask = (model.decoder.net(dec_in, context=enc) - logits)[1].abs().max().item()
        assert d_nomask > 1e-2, d_nomask
        # the decoder stream is never masked: its cross- and self-attention outputs are nonzero at every position
        outs = []
        hooks = [m.register_forward_hook(lambda mod, args, res: outs.append(res[0] if isinstance(res, tuple) else res))
                 for m in model.decoder.net.attn_layers.modules() if isinstance(m, Attention)]
        model.decoder.net(dec_in, context=enc, context_mask=src_mask)
        for hk in hooks:
            hk.remove()
        assert len(outs) == 2 * depth and all(bool((o.abs().amax(-1) > 0).all()) for o in outs)
    add(f"padding: the encoder gets mask=src_mask: padded keys are invisible (-finfo.max) and the encoder's "
        f"self-attention output (after to_out) is ZEROED at padded query positions; its feed-forwards and final norm "
        f"still run there, so fixture.encoded holds ordinary nonzero rows at padded positions (max |.| "
        f"{enc[pad].abs().max().item():.3g}). The decoder gets context_mask=src_mask only for its cross-attention "
        f"keys; the decoder stream itself has no mask (no query zeroing in the decoder; -100 targets are fed as "
        f"token 0 and only ignored by the loss). Setting the encoder rows at padded positions to 1e3, or changing "
        f"the padded source ids, changes the logits by exactly {max(d_junk, d_other):g}; dropping context_mask moves "
        f"row 1's logits by {d_nomask:.3g}")

    # a source row whose mask is entirely False
    with torch.no_grad():
        m0 = src_mask.clone()
        m0[1] = False
        outs = []
        hooks = [m.register_forward_hook(lambda mod, args, res: outs.append(res[0] if isinstance(res, tuple) else res))
                 for m in model.modules() if isinstance(m, Attention)]
        enc0 = model.encoder(src, mask=m0, return_embeddings=True)
        lg0 = model.decoder.net(dec_in, context=enc0, context_mask=m0)
        for hk in hooks:
            hk.remove()
        assert torch.isfinite(enc0).all() and torch.isfinite(lg0).all()
        assert all(bool((o[1] == 0).all()) for o in outs[:enc_kw["depth"]])        # encoder self-attn, row 1
        cross = [outs[enc_kw["depth"] + 2 * l + 1] for l in range(depth)]          # decoder: a, c, a, c order
        assert all(bool((o[1] == 0).all()) and o[0].abs().max().item() > 1e-3 for o in cross)
        # row 1 = a decoder whose cross-attention contributes nothing: same as a zero context with every key visible
        lg_zero = model.decoder.net(dec_in[1:], context=torch.zeros_like(enc0[1:]),
                                    context_mask=torch.ones(1, S, dtype=torch.bool))
        assert torch.equal(lg0[1:], lg_zero), (lg0[1:] - lg_zero).abs().max().item()
        assert torch.equal(lg0[:1], logits[:1])                                   # other rows unaffected
        loss0 = model(src, tgt, mask=m0)
        assert torch.isfinite(loss0)
        g0 = model.generate(src[1:], torch.tensor([[XT_START]]), 4, mask=m0[1:], temperature=0., cache_kv=True)
        g0n = model.generate(src[1:], torch.tensor([[XT_START]]), 4, mask=m0[1:], temperature=0., cache_kv=False)
        assert torch.equal(g0, g0n)
        # the reference implements the rule
        _, lg0_ref = reference_xtransformer(sd, config, src, m0, dec_in)
        e0 = (lg0_ref - lg0).abs().max().item()
        assert e0 < 1e-4, e0
    add(f"an all-False src_mask row: no NaN, nothing uniform. Every encoder self-attention row of it is entirely "
        f"masked (Attend's row_is_entirely_masked -> output 0, and the query zeroing too), so its encoder output is "
        f"final_norm of the embeddings passed through the feed-forwards only; every decoder cross-attention output "
        f"for that row is exactly 0 (row_is_entirely_masked again): its logits are bit-identical to a decoder run "
        f"with an all-zero context and every key visible (to_k/to_v/to_out have no bias, so zero values give zero). "
        f"Other rows are unchanged bit for bit; loss and greedy (cached = uncached) are finite/defined; the reference "
        f"with the zero-row rule matches to {e0:.2g}")


def make_xtransformer_fixture(name, out_dir, steps, facts_out):
    """XTransformer fixture: the copy task src -> [1, src, src] with variable source lengths and key padding."""
    spec = CONFIGS[name]
    config = spec["config"]
    setup_torch()
    torch.manual_seed(SEED)
    model = XTransformer(**config)
    dim, enc_kw, dec_kw = xt_split(config)
    assert enc_kw["num_tokens"] == dec_kw["num_tokens"] == XT_VOCAB
    assert enc_kw["max_seq_len"] == XT_SRC and dec_kw["max_seq_len"] == XT_TGT

    # --- training
    gen = torch.Generator().manual_seed(SEED)

    def step_loss():
        lengths = torch.randint(XT_MIN_LEN, XT_SRC + 1, (XT_TRAIN["batch"],), generator=gen).tolist()
        src, src_mask, tgt = xt_copy_batch(lengths, gen)
        return model(src, tgt, mask=src_mask)

    losses = train_adam(model, steps, XT_TRAIN["lr"], step_loss)
    first_loss, last_loss = losses[0], losses[-1]
    ema = None
    for value in losses:
        ema = value if ema is None else 0.95 * ema + 0.05 * value
    print(f"[{name}] trained {steps} steps: loss {first_loss:.4f} -> {last_loss:.4f} (running mean {ema:.4f})")

    # --- held-out rows (another generator): row 0 unpadded, row 1 padded
    src, src_mask, tgt = xt_copy_batch(list(XT_FIXTURE_LENS), torch.Generator().manual_seed(SEED + 1))
    B = len(XT_FIXTURE_LENS)
    assert bool(src_mask[0].all()) and not bool(src_mask[1].all())
    dec_in = xt_decoder_input(tgt)

    model.eval()
    with torch.no_grad():
        encoded = model.encoder(src, mask=src_mask, return_embeddings=True)            # (B, S, dim)
        logits = model.decoder.net(dec_in[:, :-1], context=encoded, context_mask=src_mask)   # (B, T, V)
        logits_full = model.decoder.net(dec_in, context=encoded, context_mask=src_mask)[:, :-1]
    assert encoded.shape == (B, XT_SRC, dim) and logits.shape == (B, XT_TGT - 1, XT_VOCAB)
    assert torch.allclose(logits, logits_full, atol=1e-5), "causality: net(x)[:, :-1] != net(x[:, :-1])"

    # --- loss and gradients: eval mode, one backward from zeroed grads
    for p in model.parameters():
        p.grad = None
    loss = model(src, tgt, mask=src_mask)
    loss.backward()
    ce = F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=XT_IGNORE)
    assert abs(ce.item() - loss.item()) < 1e-5, (ce.item(), loss.item())
    model.train()
    with torch.no_grad():
        assert torch.equal(model(src, tgt, mask=src_mask), loss.detach()), "train vs eval loss differ"
    model.eval()
    valid = tgt[:, 1:] != XT_IGNORE
    acc = (logits.argmax(-1) == tgt[:, 1:])[valid].float().mean().item()

    # --- greedy, cached and uncached
    start = torch.tensor([[XT_START]], dtype=torch.long)
    greedy = model.generate(src[:1], start, XT_GREEDY, mask=src_mask[:1], temperature=0., cache_kv=True)
    greedy_nc = model.generate(src[:1], start, XT_GREEDY, mask=src_mask[:1], temperature=0., cache_kv=False)
    assert greedy.shape == (1, XT_GREEDY), greedy.shape                                 # new tokens only
    if not torch.equal(greedy, greedy_nc):
        raise SystemExit(f"[{name}] FAIL: cache_kv=True gives {greedy.tolist()} but cache_kv=False gives "
                         f"{greedy_nc.tolist()}")
    margin, _ = xt_greedy_margin(model, src[:1], src_mask[:1], greedy)
    n_right = int((greedy[0] == tgt[0, 1:]).sum())
    print(f"[{name}] fixture loss {loss.item():.6f}; argmax accuracy {acc:.3f} over the non-ignored targets; greedy "
          f"{greedy[0].tolist()} ({n_right}/{XT_GREEDY} equal to the target), min top1 - top2 margin {margin:.3f}")

    # --- assemble
    tensors = {}
    sd = model.state_dict()
    for k, v in sd.items():
        assert not k.startswith("fixture.") and not k.startswith("grad.")
        tensors[k] = v.detach().clone().contiguous()                 # clone: tied names become separate tensors
    for k, p in model.named_parameters(remove_duplicate=False):    # both names of a tied parameter
        assert p.requires_grad and p.grad is not None, k
        tensors["grad." + k] = p.grad.detach().clone().contiguous()
    tensors["fixture.src"] = src.contiguous()
    tensors["fixture.src_mask"] = src_mask.contiguous()
    tensors["fixture.tgt"] = tgt.contiguous()
    tensors["fixture.encoded"] = encoded.contiguous()
    tensors["fixture.logits"] = logits.contiguous()
    tensors["fixture.loss"] = loss.detach().reshape(1).contiguous()
    tensors["fixture.greedy"] = greedy.to(torch.long).contiguous()
    tensors["fixture.greedy_nocache"] = greedy_nc.to(torch.long).contiguous()
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64, torch.bool), (k, v.dtype)

    meta = {
        "config": json.dumps(config, sort_keys=False),
        "x_transformers_version": importlib.metadata.version("x-transformers"),
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "description": spec["description"],
        **xt_tensor_notes(),
        "train": json.dumps({**XT_TRAIN, "steps": steps, "seed": SEED, "task": "copy", "src_len": XT_SRC,
                             "min_len": XT_MIN_LEN, "tgt_len": XT_TGT, "first_loss": round(first_loss, 4),
                             "last_loss": round(last_loss, 4)}),
        "src": f"I64 (B, {XT_SRC}) held-out sources (torch.Generator seed {SEED + 1}), lengths "
               f"{list(XT_FIXTURE_LENS)}: content ids then {XT_PAD}-padding",
        "grads": "grad.<name> = d fixture.loss / d <name>, one backward from zeroed grads, eval mode; both names of "
                 "a tied parameter carry the same (summed) gradient",
        "generate": json.dumps({"call": f"model.generate(src[:1], [[{XT_START}]], {XT_GREEDY}, mask=src_mask[:1], "
                                        "temperature=0., cache_kv=True)", "returns": "new tokens only",
                                "seq_len": XT_GREEDY, "temperature": 0.0}),
        "greedy_min_margin": f"{margin:.4f}",
    }
    path = os.path.join(out_dir, f"{name}.safetensors")
    loaded, meta_back = write_and_reload(path, tensors, meta)

    # --- verify: reload, rebuild from the config metadata alone, bit-identical encoder output, logits, loss, greedy
    torch.manual_seed(0)                                             # a different init: everything must come from the file
    model2 = XTransformer(**json.loads(meta_back["config"])).eval()
    weights = {k: v for k, v in loaded.items() if not k.startswith(("fixture.", "grad."))}
    model2.load_state_dict(weights, strict=True)
    s2, m2, t2 = loaded["fixture.src"], loaded["fixture.src_mask"], loaded["fixture.tgt"]
    with torch.no_grad():
        re_enc = model2.encoder(s2, mask=m2, return_embeddings=True)
        re_logits = model2.decoder.net(xt_decoder_input(t2)[:, :-1], context=re_enc, context_mask=m2)
        re_loss = model2(s2, t2, mask=m2)
    for what, a, b in (("encoded", re_enc, loaded["fixture.encoded"]), ("logits", re_logits, loaded["fixture.logits"]),
                       ("loss", re_loss.reshape(1), loaded["fixture.loss"])):
        if not torch.equal(a, b):
            raise SystemExit(f"[{name}] FAIL: {what} from saved weights differs by {(a - b).abs().max().item()}")
    g2 = model2.generate(s2[:1], torch.tensor([[XT_START]]), XT_GREEDY, mask=m2[:1], temperature=0., cache_kv=True)
    assert torch.equal(g2, loaded["fixture.greedy"]), "greedy from saved weights differs"
    for p in model2.parameters():
        p.grad = None
    model2(s2, t2, mask=m2).backward()
    for k, p in model2.named_parameters(remove_duplicate=False):
        assert torch.equal(p.grad, loaded["grad." + k]), f"grad.{k} from saved weights differs"
    check_misc_xtransformer(model2, config, s2, m2, t2, loaded["fixture.encoded"], loaded["fixture.logits"],
                            facts_out.setdefault(name, {}) if facts_out is not None else {})

    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] wrote {path}: {file_summary(path)}, {n_params} params, loss {loss.item():.6f}; "
          f"reload + rebuild reproduces encoded, logits, loss, grads and greedy exactly")

    if facts_out is not None:
        check_facts_xtransformer(name, config, {k: weights[k] for k in sd},
                                 {k[len("grad."):]: v for k, v in loaded.items() if k.startswith("grad.")},
                                 s2, m2, t2, loaded["fixture.logits"], loaded["fixture.loss"].item(), facts_out)
    return path


def check_facts_xtransformer(name, config, sd, grads, src, src_mask, tgt, logits, loss_value, out):
    """Parameter list; the reference forward in fp32 and fp64; fp64 autograd through it vs every grad.*."""
    facts = out.setdefault(name, {})
    facts["params"] = [(k, tuple(v.shape)) for k, v in sd.items()]
    dec_in = xt_decoder_input(tgt)[:, :-1]
    target = tgt[:, 1:]
    _, ref = reference_xtransformer(sd, config, src, src_mask, dec_in)
    facts["reference_forward_max_abs_err"] = (ref - logits).abs().max().item()
    assert facts["reference_forward_max_abs_err"] < 1e-4
    buffers = {k for k in sd if k.endswith("rotary_pos_emb.inv_freq")}
    leaves = {k: v.double().clone().requires_grad_(True) for k, v in sd.items() if k not in buffers}
    full = {**{k: sd[k] for k in buffers}, **leaves}
    tied = config.get("tie_token_emb", False)
    if tied:   # one parameter under two names: let both names read the same leaf, so its grad is the sum
        full["decoder.net.token_emb.emb.weight"] = full["encoder.token_emb.emb.weight"]
    _, lg = reference_xtransformer(full, config, src, src_mask, dec_in)
    facts["fp32_logits_vs_fp64_max_abs_err"] = (lg.detach() - logits.double()).abs().max().item()
    facts["max_abs_logit"] = logits.abs().max().item()
    loss64 = F.cross_entropy(lg.transpose(1, 2), target, ignore_index=XT_IGNORE)
    loss64.backward()
    facts["loss_vs_fp64_abs_err"] = abs(loss64.item() - loss_value)
    worst = (0.0, "")
    for k in grads:
        leaf = full[k]
        g = grads[k].double()
        d = (leaf.grad - g).abs().max().item() / max(g.abs().max().item(), 1e-30)
        worst = max(worst, (d, k))
    assert worst[0] < 1e-3, f"{name}: grad.{worst[1]} differs from fp64 reference by relative {worst[0]}"
    if tied:
        assert torch.equal(grads["encoder.token_emb.emb.weight"], grads["decoder.net.token_emb.emb.weight"])
    facts["grad_vs_fp64_worst_rel_err"] = worst


def print_facts(facts):
    print("\n## Facts verified against the installed x-transformers\n")
    for name in CONFIGS:
        if name not in facts:
            continue
        f = facts[name]
        print(f"### {name}\n")
        print(f"config: `{json.dumps(CONFIGS[name]['config'])}`\n")
        print("| name | shape |\n|---|---|")
        for k, s in f["params"]:
            print(f"| `{k}` | {s} |")
        print()
        if f.get("fp64_only"):
            print(f"- no independent forward for this option (reference_forward does not implement it); "
                  f"x-transformers' own model in fp64 vs the fp32 fixture: logits max |diff| = "
                  f"{f['fp32_logits_vs_fp64_max_abs_err']:.3g} (max |logit| = {f['max_abs_logit']:.3g}); loss "
                  f"{f['loss_vs_fp64_abs_err']:.3g}; grad.* worst max|diff| / max|grad| = "
                  f"{f['grad_vs_fp64_worst_rel_err'][0]:.3g} (grad.{f['grad_vs_fp64_worst_rel_err'][1]}); the fp64 "
                  f"argmax reproduces fixture.greedy (min top1 - top2 margin in fp64 {f['greedy_margin_fp64']:.4g})")
            for line in f["behaviour"]:
                print(f"- {line}")
            for k, v in f["zero_grads"]:
                print(f"- grad.{k} is 0 in exact arithmetic (fp64: < 1e-12 of the largest gradient); the fp32 "
                      f"fixture holds rounding noise up to {v:.2g}: compare it with an absolute tolerance")
            print()
            continue
        for key in ("norm", "position", "rotary", "gqa", "to_logits"):
            if key in f:
                print(f"- {key}: {f[key]}")
        print(f"- independent plain-tensor forward (fp32) vs x-transformers logits: max |diff| = "
              f"{f['reference_forward_max_abs_err']:.3g}; max |logit| = {f['max_abs_logit']:.3g}")
        print(f"- x-transformers fp32 logits vs the same forward in fp64: max |diff| = "
              f"{f['fp32_logits_vs_fp64_max_abs_err']:.3g}; loss vs fp64: {f['loss_vs_fp64_abs_err']:.3g}")
        print(f"- grad.* vs autograd through the fp64 reference: worst max|diff| / max|grad| = "
              f"{f['grad_vs_fp64_worst_rel_err'][0]:.3g} (grad.{f['grad_vs_fp64_worst_rel_err'][1]})\n")
        for line in f.get("xt", []):       # XTransformer configs: cross-attention facts
            print(f"- {line}")
        if f.get("xt"):
            print()
    if "init" in facts:
        print("### default init (measured on a dim-256 copy of each config)\n")
        for line in facts["init"]:
            print(f"- {line}")
    if "misc" in facts:
        print("\n### other behaviours (observed on the real modules)\n")
        for line in facts["misc"]:
            print(f"- {line}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=["all"], help=f"config names or 'all': {', '.join(CONFIGS)}")
    ap.add_argument("--out", default="tests/fixtures", help="output folder (default tests/fixtures)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"Adam steps before export (default: the config's own, {TRAIN['steps']} unless CONFIGS says)")
    ap.add_argument("--facts", action="store_true", help="check and print the facts the C++ side must match")
    args = ap.parse_args(argv)
    names = list(CONFIGS) if (not args.names or "all" in args.names) else args.names
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown config {n!r}; known: {', '.join(CONFIGS)}")
    facts = {} if args.facts else None
    makers = {"encoder": make_encoder_fixture, "xtransformer": make_xtransformer_fixture}
    for n in names:
        make = makers.get(CONFIGS[n].get("kind"), make_fixture)
        steps = args.steps if args.steps is not None else CONFIGS[n].get("steps", TRAIN["steps"])
        make(n, args.out, steps, facts)
    if facts is not None:
        print_facts(facts)


if __name__ == "__main__":
    main()
