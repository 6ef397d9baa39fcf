#!/usr/bin/env python3
"""Peer benchmark for beam search: x-transformers' AutoregressiveWrapper.beam_search on PyTorch (CPU).

    python3 tools/bench_peer_generation.py beam [--threads N]

Modelled on /work/shared/peer/bench_xt.py (same models: num_tokens 256, Decoder with rotary_pos_emb=True, default
pre-LayerNorm, GELU feed-forward, dim_head 64; configs small and enwik8; torch.manual_seed(0)). One JSON line per
config on stdout: bench "beam_search", batch 1, a 16-token random prompt, 64 new tokens, beams 4, cache_kv=True,
eval mode, no grad; one untimed warm-up call of 8 tokens, then 3 timed calls; best_s = the fastest;
tokens_per_s = 64 / best_s (new tokens of the returned best beam per second). xtr_bench --bench beam_search times
the same.
"""
import argparse
import importlib.metadata
import json
import time

import torch

import x_transformers
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

CONFIGS = {"small": (256, 4, 4, 256), "enwik8": (512, 6, 8, 1024)}  # dim, depth, heads, seq_len


@torch.no_grad()
def bench_beam(name, beams=4, new_tokens=64, prompt=16):
    dim, depth, heads, seq = CONFIGS[name]
    model = AutoregressiveWrapper(TransformerWrapper(num_tokens=256, max_seq_len=seq, attn_layers=Decoder(
        dim=dim, depth=depth, heads=heads, rotary_pos_emb=True))).eval()
    p = torch.randint(0, 256, (1, prompt))
    model.beam_search(p, 8, beams=beams, cache_kv=True)
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        model.beam_search(p, new_tokens, beams=beams, cache_kv=True)
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"peer": "x-transformers", "x_transformers": importlib.metadata.version("x-transformers"),
        "torch": torch.__version__, "bench": "beam_search", "config": name,
        "batch": 1, "beams": beams, "new_tokens": new_tokens, "best_s": round(best, 4),
        "tokens_per_s": round(new_tokens / best, 1)}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["beam"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in CONFIGS:
        bench_beam(name)
