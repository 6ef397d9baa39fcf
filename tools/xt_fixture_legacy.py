#!/usr/bin/env python3
"""Golden fixtures from OLD x-transformers releases (legacy norm / rotary / to_logits conventions).

Run it under the PYTHONPATH of one installed release, never touching the system x-transformers, e.g.

    python3 -m pip install --no-deps --target /tmp/xt_1_26_6 x-transformers==1.26.6
    PYTHONPATH=/tmp/xt_1_26_6 python3 tools/xt_fixture_legacy.py all --out tests/fixtures

(einops and torch come from the system; a release needing something else gets it --no-deps in the same --target.)
For each named config it builds TransformerWrapper(num_tokens, max_seq_len, attn_layers=Decoder(...)) with that
release, moves every norm gain and norm bias (and the LayerNorm `beta` buffer of 1.27.0) away from its init with small
random values, and writes ONE file
    <out>/legacy_<version>_<name>.safetensors
holding the state dict under that release's own names, plus
    fixture.tokens  (I64, (2, 16))     held-out text windows (T+1 = max_seq_len)
    fixture.logits  (F32, (2, 15, 40)) net(tokens[:, :-1]) in eval mode
    fixture.loss    (F32, (1,))        AutoregressiveWrapper(net)(tokens)
    fixture.prompt  (I64, (1, 8))      first 8 tokens of row 0
    fixture.greedy  (I64, (1, 8))      generate(prompt, 8, temperature=0., cache_kv=True), new tokens only
and string metadata: `config` (x-transformers keywords, `attn_layers` names its class in "type"),
`x_transformers_version`, `conventions` (JSON: what the names mean, see CONVENTIONS below), torch/safetensors
versions, description, vocab, perturbation, generate, greedy_min_margin, logits, loss. No gradients, no training.

Before accepting a file the script checks, on the real modules of the release it runs under:
- the state dict names, the norm parameters' default init and the norm formula match the convention table below;
- the file reloads bit-exactly, a model rebuilt from the `config` metadata alone reproduces fixture.logits bit for bit
  and fixture.greedy exactly; greedy with and without the kv cache agree;
- an independent plain-tensor forward written from the convention (`reference_forward`) reproduces the logits to 1e-4,
  and the same forward with any single convention flipped (gain offset, norm bias ignored, rotary layout, rotary dim,
  to_logits bias ignored) misses them by > 1e-2, so a wrong importer cannot pass.

XTransformer configs (kind "xtransformer", names xtransformer_*; not part of `all`) build
XTransformer(**config) with that release instead (copy-task data of tools/xt_fixture.py: vocabulary 18, 0 = padding,
1 = start token, 2..17 content), perturb the norms of both stacks the same way and write
    <out>/legacy_<version>_<name>.safetensors
holding the XTransformer's state dict under that release's names (both names of a tied embedding), plus
    fixture.src (I64, (2, 12)), fixture.src_mask (BOOL, (2, 12)), fixture.tgt (I64, (2, 25)),
    fixture.encoded (F32, (2, 12, 32)) model.encoder(src, mask=src_mask, return_embeddings=True), eval
    fixture.logits  (F32, (2, 24, 18)) model.decoder.net(tgt[:, :-1] with -100 -> 0, context=encoded,
                                       context_mask=src_mask), eval
    fixture.loss    (F32, (1,))        model(src, tgt, mask=src_mask), eval
    fixture.greedy  (I64, (1, 24))     model.generate(src[:1], [[1]], 24, mask=src_mask[:1], temperature=0.,
                                       cache_kv=True), new tokens only (cache_kv=False must agree)
with the same checks (bit-exact reload and rebuild, an independent encoder-decoder reference forward to 1e-4, every
single wrong convention missing by > 1e-2) and the cross-attention / padding facts of the release observed on its
real modules (metadata `facts`).

Releases 1.27.1 .. 1.30.23 choose their LayerNorm at import time from torch.__version__ (torch >= 2.1:
partial(nn.LayerNorm, bias=False), `.weight`; older torch: their own LayerNorm, `.gamma` + persistent buffer `.beta`).
--pretend-torch V imports the release while torch.__version__ reads V (restored right after the import), so with
V = 2.0.1 the release's own code builds the torch < 2.1 layout; the file is then named
    <out>/legacy_<version>_torch<V>_<name>.safetensors
with metadata `release_torch_version` = V, and before writing the script re-imports the release under the real torch
(importlib.reload) and checks that the normal model, given `.gamma` as `.weight`, reproduces the forward with every
`beta` at 0 (then it re-imports it under V again).

Usage:
    PYTHONPATH=/tmp/xt_X python3 tools/xt_fixture_legacy.py [names...|all] [--out DIR] [--expect-version V]
        [--pretend-torch V]
`all` means the decoder configs only (as before, now including alibi_layernorm); name the xtransformer_* configs
explicitly.
Python is only a tool here: nothing in the C++ build or tests runs this script.
"""
import argparse
import importlib
import importlib.metadata
import json
import math
import os
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)   # old releases use torch.cuda.amp.autocast

import torch
import torch.nn.functional as F

import safetensors
import safetensors.torch
from fixture_io import file_summary, write_and_reload

# --pretend-torch V: the release is imported while torch.__version__ reads V (restored right after the import). Releases
# 1.27.1 .. 1.30.23 choose their LayerNorm at import time, `if version.parse(torch.__version__) >= version.parse(
# '2.1.0'): LayerNorm = partial(nn.LayerNorm, bias = False)`, else their own LayerNorm with a `gamma` parameter and a
# persistent `beta` buffer: with V < 2.1 the release's own code builds the layout a torch < 2.1 user saved. Parsed
# before argparse because the import below must already see it.
REAL_TORCH_VERSION = torch.__version__
PRETEND_TORCH = None
for _i, _arg in enumerate(sys.argv):
    if _arg == "--pretend-torch" and _i + 1 < len(sys.argv):
        PRETEND_TORCH = sys.argv[_i + 1]
    elif _arg.startswith("--pretend-torch="):
        PRETEND_TORCH = _arg.split("=", 1)[1]
if PRETEND_TORCH:
    import einops  # noqa: F401  (imported before the pretence: nothing but the release reads it)
    import packaging.version  # noqa: F401
    torch.__version__ = PRETEND_TORCH
try:
    import x_transformers
    from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper, XTransformer
finally:
    torch.__version__ = REAL_TORCH_VERSION
RELEASE_TORCH_VERSION = str(PRETEND_TORCH or REAL_TORCH_VERSION)   # what the release saw when it was imported

try:  # newer releases warn (via loguru) about small rotary dims
    from loguru import logger as _loguru
    _loguru.disable("x_transformers")
except ImportError:  # pragma: no cover
    pass

# ----------------------------------------------------------------------------------------------------------------------
# data: the held-out text of tools/xt_fixture.py, same vocabulary (sorted character set of both texts there)

HELD_OUT_TEXT = (
    "The old baker reads the book by the river while the children sell bread on the hill. "
    "In the morning the quick dog runs to the mill and the fox sleeps by the warm window. "
)
VOCAB = " ,.AEISTWabcdefghijklmnopqrstuvwxyz"            # == tools/xt_fixture.py VOCAB (35 characters)
STOI = {c: i for i, c in enumerate(VOCAB)}
NUM_TOKENS = 40
MAX_SEQ_LEN = 16
BATCH, SEQ, PROMPT, GREEDY = 2, MAX_SEQ_LEN - 1, 8, 8   # tokens hold T+1 = 16 = max_seq_len
SEED = 1234
PERTURB = dict(gain_std=0.25, bias_std=0.2)


def encode(s):
    return [STOI[c] for c in s]


def decode(ids):
    return "".join(VOCAB[i] if i < len(VOCAB) else "?" for i in ids)


# ----------------------------------------------------------------------------------------------------------------------
# configurations. Rotary needs attn_dim_head >= 32 before 1.42.18: the rotary dim is max(dim_head // 2, 32) there and
# a rotary dim larger than dim_head crashes the forward, so the rotary config uses dim_head 32 (full-head rotary).

def _cfg(**al):
    return {"num_tokens": NUM_TOKENS, "max_seq_len": MAX_SEQ_LEN,
            "attn_layers": {"type": "Decoder", "dim": 32, "depth": 1, "heads": 2, **al}}


