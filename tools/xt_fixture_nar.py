#!/usr/bin/env python3
"""Golden fixtures of x-transformers' NonAutoregressiveWrapper, for xtr's parity tests.

For each named configuration this script builds
    NonAutoregressiveWrapper(TransformerWrapper(num_tokens, max_seq_len, attn_layers=Encoder(...)), **wrapper)
trains it briefly with its own masking recipe (Adam, random windows of exactly max_seq_len tokens of the text embedded
in tools/xt_fixture.py), and writes ONE file
    <out>/<name>.safetensors
holding the wrapper's state dict under x-transformers' names (`net.…`; with self_cond also `null_embed` and
`to_self_cond.weight`), plus
    fixture.tokens  (I64, (B, n))       held-out windows, n = max_seq_len
    fixture.input   (I64, (B, n))       a corruption of them: masked positions hold MASK_ID, a random other token,
                                        or their own token (no_replace), the rest are unchanged
    fixture.mask    (BOOL, (B, n))      the masked positions (where the loss counts, kept ones included)
    fixture.logits  (F32, (B, n, V))    net(input, sum_embeds = to_self_cond(e)) (without self_cond: net(input)),
                                        e = net(input, return_embeddings=True) (the self-conditioning first pass)
    fixture.loss    (F32, (1,))         F.cross_entropy(logits[mask], tokens[mask]): the wrapper's generator loss
    grad.<param>    (F32, like <param>) d fixture.loss / d param, one backward from zeroed grads (the first pass
                                        detached, as in the wrapper)
and with self_cond also the null path (the wrapper's other branch, e = null_embed for every position):
    fixture.loss_null                   the loss with e = null_embed
    grad_null.null_embed, grad_null.to_self_cond.weight   its gradients of the wrapper's own parameters

The loss is computed here from the corruption with the wrapper's own modules, because the wrapper draws its corruption
inside forward(). Before writing, the script checks that this computation IS the wrapper's: with no_replace_prob and
random_token_prob set to 0 (so the mask is visible as input == MASK_ID) and self_cond_train_prob 0 or 1, the real
wrapper.forward's loss equals the recomputed one for several seeds. Generation is not compared (x-transformers samples
with Gumbel noise at temperature >= 1e-3 and re-masks by sorting probabilities that are then all ~1: ties).

Usage:
    python3 tools/xt_fixture_nar.py [names...|all] [--out tests/fixtures]
Python is only a tool here: nothing in the C++ build or tests runs this script.
"""
import argparse
import importlib.metadata
import json
import os
import random
import sys

import torch
import torch.nn.functional as F

import safetensors

sys.dont_write_bytecode = True  # no tools/__pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import file_summary, write_and_reload  # noqa: E402
from xt_fixture import (HELD_OUT_TEXT, NUM_TOKENS, SEED, TRAIN_TEXT, VOCAB, build, encode, setup_torch,  # noqa: E402
                        train_adam)
from x_transformers import NonAutoregressiveWrapper  # noqa: E402

MASK_ID = NUM_TOKENS - 1  # never occurs in the text
SEQ = 24                  # max_seq_len: NAR rows are exactly this long
BATCH = 2
TRAIN = dict(steps=300, lr=3e-3, batch=16, optimizer="torch.optim.Adam (default betas/eps)")

