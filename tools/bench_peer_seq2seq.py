#!/usr/bin/env python3
"""Peer benchmark for the encoder-decoder workflow: x-transformers' XTransformer on PyTorch (CPU).

    python3 tools/bench_peer_seq2seq.py [train|generate|all] [--steps N] [--threads N]

Modelled on /work/shared/peer/bench_xt.py: one JSON line per measurement on stdout, nothing else on stdout.

Model, config "copy" (and "copy_b32", the same model): the x-transformers README enc-dec copy example,
    XTransformer(dim=128, tie_token_emb=True,
                 enc_num_tokens=18, enc_depth=3, enc_heads=8, enc_max_seq_len=32,
                 dec_num_tokens=18, dec_depth=3, dec_heads=8, dec_max_seq_len=65)
(`return_tgt_loss` is not a keyword in 2.x and is left out). Defaults otherwise: dim_head 64 (so inner attention
width 8 * 64 = 512 != dim), absolute learned positions, LayerNorm, GELU feed-forward (mult 4), no dropout; the
decoder has cross-attention after each self-attention; token embeddings tied between encoder and decoder (the
decoder's logits head is NOT tied). torch.manual_seed(0) before building; torch.set_num_threads(--threads, default 2).

Data: src = random ids in [2, 18) of shape (batch, 32); tgt = cat([1], src, src) of shape (batch, 65);
mask = all-true (batch, 32) bool, passed as the encoder mask and the decoder's cross-attention context mask.

Benches (one JSON line each):

  bench "seq2seq_train", config "copy": batch 32. One step = loss = model(src, tgt, mask=mask) (the decoder's
    AutoregressiveWrapper: input tgt[:, :-1], labels tgt[:, 1:], mean cross-entropy), loss.backward(),
    Adam(lr=3e-4).step(), zero_grad(). The same fixed batch every step. 1 untimed warm-up step, then --steps timed
    steps (default 10); median_s = sorted(times)[steps // 2] (the upper median for even counts, as bench_xt.py).
    src_tokens = 32 * 32 = 1024 and tgt_tokens = 32 * 64 = 2048 per step (tgt tokens = predicted positions).
        tokens_per_s = tgt_tokens / median_s = batch * 64 / median_s      (target tokens per second)

  bench "seq2seq_generate", config "copy" (batch 1) and "copy_b32" (batch 32), eval mode, no grad:
    out = model.generate(src, start, 64, mask=mask, cache_kv=True) with start = ones (batch, 1) (token 1) and the
    default sampling (temperature 1.0, top_k filter keeping ceil(0.1 * 18) = 2 logits, multinomial). One call =
    the encoder forward once + 64 decoder steps with a self-attention kv cache; the cross-attention keys/values are
    computed from the encodings on the first step and then reused from the cache. 1 untimed warm-up call, then
    3 timed calls; best_s = the fastest.
        tokens_per_s = batch * new_tokens / best_s = batch * 64 / best_s  (generated tokens per second, all rows;
                                                                           64 / best_s for batch 1)

Fields: peer, x_transformers, torch (versions), bench, config, batch, src_len (32), tgt_len (64: predicted/generated
positions), threads, params (unique parameters, tied embedding counted once), then for train: steps, median_s,
src_tokens, tgt_tokens, tokens_per_s, loss (last step); for generate: new_tokens, runs, best_s, tokens_per_s.
"""
import argparse
import json
import time
import warnings
from importlib.metadata import PackageNotFoundError, version

warnings.filterwarnings("ignore", category=FutureWarning)   # torch.jit.script deprecation on import

import torch
from x_transformers import XTransformer

NUM_TOKENS, SRC_LEN, TGT_LEN, NEW_TOKENS = 18, 32, 64, 64
GEN_CONFIGS = {"copy": 1, "copy_b32": 32}      # config -> batch
TRAIN_BATCH = 32


def xt_version():
    try:
        return version("x-transformers")
    except PackageNotFoundError:
        return "unknown"


def make():
    torch.manual_seed(0)
    return XTransformer(dim=128, tie_token_emb=True,
                        enc_num_tokens=NUM_TOKENS, enc_depth=3, enc_heads=8, enc_max_seq_len=SRC_LEN,
                        dec_num_tokens=NUM_TOKENS, dec_depth=3, dec_heads=8, dec_max_seq_len=TGT_LEN + 1)


def data(batch):
    src = torch.randint(2, NUM_TOKENS, (batch, SRC_LEN))
    tgt = torch.cat((torch.ones(batch, 1, dtype=torch.long), src, src), dim=1)
    mask = torch.ones(batch, SRC_LEN, dtype=torch.bool)
    return src, tgt, mask


def common(model, bench, config, batch, threads):
    return {"peer": "x-transformers", "x_transformers": xt_version(), "torch": torch.__version__, "bench": bench,
            "config": config, "batch": batch, "src_len": SRC_LEN, "tgt_len": TGT_LEN, "threads": threads,
            "params": sum(p.numel() for p in model.parameters())}


def bench_train(steps, threads):
    model = make().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    src, tgt, mask = data(TRAIN_BATCH)
    times, loss = [], None
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = model(src, tgt, mask=mask); loss.backward(); opt.step(); opt.zero_grad()
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])
    med = times[len(times) // 2]
    src_tokens, tgt_tokens = TRAIN_BATCH * SRC_LEN, TRAIN_BATCH * TGT_LEN
    print(json.dumps({**common(model, "seq2seq_train", "copy", TRAIN_BATCH, threads), "steps": steps,
                      "median_s": round(med, 4), "src_tokens": src_tokens, "tgt_tokens": tgt_tokens,
                      "tokens_per_s": round(tgt_tokens / med, 1), "loss": round(loss.item(), 4)}), flush=True)


@torch.no_grad()
def bench_generate(config, threads, runs=3):
    batch = GEN_CONFIGS[config]
    model = make().eval()
    src, _, mask = data(batch)
    start = torch.ones(batch, 1, dtype=torch.long)
    model.generate(src, start, NEW_TOKENS, mask=mask, cache_kv=True)      # warm-up
    best = 1e9
    for _ in range(runs):
        t = time.perf_counter()
        out = model.generate(src, start, NEW_TOKENS, mask=mask, cache_kv=True)
        best = min(best, time.perf_counter() - t)
    assert out.shape == (batch, NEW_TOKENS), out.shape
    print(json.dumps({**common(model, "seq2seq_generate", config, batch, threads), "new_tokens": NEW_TOKENS,
                      "runs": runs, "best_s": round(best, 4),
                      "tokens_per_s": round(batch * NEW_TOKENS / best, 1)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=("train", "generate", "all"), default="all")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps after 1 warm-up (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    torch.set_num_threads(args.threads)
    if args.what in ("train", "all"):
        bench_train(args.steps, args.threads)
    if args.what in ("generate", "all"):
        for config in GEN_CONFIGS:
            bench_generate(config, args.threads)


if __name__ == "__main__":
    main()