CONFIGS = {
    "rotary_layernorm": dict(
        config=_cfg(attn_dim_head=32, rotary_pos_emb=True),
        description="Decoder, rotary positions, default LayerNorm, GELU feed-forward."),
    "absolute_layernorm_geglu": dict(
        config=_cfg(attn_dim_head=16, ff_glu=True),
        description="Decoder, learned absolute positions, default LayerNorm, GEGLU feed-forward."),
    "absolute_rmsnorm_swiglu": dict(
        config=_cfg(attn_dim_head=16, use_rmsnorm=True, ff_glu=True, ff_swish=True),
        description="Decoder, learned absolute positions, RMSNorm, SwiGLU feed-forward."),
    "alibi_layernorm": dict(
        config=_cfg(heads=4, attn_dim_head=16, alibi_pos_bias=True, alibi_num_heads=2),
        description="Decoder, ALiBi on the first 2 of 4 heads (alibi_num_heads=2: slopes 2 ** -4, 2 ** -8; heads 2, "
                    "3 unbiased), learned absolute positions kept (ALiBi does not turn them off), default LayerNorm, "
                    "GELU feed-forward."),
}
LAYER_CLASSES = {"Decoder": Decoder}


def build(config):
    cfg = json.loads(json.dumps(config))
    al = cfg.pop("attn_layers")
    cls = LAYER_CLASSES[al.pop("type")]
    return TransformerWrapper(**cfg, attn_layers=cls(**al))


def vtuple(v):
    return tuple(int(x) for x in v.split(".")[:3])


# ----------------------------------------------------------------------------------------------------------------------
# the convention table (read from the sources of every tagged release 1.20.0 .. 2.16.1 and 2.31.10, and checked here
# on the real modules of the release this script runs under)

def conventions(version, torch_version):
    v = vtuple(version)
    torch_ge_2_1 = vtuple(torch_version.split("+")[0]) >= (2, 1, 0)
    if v == (1, 31, 2):
        raise SystemExit("x-transformers 1.31.2 cannot build a Decoder without use_layerscale "
                         "(partial(None, unit_offset=1.) -> TypeError); it has no usable default convention")
    c = {}
    # LayerNorm (the default norm)
    if v < (1, 27, 0):
        c["layernorm"] = dict(cls="torch.nn.LayerNorm(dim)", gain="weight", bias="bias", bias_kind="parameter",
                              offset=0.0, init="weight 1, bias 0")
    elif v == (1, 27, 0) or (v < (1, 31, 0) and not torch_ge_2_1):
        c["layernorm"] = dict(cls="x_transformers LayerNorm: F.layer_norm(x, (dim,), gamma, beta)", gain="gamma",
                              bias="beta", bias_kind="persistent buffer (in the state dict, never trained)",
                              offset=0.0, init="gamma 1, beta 0")
    elif v < (1, 31, 0):
        c["layernorm"] = dict(cls="partial(torch.nn.LayerNorm, bias=False) (torch >= 2.1)", gain="weight", bias=None,
                              offset=0.0, init="weight 1")
    elif v < (1, 31, 3):
        c["layernorm"] = dict(cls="x_transformers LayerNorm(unit_offset=0): nn.LayerNorm(no affine)(x) * gamma",
                              gain="gamma", bias=None, offset=0.0, init="gamma 1")
    else:
        c["layernorm"] = dict(cls="x_transformers LayerNorm(unit_offset=1): nn.LayerNorm(no affine)(x) * (gamma + 1)",
                              gain="gamma", bias=None, offset=1.0, init="gamma 0")
    c["layernorm"]["formula"] = ("y = (x - mean) / sqrt(biased var + 1e-5) * (" + c["layernorm"]["gain"] +
                                 (" + 1)" if c["layernorm"]["offset"] else ")") +
                                 (" + " + c["layernorm"]["bias"] if c["layernorm"]["bias"] else ""))
    # RMSNorm (use_rmsnorm=True)
    if v < (1, 31, 3):
        c["rmsnorm"] = dict(gain="g", bias=None, offset=0.0, init="g 1",
                            formula="y = x / max(||x||_2, 1e-12) * sqrt(dim) * g")
    else:
        c["rmsnorm"] = dict(gain="g", bias=None, offset=1.0, init="g 0",
                            formula="y = x / max(||x||_2, 1e-12) * sqrt(dim) * (g + 1)")
    c["to_logits"] = ("nn.Linear(dim, num_tokens) with bias: to_logits.weight + to_logits.bias" if v < (1, 27, 0)
                      else "bias-less: to_logits.weight only")
    c["to_logits_bias"] = v < (1, 27, 0)
    c["rotary_layout"] = "half" if v < (1, 30, 1) else "interleaved"
    c["rotary_dim"] = "max(dim_head // 2, 32)" if v < (1, 42, 18) else "dim_head // 2"
    # ALiBi, read from 1.29.0 and 2.31.10 (the same formula in both; checked on the real module by check_alibi)
    c["alibi"] = dict(
        slopes="alibi_slopes(alibi_num_heads): for n a power of 2, slope[h] = 2 ** (-8 (h + 1) / n); else the n' = "
               "2 ** floor(log2 n) list followed by every other slope of the 2 n' list, first n - n' of them",
        heads="slopes on the FIRST alibi_num_heads heads (default: all), the remaining heads get bias 0 (zero-padded "
              "at the end of the head axis)",
        bias="bias[h, i, j] = -slope[h] * |q_pos(i) - j|, q_pos(i) = j_len - i_len + i (queries right-aligned to "
             "the keys: with a kv cache the one query is the last position), added to q.k * dim_head ** -0.5 "
             "BEFORE the causal mask (-finfo.max) and the softmax",
        learned="nothing: slopes are a non-persistent buffer (not in the state dict); the learned absolute position "
                "embedding stays on")
    return c


def alibi_slopes(n):
    """ALiBi slopes for n heads, written from the paper's rule (independent of the release's _get_slopes)."""
    def pow2(m):
        return [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]
    if math.log2(n).is_integer():
        return pow2(n)
    c = 2 ** math.floor(math.log2(n))
    return pow2(c) + pow2(2 * c)[0::2][:n - c]


