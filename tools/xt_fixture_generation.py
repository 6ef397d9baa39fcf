#!/usr/bin/env python3
"""Golden fixtures of x-transformers' generation strategies (release 2.31.10), for tests/unit/test_generation.cpp.

    python3 tools/xt_fixture_generation.py --out tests/fixtures

Writes
  generation_expert.safetensors   a rotary Decoder (vocabulary 24) trained briefly on a repeating pattern, and
      fixture.prompts (2, 4)              the prompts
      fixture.beam_tokens (4, 2, 6)       beam_search(prompts, 6, beams=4, return_beams_and_scores=True), in float64
      fixture.beam_scores (4, 2)          its scores (Σ log p), float64; the same with cache_kv False (checked here)
      fixture.contrastive_greedy (2, 6)   generate(prompts, 6, temperature=0, amateur_model=amateur,
                                          contrastive_decode_kwargs=dict(alpha=0.05, beta=1.0)), float64
      fixture.cd_expert, fixture.cd_amateur (3, 24) fixed logits; fixture.cd_out = contrastive_decode_fn(expert,
                                          amateur, alpha=0.2, beta=0.7) (float32: the -finfo.max fill included)
      fixture.ragged_prompts (3, 5), fixture.ragged_lens (3), fixture.ragged_greedy (3, 6): generate with
                                          prompt_lens (left padding, seq_start_pos), float64, for an absolute-position
                                          model too (generation_absolute.safetensors, same layout)
                                          (float32: see below)
  generation_amateur.safetensors  a one-layer Decoder of the same vocabulary, trained less.
Metadata: `config` (the x-transformers description) and `x_transformers_version`, as the other fixtures.
Python is only a tool here: nothing in the C++ build or tests runs this.
"""
import argparse
import importlib.metadata
import json
import os

import torch
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper
from x_transformers.autoregressive_wrapper import contrastive_decode_fn

from fixture_io import file_summary, write_and_reload

VOCAB = 24
EXPERT = {"num_tokens": VOCAB, "max_seq_len": 32,
          "attn_layers": {"type": "Decoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16,
                          "rotary_pos_emb": True}}