CONFIGS = {
    "nar_rotary_layernorm": dict(
        config={"num_tokens": NUM_TOKENS, "max_seq_len": SEQ,
                "attn_layers": {"type": "Encoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                                "rotary_pos_emb": True}},
        wrapper={"mask_id": MASK_ID, "steps": 8, "self_cond": False, "no_replace_prob": 0.15,
                 "random_token_prob": 0.1, "use_simple_mdlm_loss_weight": False},
        description="NonAutoregressiveWrapper around an Encoder with rotary positions, pre-LayerNorm, GELU "
                    "feed-forward; no self-conditioning.",
    ),
    "nar_selfcond_absolute_rmsnorm_swiglu": dict(
        config={"num_tokens": NUM_TOKENS, "max_seq_len": SEQ,
                "attn_layers": {"type": "Encoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                                "use_rmsnorm": True, "ff_glu": True, "ff_swish": True}},
        wrapper={"mask_id": MASK_ID, "steps": 8, "self_cond": True, "self_cond_train_prob": 0.75,
                 "no_replace_prob": 0.15, "random_token_prob": 0.1, "use_simple_mdlm_loss_weight": False},
        description="NonAutoregressiveWrapper with self-conditioning (null_embed, to_self_cond) around an Encoder "
                    "with learned absolute positions, pre-RMSNorm, SwiGLU feed-forward.",
    ),
}


def generator_loss(model, tokens, inp, mask, self_condition):
    """The wrapper's generator loss for a given corruption: (loss, logits). self_condition: the first pass's
    embeddings (True) or null_embed (False); ignored without self_cond."""
    kwargs = {}
    if model.self_cond:
        if self_condition:
            with torch.no_grad():
                e = model.net(inp, return_embeddings=True).detach()
        else:
            e = model.null_embed
        kwargs["sum_embeds"] = model.to_self_cond(e)
    logits = model.net(inp, **kwargs)
    return F.cross_entropy(logits[mask], tokens[mask]), logits


def check_recomputation(model, tokens):
    """The real wrapper.forward's loss equals generator_loss on the corruption it drew (made visible by turning the
    replacement variants off) for self_cond_train_prob 0 and 1 and several seeds."""
    saved = (model.no_replace_prob, model.random_token_prob, getattr(model, "self_cond_train_prob", None))
    model.no_replace_prob = model.random_token_prob = 0.
    seen = []
    hook = model.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    worst = 0.
    try:
        for prob in ((0., 1.) if model.self_cond else (None,)):
            if prob is not None:
                model.self_cond_train_prob = prob
            for seed in range(5):
                seen.clear()
                torch.manual_seed(SEED + 100 + seed)
                real = model(tokens).loss
                inp = seen[-1]                      # the net's last input: the corrupted batch
                mask = inp == MASK_ID
                mine, _ = generator_loss(model, tokens, inp, mask, prob == 1.)
                worst = max(worst, abs(real.item() - mine.item()))
                assert abs(real.item() - mine.item()) <= 1e-6, (prob, seed, real.item(), mine.item())
    finally:
        hook.remove()
        model.no_replace_prob, model.random_token_prob = saved[0], saved[1]
        if saved[2] is not None:
            model.self_cond_train_prob = saved[2]
    return worst


def corruption(tokens, wrapper, gen):
    """A corruption by the recipe: per row k = ceil(0.5 n) positions; of those, kept / random token / MASK_ID with
    the wrapper's fractions (drawn here with a fixed generator; random tokens are never MASK_ID)."""
    b, n = tokens.shape
    inp, mask = tokens.clone(), torch.zeros(b, n, dtype=torch.bool)
    for r in range(b):
        for j in torch.randperm(n, generator=gen)[: (n + 1) // 2].tolist():
            mask[r, j] = True
            u = torch.rand((), generator=gen).item()
            if u < wrapper["no_replace_prob"]:
                continue
            if u < wrapper["no_replace_prob"] + wrapper["random_token_prob"]:
                inp[r, j] = int(torch.randint(0, MASK_ID, (), generator=gen))
            else:
                inp[r, j] = MASK_ID
    return inp, mask


def make_nar_fixture(name, out_dir):
    spec = CONFIGS[name]
    config, wkw = spec["config"], spec["wrapper"]
    setup_torch()
    torch.manual_seed(SEED)
    random.seed(SEED)  # the wrapper's coin flips and self-conditioning draws use Python's random
    model = NonAutoregressiveWrapper(build(config), **wkw)

    data = torch.tensor(encode(TRAIN_TEXT * 4), dtype=torch.long)
    gen = torch.Generator().manual_seed(SEED)

    def step_loss():
        starts = torch.randint(0, len(data) - SEQ, (TRAIN["batch"],), generator=gen)
        return model(torch.stack([data[s: s + SEQ] for s in starts.tolist()])).loss

    losses = train_adam(model, TRAIN["steps"], TRAIN["lr"], step_loss)
    first, last = losses[0], losses[-1]
    print(f"[{name}] trained {TRAIN['steps']} steps: loss {first:.4f} -> {last:.4f}")

    held = encode(HELD_OUT_TEXT)
    tokens = torch.tensor([held[0: SEQ], held[len(held) // 2: len(held) // 2 + SEQ]], dtype=torch.long)
    model.eval()
    worst = check_recomputation(model, tokens)
    inp, mask = corruption(tokens, wkw, torch.Generator().manual_seed(SEED + 1))
    kinds = {"mask_id": int(((inp == MASK_ID) & mask).sum()), "kept": int(((inp == tokens) & mask).sum()),
             "random": int(((inp != tokens) & (inp != MASK_ID) & mask).sum())}
    assert all(v > 0 for v in kinds.values()), kinds

    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    model.zero_grad(set_to_none=True)
    loss, logits = generator_loss(model, tokens, inp, mask, True)
    loss.backward()
    for k, p in model.named_parameters():
        assert p.grad is not None or k in ("null_embed",), k
        if p.grad is not None:
            tensors["grad." + k] = p.grad.detach().clone().contiguous()
    if model.self_cond:
        model.zero_grad(set_to_none=True)
        loss_null, _ = generator_loss(model, tokens, inp, mask, False)
        loss_null.backward()
        tensors["fixture.loss_null"] = loss_null.detach().reshape(1)
        for k in ("null_embed", "to_self_cond.weight"):
            tensors["grad_null." + k] = dict(model.named_parameters())[k].grad.detach().clone().contiguous()
    tensors["fixture.tokens"] = tokens
    tensors["fixture.input"] = inp
    tensors["fixture.mask"] = mask
    tensors["fixture.logits"] = logits.detach().contiguous()
    tensors["fixture.loss"] = loss.detach().reshape(1)

    meta = {
        "config": json.dumps(config),
        "wrapper": json.dumps(wkw),
        "x_transformers_version": importlib.metadata.version("x-transformers"),
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "description": spec["description"],
        "vocab": VOCAB,
        "train": json.dumps({**TRAIN, "seed": SEED, "window": SEQ, "first_loss": round(first, 4),
                             "last_loss": round(last, 4)}),
        "corruption": json.dumps({"positions_per_row": (SEQ + 1) // 2, **kinds, "generator_seed": SEED + 1}),
        "recomputation_check": f"wrapper.forward vs the recomputed loss, 5 seeds per branch: max |diff| {worst:.3g}",
    }
    path = os.path.join(out_dir, f"{name}.safetensors")
    loaded, _ = write_and_reload(path, tensors, meta)

    # rebuilt from the metadata alone, the logits come back bit for bit
    again = NonAutoregressiveWrapper(build(json.loads(meta["config"])), **json.loads(meta["wrapper"])).eval()
    again.load_state_dict({k: v for k, v in loaded.items() if not k.startswith(("fixture.", "grad"))}, strict=True)
    with torch.no_grad():
        _, re_logits = generator_loss(again, loaded["fixture.tokens"], loaded["fixture.input"],
                                      loaded["fixture.mask"], True)
    assert torch.equal(re_logits, loaded["fixture.logits"]), "rebuilt model differs"
    print(f"[{name}] wrote {path}: {file_summary(path)}; loss {loss.item():.6f}"
          + (f", null path {tensors['fixture.loss_null'].item():.6f}" if model.self_cond else "")
          + f"; corruption {kinds}; recomputation vs wrapper.forward max |diff| {worst:.3g}")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=["all"], help=f"config names or 'all': {', '.join(CONFIGS)}")
    ap.add_argument("--out", default="tests/fixtures", help="output folder (default tests/fixtures)")
    args = ap.parse_args(argv)
    names = list(CONFIGS) if (not args.names or "all" in args.names) else args.names
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown config {n!r}; known: {', '.join(CONFIGS)}")
        make_nar_fixture(n, args.out)


if __name__ == "__main__":
    main()