def rotary_dim_of(conv, dh):
    return max(dh // 2, 32) if conv["rotary_dim"].startswith("max") else dh // 2


# ----------------------------------------------------------------------------------------------------------------------
# an independent plain-tensor forward, written from the convention table (flip= one convention deliberately wrong)

def reference_forward(sd, config, conv, tokens, flip=None):
    al = config["attn_layers"]
    dim, depth = al["dim"], al["depth"]
    H, dh = al.get("heads", 8), al.get("attn_dim_head", 64)
    rms, glu, swish = al.get("use_rmsnorm", False), al.get("ff_glu", False), al.get("ff_swish", False)
    nc = conv["rmsnorm"] if rms else conv["layernorm"]
    offset = nc["offset"] if flip != "gain_offset" else 1.0 - nc["offset"]
    B, T = tokens.shape

    def norm(x, prefix):
        g = sd[f"{prefix}.{nc['gain']}"] + offset
        if rms:
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(dim) * g
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + 1e-5) * g
        if nc["bias"] and flip != "norm_bias":
            y = y + sd[f"{prefix}.{nc['bias']}"]
        return y

    x = sd["token_emb.emb.weight"][tokens]
    if "pos_emb.emb.weight" in sd:
        x = x + sd["pos_emb.emb.weight"][:T] * dim ** -0.5

    rot = None
    if al.get("rotary_pos_emb"):
        rd = rotary_dim_of(conv, dh)
        if flip == "rotary_dim":
            rd = dh // 2 if rd != dh // 2 else min(dh, 32)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
        if flip != "rotary_dim":
            assert torch.equal(inv_freq, sd["attn_layers.rotary_pos_emb.inv_freq"])
        ang = torch.arange(T).float()[:, None] * inv_freq[None, :]            # (T, rd/2), fp32 like x-transformers
        layout = conv["rotary_layout"]
        if flip == "rotary_layout":
            layout = "half" if layout == "interleaved" else "interleaved"
        rot = (rd, layout, ang.to(x.dtype).cos(), ang.to(x.dtype).sin())

    def rope(t):
        rd, layout, c, s = rot
        a, rest = t[..., :rd], t[..., rd:]
        if layout == "interleaved":   # pairs (2i, 2i+1) rotate by angle p * inv_freq[i]
            x0, x1 = a[..., 0::2], a[..., 1::2]
            y = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
        else:                         # halves: pairs (i, i + rd/2) rotate by angle p * inv_freq[i]
            x0, x1 = a[..., : rd // 2], a[..., rd // 2:]
            y = torch.cat((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1)
        return torch.cat((y, rest), dim=-1)

    alibi = None
    if al.get("alibi_pos_bias") and flip != "alibi_off":
        na = al.get("alibi_num_heads") or H
        slopes = torch.zeros(H, dtype=x.dtype)
        if flip == "alibi_all_heads":          # every head biased, with the H-head slope list
            slopes[:] = torch.tensor(alibi_slopes(H), dtype=x.dtype)
        elif flip == "alibi_last_heads":       # the biased heads at the end instead of the start
            slopes[H - na:] = torch.tensor(alibi_slopes(na), dtype=x.dtype)
        else:
            slopes[:na] = torch.tensor(alibi_slopes(na), dtype=x.dtype)
        dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs().to(x.dtype)
        alibi = -slopes[:, None, None] * dist                       # (H, T, T)

    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    for l in range(depth):
        a, f = f"attn_layers.layers.{2 * l}", f"attn_layers.layers.{2 * l + 1}"
        h = norm(x, f"{a}.0.0")
        q = (h @ sd[f"{a}.1.to_q.weight"].T).view(B, T, H, dh).transpose(1, 2)
        k = (h @ sd[f"{a}.1.to_k.weight"].T).view(B, T, H, dh).transpose(1, 2)
        v = (h @ sd[f"{a}.1.to_v.weight"].T).view(B, T, H, dh).transpose(1, 2)
        if rot is not None:
            q, k = rope(q), rope(k)
        sim = (q @ k.transpose(-1, -2)) * dh ** -0.5
        if alibi is not None:
            sim = sim + alibi
        sim = sim.masked_fill(causal, -torch.finfo(sim.dtype).max)
        o = (sim.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * dh)
        x = x + o @ sd[f"{a}.1.to_out.weight"].T

        h = norm(x, f"{f}.0.0")
        if glu:
            pj = h @ sd[f"{f}.1.ff.0.proj.weight"].T + sd[f"{f}.1.ff.0.proj.bias"]
            up, gate = pj.chunk(2, dim=-1)
            h = up * (F.silu(gate) if swish else F.gelu(gate))
        else:
            h = h @ sd[f"{f}.1.ff.0.0.weight"].T + sd[f"{f}.1.ff.0.0.bias"]
            h = F.silu(h) if swish else F.gelu(h)
        x = x + h @ sd[f"{f}.1.ff.2.weight"].T + sd[f"{f}.1.ff.2.bias"]

    x = norm(x, "attn_layers.final_norm")
    logits = x @ sd["to_logits.weight"].T
    if conv["to_logits_bias"] and flip != "to_logits_bias":
        logits = logits + sd["to_logits.bias"]
    return logits


def flips_for(config, conv):
    al = config["attn_layers"]
    nc = conv["rmsnorm"] if al.get("use_rmsnorm") else conv["layernorm"]
    out = ["gain_offset"]
    if nc["bias"]:
        out.append("norm_bias")
    if conv["to_logits_bias"]:
        out.append("to_logits_bias")
    if al.get("rotary_pos_emb"):
        out.append("rotary_layout")
        if rotary_dim_of(conv, al.get("attn_dim_head", 64)) != al.get("attn_dim_head", 64) // 2:
            out.append("rotary_dim")
    if al.get("alibi_pos_bias"):
        out.append("alibi_off")
        if (al.get("alibi_num_heads") or al.get("heads", 8)) < al.get("heads", 8):
            out += ["alibi_last_heads", "alibi_all_heads"]
    return out


def check_alibi(net, config):
    """The release's ALiBi module against the convention table (slopes, head placement, right-aligned queries for
    i != j, not in the state dict); returns a one-line summary."""
    al = config["attn_layers"]
    H = al.get("heads", 8)
    na = al.get("alibi_num_heads") or H
    rp = net.attn_layers.rel_pos
    assert type(rp).__name__ == "AlibiPositionalBias", type(rp)
    assert not any(k.startswith("attn_layers.rel_pos") for k in net.state_dict()), "ALiBi has state dict entries"
    assert not list(rp.parameters()), "ALiBi has learned parameters"
    want = torch.tensor(alibi_slopes(na))
    assert torch.equal(rp.slopes.flatten(), want), (rp.slopes.flatten(), want)
    for i_len, j_len in ((5, 5), (1, 6), (3, 7)):
        b = rp(i_len, j_len).clone()
        qpos = torch.arange(j_len - i_len, j_len)
        dist = (qpos[:, None] - torch.arange(j_len)[None, :]).abs().float()
        ref = torch.zeros(H, i_len, j_len)
        ref[:na] = -want[:, None, None] * dist
        assert b.shape == (H, i_len, j_len) and torch.equal(b, ref), (i_len, j_len)
    return (f"AlibiPositionalBias(heads={na}, total_heads={H}): slopes {want.tolist()} on heads 0..{na - 1}, zero "
            f"bias on heads {na}..{H - 1}; rp(i, j) = -slope * |(j - i + a) - b| for query a, key b (checked for "
            f"(i, j) = (5, 5), (1, 6), (3, 7)); no parameters, nothing in the state dict")


# ----------------------------------------------------------------------------------------------------------------------

def expected_names(config, conv):
    al = config["attn_layers"]
    dim, H, dh = al["dim"], al.get("heads", 8), al.get("attn_dim_head", 64)
    nc = conv["rmsnorm"] if al.get("use_rmsnorm") else conv["layernorm"]
    names = {"token_emb.emb.weight": (config["num_tokens"], dim)}
    if not al.get("rotary_pos_emb"):
        names["pos_emb.emb.weight"] = (config["max_seq_len"], dim)

    def norm(prefix):
        names[f"{prefix}.{nc['gain']}"] = (dim,)
        if nc["bias"]:
            names[f"{prefix}.{nc['bias']}"] = (dim,)
    for l in range(al["depth"]):
        a, f = f"attn_layers.layers.{2 * l}", f"attn_layers.layers.{2 * l + 1}"
        norm(f"{a}.0.0")
        names.update({f"{a}.1.to_q.weight": (H * dh, dim), f"{a}.1.to_k.weight": (H * dh, dim),
                      f"{a}.1.to_v.weight": (H * dh, dim), f"{a}.1.to_out.weight": (dim, H * dh)})
        norm(f"{f}.0.0")
        if al.get("ff_glu"):
            names.update({f"{f}.1.ff.0.proj.weight": (8 * dim, dim), f"{f}.1.ff.0.proj.bias": (8 * dim,)})
        else:
            names.update({f"{f}.1.ff.0.0.weight": (4 * dim, dim), f"{f}.1.ff.0.0.bias": (4 * dim,)})
        names.update({f"{f}.1.ff.2.weight": (dim, 4 * dim), f"{f}.1.ff.2.bias": (dim,)})
    if al.get("rotary_pos_emb"):
        names["attn_layers.rotary_pos_emb.inv_freq"] = (rotary_dim_of(conv, dh) // 2,)
    norm("attn_layers.final_norm")
    names["to_logits.weight"] = (config["num_tokens"], dim)
    if conv["to_logits_bias"]:
        names["to_logits.bias"] = (config["num_tokens"],)
    return names


def check_norm_modules(net, config, conv):
    """Default init and formula of every norm module, on the real modules (before perturbation)."""
    al = config["attn_layers"]
    nc = conv["rmsnorm"] if al.get("use_rmsnorm") else conv["layernorm"]
    dim = al["dim"]
    mods = [("attn_layers.final_norm", net.attn_layers.final_norm)]
    for i, layer in enumerate(net.attn_layers.layers):
        mods.append((f"attn_layers.layers.{i}.0.0", layer[0][0]))
    init_gain = 0.0 if nc["offset"] else 1.0
    for prefix, m in mods:
        tensors = dict(m.named_parameters())
        tensors.update({k: b for k, b in m.named_buffers() if b is not None})
        assert torch.all(tensors[nc["gain"]] == init_gain), (prefix, "gain init")
        if nc["bias"]:
            assert torch.all(tensors[nc["bias"]] == 0), (prefix, "bias init")
        # formula: copy random values in, compare with the table's formula
        g = torch.randn(dim) * 0.3 + 0.5
        b = torch.randn(dim) * 0.3
        saved = {k: t.detach().clone() for k, t in tensors.items()}
        x = torch.randn(3, 5, dim) * 2 + 0.3
        with torch.no_grad():
            tensors[nc["gain"]].copy_(g)
            if nc["bias"]:
                tensors[nc["bias"]].copy_(b)
            y = m(x)
            for k, t in tensors.items():
                t.copy_(saved[k])
        G = g + nc["offset"]
        if al.get("use_rmsnorm"):
            want = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(dim) * G
        else:
            want = F.layer_norm(x, (dim,), eps=1e-5) * G + (b if nc["bias"] else 0)
        assert torch.allclose(y, want, atol=1e-5), (prefix, "formula", (y - want).abs().max().item())


def perturb(net, config, conv, gen):
    """Move every norm gain and norm bias (parameters, and 1.27.0's persistent `beta` buffer) off its init."""
    al = config["attn_layers"]
    nc = conv["rmsnorm"] if al.get("use_rmsnorm") else conv["layernorm"]
    touched = []
    sd_names = set(net.state_dict())
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if name not in sd_names:
                continue
            leaf = name.rsplit(".", 1)[-1]
            is_norm = name.startswith("attn_layers.final_norm.") or (
                name.startswith("attn_layers.layers.") and name.split(".")[3:5] == ["0", "0"])
            if not is_norm:
                continue
            if leaf == nc["gain"]:
                t.add_(torch.randn(t.shape, generator=gen) * PERTURB["gain_std"])
            elif leaf == nc["bias"]:
                t.add_(torch.randn(t.shape, generator=gen) * PERTURB["bias_std"])
            else:
                raise AssertionError(f"unexpected norm tensor {name}")
            touched.append(name)
    return touched


def make_fixture(name, out_dir, version):
    spec = CONFIGS[name]
    config = spec["config"]
    conv = conventions(version, RELEASE_TORCH_VERSION)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    held = encode(HELD_OUT_TEXT)
    rows = [held[0: SEQ + 1], held[len(held) // 2: len(held) // 2 + SEQ + 1]]
    tokens = torch.tensor(rows, dtype=torch.long)
    assert tokens.shape == (BATCH, SEQ + 1)
    prompt = tokens[:1, :PROMPT].clone()

    # seeds are tried in order until greedy decoding is far from ties (random weights can give near-equal logits)
    for seed in range(SEED, SEED + 50):
        torch.manual_seed(seed)
        net = build(config)
        sd0 = net.state_dict()
        want = expected_names(config, conv)
        got = {k: tuple(v.shape) for k, v in sd0.items()}
        if got != want:
            raise SystemExit(f"[{name}] state dict differs from the convention table:\n  got  {got}\n  want {want}")
        check_norm_modules(net, config, conv)
        alibi_fact = check_alibi(net, config) if config["attn_layers"].get("alibi_pos_bias") else None
        touched = perturb(net, config, conv, torch.Generator().manual_seed(seed))
        model = AutoregressiveWrapper(net).eval()
        with torch.no_grad():
            logits = net(tokens[:, :-1])
            full = torch.cat((prompt, model.generate(prompt, GREEDY, temperature=0., cache_kv=True)), dim=-1)
            step_logits = net(full[:, :-1])[0, PROMPT - 1:]
        top2 = step_logits.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
        if margin >= 1e-2:
            break
    else:
        raise SystemExit(f"[{name}] no seed gave a greedy margin >= 1e-2")

    with torch.no_grad():
        logits_full = net(tokens)[:, :-1]
        loss = model(tokens)
    assert torch.allclose(logits, logits_full, atol=1e-5)
    ce = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])
    assert abs(ce.item() - loss.item()) < 1e-5, (ce.item(), loss.item())
    greedy = model.generate(prompt, GREEDY, temperature=0., cache_kv=True)
    greedy_nc = model.generate(prompt, GREEDY, temperature=0., cache_kv=False)
    if not torch.equal(greedy, greedy_nc):
        raise SystemExit(f"[{name}] cache_kv=True gives {greedy.tolist()}, cache_kv=False {greedy_nc.tolist()}")
    assert torch.equal(step_logits.argmax(-1), greedy[0])

    # independent forward, and every single wrong convention must miss
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    ref = reference_forward(sd, config, conv, tokens[:, :-1])
    err = (ref - logits).abs().max().item()
    assert err < 1e-4, f"[{name}] reference forward differs by {err}"
    sd64 = {k: (v if k.endswith("inv_freq") else v.double()) for k, v in sd.items()}
    err64 = (reference_forward(sd64, config, conv, tokens[:, :-1]) - logits.double()).abs().max().item()
    flip_err = {}
    for flip in flips_for(config, conv):
        d = (reference_forward(sd, config, conv, tokens[:, :-1], flip=flip) - logits).abs().max().item()
        assert d > 1e-2, f"[{name}] flipping {flip} changes logits by only {d}: fixture cannot discriminate"
        flip_err[flip] = d

    tensors = {k: v.contiguous() for k, v in sd.items()}
    tensors["fixture.tokens"] = tokens.contiguous()
    tensors["fixture.logits"] = logits.contiguous()
    tensors["fixture.loss"] = loss.detach().reshape(1).contiguous()
    tensors["fixture.prompt"] = prompt.contiguous()
    tensors["fixture.greedy"] = greedy.to(torch.long).contiguous()
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)

    al = config["attn_layers"]
    nc = conv["rmsnorm"] if al.get("use_rmsnorm") else conv["layernorm"]
    conv_meta = {"norm": nc, "to_logits": conv["to_logits"]}
    if al.get("alibi_pos_bias"):
        conv_meta["alibi"] = {**conv["alibi"], "checked": alibi_fact}
    pretend_note = ""
    if PRETEND_TORCH:
        with torch.random.fork_rng():               # the check builds models: leave the global RNG as it was
            eq = torch_layout_equivalence(config, sd, tokens[:, :-1], logits)
        conv_meta["torch_lt_2_1"] = eq
        pretend_note = (f" Saved as under torch < 2.1: the release was imported with torch.__version__ = "
                        f"{PRETEND_TORCH!r} (the real torch is {REAL_TORCH_VERSION}), so its own import-time check "
                        f"chose its LayerNorm with `gamma` + persistent `beta` instead of nn.LayerNorm(bias=False). "
                        + eq["summary"])
    if al.get("rotary_pos_emb"):
        conv_meta["rotary"] = {"dim": f"{conv['rotary_dim']} = {rotary_dim_of(conv, al['attn_dim_head'])}",
                               "layout": conv["rotary_layout"] + (
                                   ": pairs (i, i + rd/2) rotate by pos * inv_freq[i] (rotate_half on halves)"
                                   if conv["rotary_layout"] == "half" else
                                   ": pairs (2i, 2i+1) rotate by pos * inv_freq[i]")}
    meta = {
        "config": json.dumps(config),
        "x_transformers_version": version,
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "description": spec["description"] + f" Built with x-transformers {version}; weights are the default init "
                       f"(seed {seed}) with the norm tensors perturbed, no training." + pretend_note,
        "conventions": json.dumps(conv_meta),
        **({"release_torch_version": PRETEND_TORCH} if PRETEND_TORCH else {}),
        "vocab": VOCAB,
        "perturbation": f"norm gains += N(0, {PERTURB['gain_std']}^2), norm biases += N(0, {PERTURB['bias_std']}^2) "
                        f"(torch.Generator seed {seed}); tensors: " + ", ".join(touched),
        "generate": json.dumps({"seq_len": GREEDY, "temperature": 0.0, "cache_kv": True}),
        "greedy_min_margin": f"{margin:.4f}",
        "logits": "net(fixture.tokens[:, :-1]) in eval mode",
        "loss": "AutoregressiveWrapper(net)(fixture.tokens): cross_entropy(net(tokens)[:, :-1], tokens[:, 1:]), "
                "mean over B*T",
    }
    variant = f"_torch{PRETEND_TORCH}" if PRETEND_TORCH else ""
    path = os.path.join(out_dir, f"legacy_{version}{variant}_{name}.safetensors")
    loaded, meta_back = write_and_reload(path, tensors, meta)

    # verify: rebuild from metadata alone, forward must be bit-identical
    net2 = build(json.loads(meta_back["config"])).eval()
    net2.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("fixture.")}, strict=True)
    with torch.no_grad():
        re_logits = net2(loaded["fixture.tokens"][:, :-1])
    if not torch.equal(re_logits, loaded["fixture.logits"]):
        raise SystemExit(f"[{name}] forward from saved weights differs")
    g2 = AutoregressiveWrapper(net2).generate(loaded["fixture.prompt"], GREEDY, temperature=0., cache_kv=True)
    assert torch.equal(g2, loaded["fixture.greedy"])

    print(f"[{name}] wrote {path}: {file_summary(path)}, seed {seed}, loss {loss.item():.6f}, "
          f"greedy {decode(greedy[0].tolist())!r} (min margin {margin:.3f}); reference fp32 err {err:.2g}, "
          f"fp32-vs-fp64 {err64:.2g}; single wrong convention misses by "
          + ", ".join(f"{k} {v:.3g}" for k, v in flip_err.items()))
    for k, s in want.items():
        print(f"    {k} {s}")
    for k in ("alibi", "torch_lt_2_1"):
        if k in conv_meta:
            print(f"    {k}: {json.dumps(conv_meta[k])}")
    return path