ABSOLUTE = {"num_tokens": VOCAB, "max_seq_len": 32,
            "attn_layers": {"type": "Decoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16}}
AMATEUR = {"num_tokens": VOCAB, "max_seq_len": 32,
           "attn_layers": {"type": "Decoder", "dim": 32, "depth": 1, "heads": 2, "attn_dim_head": 16,
                           "rotary_pos_emb": True}}


def build(config):
    cfg = json.loads(json.dumps(config))
    al = cfg.pop("attn_layers")
    assert al.pop("type") == "Decoder"
    return TransformerWrapper(**cfg, attn_layers=Decoder(**al))


def train(model, steps, seed):
    """A few Adam steps on noisy copies of a repeating pattern: peaked but not degenerate distributions."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, VOCAB, (8, 1), generator=gen)
        x = (start + torch.arange(17)[None] * 5) % VOCAB
        noise = torch.rand(x.shape, generator=gen) < 0.45
        x = torch.where(noise, torch.randint(0, VOCAB, x.shape, generator=gen), x)
        loss = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def meta_of(config):
    return {"config": json.dumps(config, sort_keys=False),
            "x_transformers_version": importlib.metadata.version("x-transformers")}


def weights_of(net):
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    torch.manual_seed(11)
    expert = AutoregressiveWrapper(build(EXPERT))
    print("expert loss", train(expert, 60, 1))
    torch.manual_seed(12)
    amateur = AutoregressiveWrapper(build(AMATEUR))
    print("amateur loss", train(amateur, 15, 2))
    torch.manual_seed(13)
    absolute = AutoregressiveWrapper(build(ABSOLUTE))
    print("absolute loss", train(absolute, 60, 3))

    expert_w, amateur_w, absolute_w = (weights_of(m.net) for m in (expert, amateur, absolute))
    # ragged prompts in float32: in float64, 2.31.10's left-padded rows come out NaN (fully masked query rows)
    ragged_prompts = torch.tensor([[3, 8, 13, 18, 23], [7, 1, 0, 0, 0], [11, 16, 21, 0, 0]], dtype=torch.long)
    ragged_lens = torch.tensor([5, 2, 3])
    with torch.no_grad():
        ragged = expert.generate(ragged_prompts, 6, temperature=0., prompt_lens=ragged_lens)
        ragged_abs = absolute.generate(ragged_prompts, 6, temperature=0., prompt_lens=ragged_lens)
    for i in range(3):  # each row as it would be alone
        alone = expert.generate(ragged_prompts[i:i + 1, :ragged_lens[i]], 6, temperature=0.)
        assert torch.equal(alone[0], ragged[i]), (i, alone, ragged[i])
        alone = absolute.generate(ragged_prompts[i:i + 1, :ragged_lens[i]], 6, temperature=0.)
        assert torch.equal(alone[0], ragged_abs[i]), (i, alone, ragged_abs[i])

    # every computation below in float64, from the float32 weights as stored
    for m in (expert, amateur, absolute):
        m.double()

    prompts = torch.tensor([[3, 8, 13, 18], [7, 1, 20, 2]], dtype=torch.long)
    with torch.no_grad():
        beams, scores = expert.beam_search(prompts, 6, beams=4, return_beams_and_scores=True)
        beams_nc, scores_nc = expert.beam_search(prompts, 6, beams=4, return_beams_and_scores=True, cache_kv=False)
        assert torch.equal(beams, beams_nc) and torch.allclose(scores, scores_nc, atol=1e-9)
        greedy1 = expert.generate(prompts, 6, temperature=0.)
        contrastive = expert.generate(prompts, 6, temperature=0., amateur_model=amateur,
                                      contrastive_decode_kwargs=dict(alpha=0.05, beta=1.0))
        contrastive_nc = expert.generate(prompts, 6, temperature=0., amateur_model=amateur,
                                         contrastive_decode_kwargs=dict(alpha=0.05, beta=1.0), cache_kv=False)
        assert torch.equal(contrastive, contrastive_nc)
        assert not torch.equal(contrastive, greedy1), "the amateur changes nothing: pick other models"
    gen = torch.Generator().manual_seed(5)
    cd_expert = torch.randn(3, VOCAB, generator=gen) * 3
    cd_amateur = torch.randn(3, VOCAB, generator=gen) * 3
    cd_out = contrastive_decode_fn(cd_expert, cd_amateur, alpha=0.2, beta=0.7)

    def fixture(extra, ragged_out):
        out = dict(extra)
        out.update({
            "fixture.prompts": prompts, "fixture.ragged_prompts": ragged_prompts,
            "fixture.ragged_lens": ragged_lens.to(torch.long), "fixture.ragged_greedy": ragged_out,
        })
        return out

    expert_file = fixture(expert_w, ragged)
    expert_file.update({
        "fixture.beam_tokens": beams, "fixture.beam_scores": scores.to(torch.float64),
        "fixture.contrastive_greedy": contrastive, "fixture.greedy": greedy1,
        "fixture.cd_expert": cd_expert, "fixture.cd_amateur": cd_amateur, "fixture.cd_out": cd_out,
    })
    for name, tensors, config in (("generation_expert", expert_file, EXPERT),
                                  ("generation_amateur", amateur_w, AMATEUR),
                                  ("generation_absolute", fixture(absolute_w, ragged_abs), ABSOLUTE)):
        path = os.path.join(args.out, name + ".safetensors")
        write_and_reload(path, {k: v.contiguous() for k, v in tensors.items()}, meta_of(config))
        print(path, file_summary(path))
    print("beams", beams.tolist(), "scores", scores.tolist())
    print("contrastive", contrastive.tolist(), "greedy", greedy1.tolist())
    print("ragged", ragged.tolist(), ragged_abs.tolist())


if __name__ == "__main__":
    main()