def torch_layout_equivalence(config, sd, inputs, logits):
    """Only with --pretend-torch: the same weights in the layout the release builds under the REAL torch (>= 2.1).
    x_transformers.x_transformers is re-executed (importlib.reload) with the real torch.__version__, so the release's
    own import-time check now picks partial(nn.LayerNorm, bias=False); that model gets every `<norm>.gamma` as
    `<norm>.weight` and no `beta` (it has no bias), and must reproduce the forward of the pretend-torch model whose
    `beta` buffers are zeroed (a nonzero beta cannot be expressed in the torch >= 2.1 layout). The module is then
    re-executed with the pretended version again, so later builds keep the torch < 2.1 layout."""
    xm = sys.modules["x_transformers.x_transformers"]
    cfg = json.loads(json.dumps(config))
    al = cfg.pop("attn_layers")
    al.pop("type")
    betas = sorted(k for k in sd if k.endswith(".beta"))
    gammas = sorted(k for k in sd if k.endswith(".gamma"))
    assert betas and len(betas) == len(gammas), (betas, gammas)
    zero_beta = {k: (torch.zeros_like(v) if k.endswith(".beta") else v) for k, v in sd.items()}
    net_a = build(config).eval()
    net_a.load_state_dict(zero_beta, strict=True)
    with torch.no_grad():
        logits_a = net_a(inputs)
    beta_effect = (logits_a - logits).abs().max().item()
    try:
        torch.__version__ = REAL_TORCH_VERSION
        importlib.reload(xm)
        assert xm.LayerNorm.func is torch.nn.LayerNorm and xm.LayerNorm.keywords == {"bias": False}
        torch.manual_seed(0)
        net_b = xm.TransformerWrapper(**cfg, attn_layers=xm.Decoder(**al)).eval()
        mapped = {(k[:-len(".gamma")] + ".weight" if k.endswith(".gamma") else k): v
                  for k, v in sd.items() if not k.endswith(".beta")}
        names_b = set(net_b.state_dict())
        assert names_b == set(mapped), (sorted(names_b ^ set(mapped)))
        net_b.load_state_dict(mapped, strict=True)
        with torch.no_grad():
            logits_b = net_b(inputs)
    finally:
        torch.__version__ = PRETEND_TORCH
        try:
            importlib.reload(xm)
        finally:
            torch.__version__ = REAL_TORCH_VERSION
    assert xm.LayerNorm.__name__ == "LayerNorm" and not hasattr(xm.LayerNorm, "func"), "pretend layout not restored"
    diff = (logits_a - logits_b).abs().max().item()
    assert diff <= 1e-6, f"torch < 2.1 layout with beta = 0 differs from the torch >= 2.1 layout by {diff}"
    assert beta_effect > 1e-2, f"the perturbed beta moves the logits by only {beta_effect}"
    return {"names": f"{len(gammas)} norms stored as `<norm>.gamma` (parameter) + `<norm>.beta` (persistent buffer); "
                     f"under torch >= 2.1 the same release stores `<norm>.weight` only",
            "forward": "F.layer_norm(x, (dim,), gamma, beta), eps 1e-5",
            "max_abs_diff_vs_torch_ge_2_1_layout": diff, "beta_effect": beta_effect,
            "summary": f"Checked: with every beta set to 0, this model's logits equal those of the same release "
                       f"imported under the real torch (nn.LayerNorm(bias=False), gamma loaded as `.weight`) to "
                       f"{diff:.2g}; the file's perturbed beta moves the logits by {beta_effect:.3g}."}


# ----------------------------------------------------------------------------------------------------------------------
# XTransformer (encoder-decoder) configs: the copy-task data of tools/xt_fixture.py (xt_copy_batch, duplicated here so
# that this script imports nothing of the current release), untrained models built by the old release

# the copy task's vocabulary, lengths and batch builders are the current-release fixtures' (tools/xt_fixture.py)
from xt_fixture import (XT_FIXTURE_LENS, XT_GREEDY, XT_IGNORE, XT_PAD, XT_SRC, XT_START, XT_TGT,  # noqa: E402
                        XT_VOCAB, xt_copy_batch, xt_decoder_input, xt_split, xt_tensor_notes)
XT_DATA_SEED = 1235        # == tools/xt_fixture.py SEED + 1: the same held-out rows as the current xtransformer_* files
XT_SRC_ROWS = [[13, 4, 4, 17, 5, 9, 5, 8, 11, 10, 2, 2], [4, 4, 17, 6, 16, 8, 10, 0, 0, 0, 0, 0]]


def _xcfg(tie, dh, **both):
    cfg = {"dim": 32, "tie_token_emb": tie}
    for side, n in (("enc", XT_SRC), ("dec", XT_TGT)):
        cfg.update({f"{side}_num_tokens": XT_VOCAB, f"{side}_depth": 1, f"{side}_heads": 2,
                    f"{side}_attn_dim_head": dh, f"{side}_max_seq_len": n})
        cfg.update({f"{side}_{k}": v for k, v in both.items()})
    return cfg


CONFIGS.update({
    "xtransformer_rotary_layernorm": dict(
        kind="xtransformer", config=_xcfg(False, 32, rotary_pos_emb=True),
        description="XTransformer (encoder-decoder, copy-task data), rotary positions in both stacks (dim_head 32: "
                    "rotary dim max(dim_head // 2, 32) before 1.42.18), default LayerNorm, GELU feed-forwards, "
                    "untied token embeddings."),
    "xtransformer_tied_layernorm": dict(
        kind="xtransformer", config=_xcfg(True, 16),
        description="XTransformer (encoder-decoder, copy-task data), learned absolute positions in both stacks, "
                    "default LayerNorm, GELU feed-forwards, tie_token_emb=True."),
})


def xt_stack_cfg(dim, kw):
    """A decoder-style config dict for one stack, so that check_norm_modules / perturb / rotary_dim_of apply as is."""
    return {"attn_layers": {"dim": dim, **kw}}


def xt_expected_names(config, conv):
    """State dict names and shapes of XTransformer(**config) under the convention table. Both stacks are full
    TransformerWrappers: the encoder keeps an (unused) to_logits in these releases; the decoder blocks are
    [self-attention, cross-attention, feed-forward] = layers.{3l}, {3l+1}, {3l+2}."""
    dim, enc_kw, dec_kw = xt_split(config)
    names = {}
    for P, kw, cross in (("encoder.", enc_kw, False), ("decoder.net.", dec_kw, True)):
        H, dh = kw.get("heads", 8), kw.get("attn_dim_head", 64)
        nc = conv["rmsnorm"] if kw.get("use_rmsnorm") else conv["layernorm"]
        names[f"{P}token_emb.emb.weight"] = (kw["num_tokens"], dim)
        if not kw.get("rotary_pos_emb"):
            names[f"{P}pos_emb.emb.weight"] = (kw["max_seq_len"], dim)

        def norm(prefix):
            names[f"{prefix}.{nc['gain']}"] = (dim,)
            if nc["bias"]:
                names[f"{prefix}.{nc['bias']}"] = (dim,)

        def attn(a):
            norm(f"{a}.0.0")
            names.update({f"{a}.1.to_q.weight": (H * dh, dim), f"{a}.1.to_k.weight": (H * dh, dim),
                          f"{a}.1.to_v.weight": (H * dh, dim), f"{a}.1.to_out.weight": (dim, H * dh)})
        per = 3 if cross else 2
        for l in range(kw["depth"]):
            attn(f"{P}attn_layers.layers.{per * l}")
            if cross:
                attn(f"{P}attn_layers.layers.{per * l + 1}")
            f = f"{P}attn_layers.layers.{per * l + per - 1}"
            norm(f"{f}.0.0")
            names.update({f"{f}.1.ff.0.0.weight": (4 * dim, dim), f"{f}.1.ff.0.0.bias": (4 * dim,),
                          f"{f}.1.ff.2.weight": (dim, 4 * dim), f"{f}.1.ff.2.bias": (dim,)})
        if kw.get("rotary_pos_emb"):
            names[f"{P}attn_layers.rotary_pos_emb.inv_freq"] = (rotary_dim_of(conv, dh) // 2,)
        norm(f"{P}attn_layers.final_norm")
        names[f"{P}to_logits.weight"] = (kw["num_tokens"], dim)
        if conv["to_logits_bias"]:
            names[f"{P}to_logits.bias"] = (kw["num_tokens"],)
    return names


def reference_xt_stack(sd, P, kw, dim, conv, tokens, *, causal, mask=None, context=None, context_mask=None,
                       flip=None, masked_rows="softmax"):
    """Plain-tensor TransformerWrapper(attn_layers=Encoder/Decoder(dim, **kw)) under `P`, written from the convention
    table: the final-normed embeddings (B, T, dim). With `context` each block is [self, cross, ff] (layers 3l, 3l+1,
    3l+2). Rules of these releases: pre-norm on the query stream only, the context enters to_k/to_v as is;
    cross-attention has no rotary and no causal mask, its keys are masked by context_mask; with `mask` (self keys) the
    self-attention output after to_out is zeroed at padded query positions. masked_rows: what a query row whose keys
    are ALL masked gets: "softmax" (plain softmax over -finfo.max everywhere = uniform average of all values) or
    "zero" (the current release). `flip` = one convention deliberately wrong (see xt_flips_for)."""
    H, dh = kw.get("heads", 8), kw.get("attn_dim_head", 64)
    rms, glu, swish = kw.get("use_rmsnorm", False), kw.get("ff_glu", False), kw.get("ff_swish", False)
    nc = conv["rmsnorm"] if rms else conv["layernorm"]
    offset = nc["offset"] if flip != "gain_offset" else 1.0 - nc["offset"]
    B, T = tokens.shape

    def norm(x, prefix):
        g = sd[f"{prefix}.{nc['gain']}"] + offset
        if rms:
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(dim) * g
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + 1e-5) * g
        if nc["bias"] and flip != "norm_bias":
            y = y + sd[f"{prefix}.{nc['bias']}"]
        return y

    x = sd[f"{P}token_emb.emb.weight"][tokens]
    if f"{P}pos_emb.emb.weight" in sd:
        x = x + sd[f"{P}pos_emb.emb.weight"][:T] * dim ** -0.5

    def rot_for(n):
        rd = rotary_dim_of(conv, dh)
        if flip == "rotary_dim":
            rd = dh // 2 if rd != dh // 2 else min(dh, 32)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
        if flip != "rotary_dim":
            assert torch.equal(inv_freq, sd[f"{P}attn_layers.rotary_pos_emb.inv_freq"])
        ang = torch.arange(n).float()[:, None] * inv_freq[None, :]
        layout = conv["rotary_layout"]
        if flip == "rotary_layout":
            layout = "half" if layout == "interleaved" else "interleaved"
        return rd, layout, ang.to(x.dtype).cos(), ang.to(x.dtype).sin()

    def rope(t, rot):
        rd, layout, c, s = rot
        a, rest = t[..., :rd], t[..., rd:]
        if layout == "interleaved":
            x0, x1 = a[..., 0::2], a[..., 1::2]
            y = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
        else:
            x0, x1 = a[..., : rd // 2], a[..., rd // 2:]
            y = torch.cat((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1)
        return torch.cat((y, rest), dim=-1)

    def attend(a, h, kv_in, masked, rot_q, rot_k):
        n = kv_in.shape[1]
        q = (h @ sd[f"{a}.1.to_q.weight"].T).view(B, T, H, dh).transpose(1, 2)
        k = (kv_in @ sd[f"{a}.1.to_k.weight"].T).view(B, n, H, dh).transpose(1, 2)
        v = (kv_in @ sd[f"{a}.1.to_v.weight"].T).view(B, n, H, dh).transpose(1, 2)
        if rot_q is not None:
            q, k = rope(q, rot_q), rope(k, rot_k)
        sim = (q @ k.transpose(-1, -2)) * dh ** -0.5
        masked = masked.expand(B, H, T, n)
        sim = sim.masked_fill(masked, -torch.finfo(sim.dtype).max)
        o = sim.softmax(-1) @ v
        if masked_rows == "zero":
            o = o * (~masked).any(-1, keepdim=True).to(o.dtype)
        o = o.transpose(1, 2).reshape(B, T, H * dh)
        return o @ sd[f"{a}.1.to_out.weight"].T

    rot = rot_for(T) if kw.get("rotary_pos_emb") else None
    self_masked = (torch.ones(T, T, dtype=torch.bool).triu(1) if causal else torch.zeros(T, T, dtype=torch.bool))
    self_masked = self_masked[None, None]
    if mask is not None:
        self_masked = self_masked | ~mask[:, None, None, :]
    per = 3 if context is not None else 2
    for l in range(kw["depth"]):
        a = f"{P}attn_layers.layers.{per * l}"
        o = attend(a, norm(x, f"{a}.0.0"), norm(x, f"{a}.0.0"), self_masked, rot, rot)
        if mask is not None:
            o = o * mask[..., None].to(o.dtype)
        x = x + o
        if context is not None:
            c = f"{P}attn_layers.layers.{per * l + 1}"
            S = context.shape[1]
            ctx = norm(context, f"{c}.0.0") if flip == "norm_context" else context
            cm = context_mask if (context_mask is not None and flip != "no_context_mask") else \
                torch.ones(B, S, dtype=torch.bool)
            crot_q = crot_k = None
            if flip == "cross_rotary" and rot is not None:
                crot_q, crot_k = rot, rot_for(S)
            x = x + attend(c, norm(x, f"{c}.0.0"), ctx, ~cm[:, None, None, :], crot_q, crot_k)
        f = f"{P}attn_layers.layers.{per * l + per - 1}"
        h = norm(x, f"{f}.0.0")
        if glu:
            pj = h @ sd[f"{f}.1.ff.0.proj.weight"].T + sd[f"{f}.1.ff.0.proj.bias"]
            up, gate = pj.chunk(2, dim=-1)
            h = up * (F.silu(gate) if swish else F.gelu(gate))
        else:
            h = h @ sd[f"{f}.1.ff.0.0.weight"].T + sd[f"{f}.1.ff.0.0.bias"]
            h = F.silu(h) if swish else F.gelu(h)
        x = x + h @ sd[f"{f}.1.ff.2.weight"].T + sd[f"{f}.1.ff.2.bias"]
    return norm(x, f"{P}attn_layers.final_norm")


def reference_xt(sd, config, conv, src, src_mask, dec_in, flip=None, masked_rows="softmax", encoded=None):
    """(encoded (B, S, dim), decoder logits (B, T, V)) from the state dict alone (`encoded` given: decoder only)."""
    dim, enc_kw, dec_kw = xt_split(config)
    if encoded is None:
        encoded = reference_xt_stack(sd, "encoder.", enc_kw, dim, conv, src, causal=False, mask=src_mask,
                                     flip=flip if flip not in ("to_logits_bias",) else None,
                                     masked_rows=masked_rows)
    h = reference_xt_stack(sd, "decoder.net.", dec_kw, dim, conv, dec_in, causal=True, context=encoded,
                           context_mask=src_mask, flip=flip, masked_rows=masked_rows)
    logits = h @ sd["decoder.net.to_logits.weight"].T
    if conv["to_logits_bias"] and flip != "to_logits_bias":
        logits = logits + sd["decoder.net.to_logits.bias"]
    return encoded, logits


def xt_flips_for(config, conv):
    dim, enc_kw, dec_kw = xt_split(config)
    out = []
    for kw in (enc_kw, dec_kw):
        for f in flips_for(xt_stack_cfg(dim, kw), conv):
            if f not in out:
                out.append(f)
    return out + ["cross_rotary" if dec_kw.get("rotary_pos_emb") else None, "norm_context", "no_context_mask"]


def xt_greedy_steps(model, src, src_mask, greedy):
    """Decoder logits of the greedy steps from one uncached pass over [1, greedy[:-1]] (GREEDY, V)."""
    with torch.no_grad():
        enc = model.encoder(src, mask=src_mask, return_embeddings=True)
        full = torch.cat((torch.full((greedy.shape[0], 1), XT_START, dtype=torch.long), greedy), dim=-1)
        return model.decoder.net(full[:, :-1], context=enc, context_mask=src_mask)[0]


def xt_observe_facts(model, config, conv, sd, src, src_mask, dec_in, encoded, logits):
    """Cross-attention / padding / tie / cache facts of this release, observed on its real modules and asserted."""
    import x_transformers.x_transformers as xtm
    dim, enc_kw, dec_kw = xt_split(config)
    facts = {}
    dec_layers = model.decoder.net.attn_layers
    assert tuple(dec_layers.layer_types) == ("a", "c", "f") * dec_kw["depth"], dec_layers.layer_types
    assert tuple(model.encoder.attn_layers.layer_types) == ("a", "f") * enc_kw["depth"]
    facts["layout"] = ("decoder.net.attn_layers.layer_types == ('a', 'c', 'f') * depth: layers.{3l} causal "
                       "self-attention, layers.{3l+1} cross-attention, layers.{3l+2} feed-forward, each with its own "
                       "pre-norm .0.0.*; the encoder keeps layers.{2l} / {2l+1}")

    # (a) rotary in cross-attention? count the calls of apply_rotary_pos_emb and the shapes they rotate
    calls = []
    orig = xtm.apply_rotary_pos_emb

    def spy(t, freqs, *a, **k):
        calls.append(tuple(t.shape))
        return orig(t, freqs, *a, **k)
    xtm.apply_rotary_pos_emb = spy
    try:
        with torch.no_grad():
            model.decoder.net(dec_in, context=encoded, context_mask=src_mask)
    finally:
        xtm.apply_rotary_pos_emb = orig
    if dec_kw.get("rotary_pos_emb"):
        T = dec_in.shape[1]
        assert len(calls) == 2 * dec_kw["depth"] and all(c[-2] == T for c in calls), calls
        facts["cross_rotary"] = (f"no: one decoder forward rotates only self-attention q and k ({len(calls)} calls of "
                                 f"apply_rotary_pos_emb, all of length {T}; cross-attention k of length "
                                 f"{XT_SRC} never); rotating cross q/k would move the logits (see flips)")
    else:
        assert not calls
        facts["cross_rotary"] = "no rotary in this config (apply_rotary_pos_emb is never called)"

    # (b) context_mask: XTransformer passes its `mask` as the decoder's context_mask (keyword of AttentionLayers)
    import inspect
    assert "context_mask" in inspect.signature(type(dec_layers).forward).parameters
    assert "context_mask = mask" in inspect.getsource(XTransformer.forward).replace("context_mask=mask",
                                                                                    "context_mask = mask")
    with torch.no_grad():
        no_cm = model.decoder.net(dec_in, context=encoded)
    d_cm = (no_cm[1] - logits[1]).abs().max().item()
    assert torch.equal(no_cm[0], logits[0]) and d_cm > 1e-2, d_cm
    facts["context_mask"] = (f"XTransformer.forward/generate pass the source mask to the decoder as "
                             f"context_mask=mask (same name as the current release); it masks cross-attention keys "
                             f"only; dropping it moves row 1's logits by {d_cm:.3g} (row 0, unpadded, unchanged)")
    # padded encoder rows never read
    enc_mod = encoded.masked_fill(~src_mask[..., None], 1e3)
    with torch.no_grad():
        l_mod = model.decoder.net(dec_in, context=enc_mod, context_mask=src_mask)
    assert torch.equal(l_mod, logits)
    facts["padding"] = ("encoder: mask=src_mask masks self-attention keys and zeroes the self-attention output "
                        "(after to_out) at padded query positions; the feed-forward and final norm still run there "
                        f"(max |encoded| at padded positions {encoded[~src_mask].abs().max().item():.3g}); those "
                        "rows are never read: setting them to 1e3 leaves the logits bit-identical. decoder: no mask "
                        "on its own stream (-100 fed as token 0)")

    # (b) fully masked source row: uniform softmax average or zero?
    fm = src_mask.clone()
    fm[1] = False
    with torch.no_grad():
        enc_fm = model.encoder(src, mask=fm, return_embeddings=True)
        log_fm = model.decoder.net(dec_in, context=enc_fm, context_mask=fm)
    assert torch.isfinite(log_fm).all()
    assert torch.equal(log_fm[0], logits[0])
    e_soft = reference_xt(sd, config, conv, src, fm, dec_in, masked_rows="softmax")
    e_zero = reference_xt(sd, config, conv, src, fm, dec_in, masked_rows="zero")
    err_soft = max((e_soft[0] - enc_fm).abs().max().item(), (e_soft[1] - log_fm).abs().max().item())
    err_zero = (e_zero[1] - log_fm).abs().max().item()
    if err_soft < 1e-4 and err_zero > 1e-2:
        rule = "softmax"
        facts["fully_masked_source"] = (
            f"an all-False src_mask row (tried on row 1) gives no NaN; NO zeroing of entirely masked attention rows: "
            f"the softmax over keys that are all -finfo.max is uniform, so every decoder cross-attention row of it "
            f"averages the values of ALL {XT_SRC} encoder positions (and the encoder self-attention output there is "
            f"zeroed anyway by the query mask). Reference with the uniform rule matches to {err_soft:.2g}; the "
            f"current release's rule (zero output for such rows) misses by {err_zero:.3g}")
    elif err_zero < 1e-4 and err_soft > 1e-2:
        rule = "zero"
        facts["fully_masked_source"] = (f"an all-False src_mask row: entirely masked attention rows output exactly 0 "
                                        f"(reference to {err_zero:.2g}; uniform softmax misses by {err_soft:.3g})")
    else:
        raise SystemExit(f"fully masked row: neither rule fits (softmax {err_soft}, zero {err_zero})")
    facts["fully_masked_rule"] = rule

    # tied embedding
    if config.get("tie_token_emb"):
        assert model.decoder.net.token_emb is model.encoder.token_emb
        pn = [k for k, _ in model.named_parameters()]
        assert "encoder.token_emb.emb.weight" in pn and "decoder.net.token_emb.emb.weight" not in pn
        assert "decoder.net.token_emb.emb.weight" in sd and "encoder.token_emb.emb.weight" in sd
        facts["tied"] = ("decoder.net.token_emb IS encoder.token_emb: state_dict() lists both "
                         "encoder.token_emb.emb.weight and decoder.net.token_emb.emb.weight (stored here as two equal "
                         "tensors), named_parameters() once; to_logits is not tied")
    facts["encoder_to_logits"] = ("the encoder is a plain TransformerWrapper: it has its own encoder.to_logits."
                                  + ("weight/.bias" if conv["to_logits_bias"] else "weight") +
                                  " (default init, never used by XTransformer: encoder(..., return_embeddings=True))")

    # kv cache: how does cross-attention get its keys in cached greedy decoding?
    seen = []
    to_k = dec_layers.layers[1][1].to_k
    hook = to_k.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        model.generate(src[:1], torch.tensor([[XT_START]]), 4, mask=src_mask[:1], temperature=0., cache_kv=True)
    finally:
        hook.remove()
    if seen == [XT_SRC] * 4:
        facts["cache_cross_kv"] = (f"cache_kv=True: cross-attention to_k sees the full context at every step "
                                   f"(input lengths {seen}): the context stays, cross k/v are recomputed each step, "
                                   f"only self-attention k/v come from the cache")
    elif seen == [XT_SRC] + [0] * 3:
        facts["cache_cross_kv"] = (f"cache_kv=True: cross-attention to_k sees the context at the first step only "
                                   f"(input lengths {seen}): later steps get context[:, :0] and reuse the cached "
                                   f"cross k/v (as the current release)")
    else:
        raise SystemExit(f"unexpected cross-attention inputs while decoding with the cache: {seen}")
    return facts


def make_xt_fixture(name, out_dir, version):
    spec = CONFIGS[name]
    config = spec["config"]
    conv = conventions(version, RELEASE_TORCH_VERSION)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dim, enc_kw, dec_kw = xt_split(config)
    assert enc_kw["num_tokens"] == dec_kw["num_tokens"] == XT_VOCAB
    assert enc_kw["max_seq_len"] == XT_SRC and dec_kw["max_seq_len"] == XT_TGT

    src, src_mask, tgt = xt_copy_batch(list(XT_FIXTURE_LENS), torch.Generator().manual_seed(XT_DATA_SEED))
    assert src.tolist() == XT_SRC_ROWS, src.tolist()
    B = len(XT_FIXTURE_LENS)
    dec_in = xt_decoder_input(tgt)
    start = torch.tensor([[XT_START]], dtype=torch.long)
    want = xt_expected_names(config, conv)

    for seed in range(SEED, SEED + 50):
        torch.manual_seed(seed)
        model = XTransformer(**config)
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if got != want:
            raise SystemExit(f"[{name}] state dict differs from the convention table:\n  got  {got}\n  want {want}")
        gen = torch.Generator().manual_seed(seed)
        touched = []
        for P, net, kw in (("encoder.", model.encoder, enc_kw), ("decoder.net.", model.decoder.net, dec_kw)):
            check_norm_modules(net, xt_stack_cfg(dim, kw), conv)
            touched += [P + t for t in perturb(net, xt_stack_cfg(dim, kw), conv, gen)]
        model.eval()
        with torch.no_grad():
            greedy = model.generate(src[:1], start, XT_GREEDY, mask=src_mask[:1], temperature=0., cache_kv=True)
            step_logits = xt_greedy_steps(model, src[:1], src_mask[:1], greedy)
        top2 = step_logits.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
        if margin >= 1e-2:
            break
    else:
        raise SystemExit(f"[{name}] no seed gave a greedy margin >= 1e-2")
    assert greedy.shape == (1, XT_GREEDY), greedy.shape                          # new tokens only
    assert torch.equal(step_logits.argmax(-1), greedy[0]), "greedy is not the argmax of the decoder logits"
    greedy_nc = model.generate(src[:1], start, XT_GREEDY, mask=src_mask[:1], temperature=0., cache_kv=False)
    if not torch.equal(greedy, greedy_nc):
        raise SystemExit(f"[{name}] cache_kv=True gives {greedy.tolist()}, cache_kv=False {greedy_nc.tolist()}")

    with torch.no_grad():
        encoded = model.encoder(src, mask=src_mask, return_embeddings=True)
        logits = model.decoder.net(dec_in[:, :-1], context=encoded, context_mask=src_mask)
        logits_full = model.decoder.net(dec_in, context=encoded, context_mask=src_mask)[:, :-1]
        loss = model(src, tgt, mask=src_mask)
    assert encoded.shape == (B, XT_SRC, dim) and logits.shape == (B, XT_TGT - 1, XT_VOCAB)
    assert torch.allclose(logits, logits_full, atol=1e-5), "causality: net(x)[:, :-1] != net(x[:, :-1])"
    ce = F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=XT_IGNORE)
    assert abs(ce.item() - loss.item()) < 1e-5, (ce.item(), loss.item())

    # independent forward, every single wrong convention must miss, release facts
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref_enc, ref = reference_xt(sd, config, conv, src, src_mask, dec_in[:, :-1])
    err_enc = (ref_enc - encoded).abs().max().item()
    err = (ref - logits).abs().max().item()
    assert err_enc < 1e-4 and err < 1e-4, f"[{name}] reference forward differs: encoded {err_enc}, logits {err}"
    sd64 = {k: (v if k.endswith("inv_freq") else v.double()) for k, v in sd.items()}
    err64 = (reference_xt(sd64, config, conv, src, src_mask, dec_in[:, :-1])[1] - logits.double()).abs().max().item()
    flip_err = {}
    for flip in xt_flips_for(config, conv):
        if flip is None:
            continue
        d = (reference_xt(sd, config, conv, src, src_mask, dec_in[:, :-1], flip=flip)[1] - logits).abs().max().item()
        assert d > 1e-2, f"[{name}] flipping {flip} changes logits by only {d}: fixture cannot discriminate"
        flip_err[flip] = d
    facts = xt_observe_facts(model, config, conv, sd, src, src_mask, dec_in[:, :-1], encoded, logits)
    facts["greedy"] = (f"temperature=0. is argmax (the {XT_GREEDY} cached greedy tokens equal the argmax of one "
                       "uncached decoder pass over [1, greedy[:-1]]); cache_kv=True and cache_kv=False give the same "
                       "tokens")

    tensors = {k: v.contiguous() for k, v in sd.items()}       # clone above: tied names are separate tensors
    tensors["fixture.src"] = src.contiguous()
    tensors["fixture.src_mask"] = src_mask.contiguous()
    tensors["fixture.tgt"] = tgt.contiguous()
    tensors["fixture.encoded"] = encoded.contiguous()
    tensors["fixture.logits"] = logits.contiguous()
    tensors["fixture.loss"] = loss.detach().reshape(1).contiguous()
    tensors["fixture.greedy"] = greedy.to(torch.long).contiguous()
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64, torch.bool), (k, v.dtype)

    conv_meta = {}
    for side, kw in (("encoder", enc_kw), ("decoder", dec_kw)):
        nc = conv["rmsnorm"] if kw.get("use_rmsnorm") else conv["layernorm"]
        conv_meta.setdefault("norm", nc)
        assert conv_meta["norm"] == nc, "both stacks use the same norm here"
        if kw.get("rotary_pos_emb"):
            conv_meta.setdefault("rotary", {
                "dim": f"{conv['rotary_dim']} = {rotary_dim_of(conv, kw['attn_dim_head'])}",
                "layout": conv["rotary_layout"] + (
                    ": pairs (i, i + rd/2) rotate by pos * inv_freq[i] (rotate_half on halves)"
                    if conv["rotary_layout"] == "half" else ": pairs (2i, 2i+1) rotate by pos * inv_freq[i]"),
                "where": "self-attention q/k of both stacks (positions 0..T-1); never cross-attention"})
    conv_meta["to_logits"] = conv["to_logits"] + " (decoder.net.to_logits; encoder.to_logits exists but is unused)"
    meta = {
        "config": json.dumps(config),
        "x_transformers_version": version,
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "description": spec["description"] + f" Built with x-transformers {version}; weights are the default init "
                       f"(seed {seed}) with the norm tensors perturbed, no training.",
        "conventions": json.dumps(conv_meta),
        "facts": json.dumps(facts),
        **xt_tensor_notes(),
        "perturbation": f"norm gains += N(0, {PERTURB['gain_std']}^2), norm biases += N(0, {PERTURB['bias_std']}^2) "
                        f"(one torch.Generator seed {seed}, encoder first, then decoder.net); to_logits biases keep "
                        f"nn.Linear's default (nonzero) init; tensors: " + ", ".join(touched),
        "src": f"I64 (B, {XT_SRC}) sources (torch.Generator seed {XT_DATA_SEED}, as tools/xt_fixture.py), lengths "
               f"{list(XT_FIXTURE_LENS)}: content ids then {XT_PAD}-padding",
        "generate": json.dumps({"call": f"model.generate(src[:1], [[{XT_START}]], {XT_GREEDY}, mask=src_mask[:1], "
                                        "temperature=0., cache_kv=True)", "returns": "new tokens only",
                                "seq_len": XT_GREEDY, "temperature": 0.0, "cache_kv": True}),
        "greedy": f"I64 (1, {XT_GREEDY}) the generate call above (cache_kv=False gives the same tokens)",
        "greedy_min_margin": f"{margin:.4f}",
    }
    path = os.path.join(out_dir, f"legacy_{version}_{name}.safetensors")
    loaded, meta_back = write_and_reload(path, tensors, meta)

    # verify: rebuild from the config metadata alone (another init seed), bit-identical encoded/logits/loss, greedy
    torch.manual_seed(0)
    model2 = XTransformer(**json.loads(meta_back["config"])).eval()
    model2.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("fixture.")}, strict=True)
    s2, m2, t2 = loaded["fixture.src"], loaded["fixture.src_mask"], loaded["fixture.tgt"]
    with torch.no_grad():
        re_enc = model2.encoder(s2, mask=m2, return_embeddings=True)
        re_logits = model2.decoder.net(xt_decoder_input(t2)[:, :-1], context=re_enc, context_mask=m2)
        re_loss = model2(s2, t2, mask=m2)
    for what, a, b in (("encoded", re_enc, loaded["fixture.encoded"]), ("logits", re_logits, loaded["fixture.logits"]),
                       ("loss", re_loss.reshape(1), loaded["fixture.loss"])):
        if not torch.equal(a, b):
            raise SystemExit(f"[{name}] {what} from saved weights differs by {(a - b).abs().max().item()}")
    if config.get("tie_token_emb"):
        assert torch.equal(loaded["encoder.token_emb.emb.weight"], loaded["decoder.net.token_emb.emb.weight"])
    for cache_kv in (True, False):
        g2 = model2.generate(s2[:1], start, XT_GREEDY, mask=m2[:1], temperature=0., cache_kv=cache_kv)
        assert torch.equal(g2, loaded["fixture.greedy"]), f"greedy (cache_kv={cache_kv}) from saved weights differs"

    print(f"[{name}] wrote {path}: {file_summary(path)}, seed {seed}, loss {loss.item():.6f}, "
          f"greedy {greedy[0].tolist()} (min margin {margin:.4f}); reference fp32 err encoded {err_enc:.2g} logits "
          f"{err:.2g}, fp32-vs-fp64 {err64:.2g}; max |logit| {logits.abs().max().item():.3g}; single wrong "
          f"convention misses by " + ", ".join(f"{k} {v:.3g}" for k, v in flip_err.items()))
    for k, v in facts.items():
        print(f"    fact {k}: {v}")
    for k, s in want.items():
        print(f"    {k} {s}")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=["all"],
                    help=f"config names or 'all' (= the decoder configs): {', '.join(CONFIGS)}")
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--expect-version", default=None, help="fail unless this x-transformers version is imported")
    ap.add_argument("--pretend-torch", default=None, metavar="V",
                    help="import the release while torch.__version__ reads V (e.g. 2.0.1: the torch < 2.1 LayerNorm "
                         "of 1.27.1 .. 1.30.23); files are named legacy_<version>_torch<V>_<config>.safetensors")
    args = ap.parse_args(argv)
    version = importlib.metadata.version("x-transformers")
    here = os.path.dirname(os.path.abspath(x_transformers.__file__))
    print(f"x-transformers {version} from {here}; torch {torch.__version__}")
    if args.expect_version and version != args.expect_version:
        raise SystemExit(f"imported x-transformers {version}, expected {args.expect_version} (check PYTHONPATH)")
    # the metadata and the imported code must be the same install (a --target dir holds both)
    dist_files = importlib.metadata.distribution("x-transformers").locate_file("x_transformers")
    if os.path.realpath(str(dist_files)) != os.path.realpath(here):
        raise SystemExit(f"version metadata ({dist_files}) and imported code ({here}) come from different installs")
    if PRETEND_TORCH:
        print(f"the release was imported with torch.__version__ = {PRETEND_TORCH!r} (really {REAL_TORCH_VERSION})")
    conv = conventions(version, RELEASE_TORCH_VERSION)
    print(json.dumps(conv, indent=1))
    decoder_names = [n for n in CONFIGS if CONFIGS[n].get("kind", "decoder") == "decoder"]
    names = decoder_names if (not args.names or "all" in args.names) else args.names
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown config {n!r}; known: {', '.join(CONFIGS)}")
        if CONFIGS[n].get("kind", "decoder") == "xtransformer":
            make_xt_fixture(n, args.out, version)
        else:
            make_fixture(n, args.out, version)


if __name__ == "__main__":
    main()
