#!/usr/bin/env python3
"""Round trip through xtr's xt_eval: the same numbers as x-transformers, and the weights back bit for bit.

    python3 tools/xt_roundtrip.py --xt-eval build/examples/xt_eval --config C.json --weights W.safetensors \
        --tokens T.json [--prompt-len 8] [--new-tokens 16] [--export OUT.safetensors]

e.g. for a golden fixture (its fixture.* and grad.* tensors are ignored here and passed to xt_eval as
`--ignore fixture.,grad.`; every other tensor must be a parameter or buffer of the model):

    python3 tools/xt_roundtrip.py --xt-eval build/examples/xt_eval \
        --config tests/fixtures/decoder_rotary_gqa_geglu.config.json \
        --weights tests/fixtures/decoder_rotary_gqa_geglu.safetensors \
        --tokens tests/fixtures/decoder_rotary_gqa_geglu.tokens.json

An XTransformer (C.json with enc_* / dec_* keywords and no attn_layers; T.json an object {"src": rows, "tgt": rows,
"src_mask": rows}, src_mask optional), e.g. for its golden fixture, whose greedy tokens start from [[1]]:

    python3 tools/xt_roundtrip.py --xt-eval build/examples/xt_eval \
        --config tests/fixtures/xtransformer_copy_tied.config.json \
        --weights tests/fixtures/xtransformer_copy_tied.safetensors \
        --tokens tests/fixtures/xtransformer_copy_tied.tokens.json --prompt-len 1 --new-tokens 24

Steps: build TransformerWrapper(attn_layers=Decoder|Encoder(...)) or XTransformer(**C) from C.json and load W with
strict=True; run `xt_eval --config C --weights W --tokens T --prompt-len P --new-tokens N --export OUT` (OUT in a
temporary folder unless --export is given) and read the JSON object it prints; then
  1. export: OUT holds exactly W's model tensors, each with the same dtype, shape and bits (torch.equal), and a fresh
     Python model accepts OUT with load_state_dict(strict=True) and then holds tensors equal to W's;
  2. loss: AutoregressiveWrapper(net)(tokens) (XTransformer: model(src, tgt, mask=src_mask)),
     |xt - py| <= 1e-5 * |py|;
  3. logits_sum: sum over every row of net(row[:-1]) (XTransformer: of model.decoder.net(tgt[:, :-1] with
     ignore_index -> pad_value, context=model.encoder(src, mask=src_mask, return_embeddings=True),
     context_mask=src_mask)), |xt - py| <= 1e-4 * sum |logits|;
  4. greedy: generate(tokens[:1, :P], N, temperature=0., cache_kv=True) (XTransformer: generate(src[:1],
     tgt[:1, :P], N, mask=src_mask[:1], temperature=0., cache_kv=True)), new tokens only, identical. An Encoder
     cannot generate in x-transformers: the check is skipped and xt_eval must print "greedy": null.
Everything runs in eval mode. Prints one line per check and exits 0 only if every check holds (1 on a difference or
bad input, 2 if xt_eval fails or prints no JSON object). --loss-rtol and --logits-rtol change the two tolerances.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

sys.dont_write_bytecode = True  # no tools/__pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xt_convert import build_model, import_x_transformers, is_xtransformer  # noqa: E402

IGNORED_PREFIXES = ("fixture.", "grad.")  # extra tensors of the golden fixtures


def python_values(net, tokens, prompt_len, new_tokens):
    wrapper = import_x_transformers().AutoregressiveWrapper(net).eval()
    with torch.no_grad():
        loss = wrapper(tokens).item()
        logits = net(tokens[:, :-1]).double()
        values = {"loss": loss, "logits_sum": logits.sum().item(), "logits_abs_sum": logits.abs().sum().item()}
    try:
        values["greedy"] = wrapper.generate(tokens[:1, :prompt_len], new_tokens, temperature=0.,
                                            cache_kv=True)[0].tolist()
    except Exception as e:  # e.g. an Encoder: x-transformers itself cannot decode it
        values["greedy_error"] = type(e).__name__ + (f": {e}" if str(e) else "")
    return values


def xtransformer_values(model, pair, prompt_len, new_tokens):
    src, tgt, mask = pair["src"], pair["tgt"], pair.get("src_mask")
    wrapper = model.decoder  # AutoregressiveWrapper(decoder net) with the model's ignore_index and pad_value
    with torch.no_grad():
        loss = model(src, tgt, mask=mask).item()
        encoded = model.encoder(src, mask=mask, return_embeddings=True)
        inputs = tgt[:, :-1].masked_fill(tgt[:, :-1] == wrapper.ignore_index, wrapper.pad_value)
        logits = wrapper.net(inputs, context=encoded, context_mask=mask).double()
        greedy = model.generate(src[:1], tgt[:1, :prompt_len], new_tokens, mask=None if mask is None else mask[:1],
                                temperature=0., cache_kv=True)
    return {"loss": loss, "logits_sum": logits.sum().item(), "logits_abs_sum": logits.abs().sum().item(),
            "greedy": greedy[0].tolist()}


def greedy_gap(next_logits, prompt, new_tokens, got):
    """Where xt's greedy tokens first differ: Python's top-1 - top-2 logit gap there (a near tie may excuse it).
    next_logits(seq) gives Python's logits for the token after `seq`."""
    seq = list(prompt)
    with torch.no_grad():
        for i in range(new_tokens):
            logits = next_logits(seq)
            top = logits.topk(2).values
            seq.append(int(logits.argmax()))
            if not isinstance(got, list) or i >= len(got) or got[i] != seq[-1]:
                return f"\n       first difference at new token {i}; python's top-1 - top-2 logit gap there: " \
                       f"{(top[0] - top[1]).item():.3g}"
    return ""


def read_tokens(path, xtransformer):
    """T.json as a (B, T) tensor, or for an XTransformer {"src", "tgt", "src_mask" (optional)} tensors."""
    with open(path) as f:
        data = json.load(f)
    if not xtransformer:
        if isinstance(data, dict):
            sys.exit(f"{path}: a Decoder or Encoder takes a JSON list of token rows, not an object")
        tokens = torch.tensor(data, dtype=torch.long)
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            sys.exit(f"{path}: need equal-length rows of >= 2 tokens; got shape {tuple(tokens.shape)}")
        return tokens
    if not isinstance(data, dict) or not {"src", "tgt"} <= set(data) or set(data) - {"src", "tgt", "src_mask"}:
        sys.exit(f"{path}: an XTransformer takes an object with keys src, tgt and optionally src_mask; got "
                 f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    pair = {"src": torch.tensor(data["src"], dtype=torch.long), "tgt": torch.tensor(data["tgt"], dtype=torch.long)}
    if "src_mask" in data:
        pair["src_mask"] = torch.tensor(data["src_mask"]).bool()
    if pair["src"].ndim != 2 or pair["tgt"].ndim != 2 or pair["tgt"].shape[1] < 2 \
            or pair["src"].shape[0] != pair["tgt"].shape[0] \
            or ("src_mask" in pair and pair["src_mask"].shape != pair["src"].shape):
        sys.exit(f"{path}: need src (B, S), tgt (B, T >= 2) and src_mask (B, S); got "
                 + ", ".join(f"{k} {tuple(v.shape)}" for k, v in pair.items()))
    return pair


def parse_json(stdout):
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        for line in reversed(stdout.splitlines()):
            if line.strip().startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    pass
    return None


def check_export(path, weights, config):
    """Differences between the exported file and W's model tensors; [] when it round-trips exactly."""
    problems = []
    try:
        out = load_file(path)
    except Exception as e:
        return [f"cannot read {path}: {e}"]
    for name in sorted(set(weights) - set(out)):
        problems.append(f"missing from export: {name}")
    for name in sorted(set(out) - set(weights)):
        problems.append(f"unexpected in export: {name} {out[name].dtype} {tuple(out[name].shape)}")
    for name in sorted(set(weights) & set(out)):
        a, b = out[name], weights[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{name}: exported {a.dtype} {tuple(a.shape)}, expected {b.dtype} {tuple(b.shape)}")
        elif not torch.equal(a, b):
            diff = (a.double() - b.double()).abs()
            problems.append(f"{name}: {int((diff > 0).sum())} of {b.numel()} values differ, "
                            f"max |diff| {diff.max().item():.3g}")
    fresh = build_model(config)
    try:
        fresh.load_state_dict(out, strict=True)
    except Exception as e:
        return problems + [f"load_state_dict(strict=True) refuses the export: {str(e)[:600]}"]
    for name, t in fresh.state_dict().items():
        if not torch.equal(t, weights[name]):
            problems.append(f"{name}: differs from W after load_state_dict")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xt-eval", required=True, help="path to the xt_eval binary")
    ap.add_argument("--config", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--export", help="where xt_eval writes its export (default: a temporary file, removed)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed for xt_eval")
    ap.add_argument("--loss-rtol", type=float, default=1e-5)
    ap.add_argument("--logits-rtol", type=float, default=1e-4, help="relative to sum |logits|")
    args = ap.parse_args()

    with open(args.config) as f:
        config = json.load(f)
    xtransformer = is_xtransformer(config)
    tokens = read_tokens(args.tokens, xtransformer)
    prompt_row = (tokens["tgt"] if xtransformer else tokens)[0]
    if not 0 < args.prompt_len <= prompt_row.shape[0]:
        sys.exit(f"--prompt-len {args.prompt_len} must be in [1, {prompt_row.shape[0]}] (the "
                 f"{'tgt ' if xtransformer else ''}row length)")
    weights = load_file(args.weights)
    ignored = [n for n in weights if n.startswith(IGNORED_PREFIXES)]
    weights = {n: t for n, t in weights.items() if n not in ignored}
    net = build_model(config)
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        sys.exit(f"{args.weights} does not fit {args.config}: {e}")
    net.eval()
    if xtransformer:
        py = xtransformer_values(net, tokens, args.prompt_len, args.new_tokens)
        mask0 = tokens["src_mask"][:1] if "src_mask" in tokens else None
        with torch.no_grad():
            encoded0 = net.encoder(tokens["src"][:1], mask=mask0, return_embeddings=True)

        def next_logits(seq):
            return net.decoder.net(torch.tensor([seq]), context=encoded0, context_mask=mask0)[0, -1]
    else:
        py = python_values(net, tokens, args.prompt_len, args.new_tokens)

        def next_logits(seq):
            return net(torch.tensor([seq]))[0, -1]
    print(f"model: {args.config} ({'XTransformer; ' if xtransformer else ''}"
          f"{sum(t.numel() for t in weights.values()):,} values in {len(weights)} tensors"
          + (f"; {len(ignored)} fixture./grad. tensors of W ignored" if ignored else "") + ")")
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tokens.items()) if xtransformer else tuple(tokens.shape)
    print(f"tokens: {args.tokens} {shapes}, prompt {args.prompt_len}, new tokens {args.new_tokens}")

    with tempfile.TemporaryDirectory() as tmp:
        export = args.export or os.path.join(tmp, "export.safetensors")
        cmd = [args.xt_eval, "--config", args.config, "--weights", args.weights, "--tokens", args.tokens,
               "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--export", export]
        if ignored:  # only then: a plain weights file needs nothing beyond the interface
            cmd += ["--ignore", ",".join(p for p in IGNORED_PREFIXES if any(n.startswith(p) for n in ignored))]
        print("run:", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"FAIL xt_eval: {e}")
            return 2
        xt = parse_json(proc.stdout)
        if proc.returncode != 0 or not isinstance(xt, dict):
            print(f"FAIL xt_eval exited {proc.returncode}" + ("" if isinstance(xt, dict) else ", no JSON object"))
            print("stdout:", proc.stdout[-2000:], "\nstderr:", proc.stderr[-2000:], sep="\n")
            return 2
        problems = check_export(export, weights, config) if os.path.exists(export) else [f"{export} not written"]

    failed = 0

    def report(ok, what, detail):
        nonlocal failed
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")

    report(not problems, "export", f"{len(weights)} tensors bit-identical, strict load accepted" if not problems
           else f"{len(problems)} problem(s)\n       " + "\n       ".join(problems[:40]))
    for key, scale, rtol in (("loss", abs(py["loss"]), args.loss_rtol),
                             ("logits_sum", py["logits_abs_sum"], args.logits_rtol)):
        value = xt.get(key)
        if not isinstance(value, (int, float)):
            report(False, key, f"xt_eval printed {value!r}")
            continue
        err = abs(value - py[key])
        report(err <= rtol * scale, key, f"xt {value:.9g}, python {py[key]:.9g}, |diff| {err:.3g} "
               f"(allowed {rtol:g} x {scale:.6g} = {rtol * scale:.3g})")
    if "greedy" in py:
        ok, got = xt.get("greedy") == py["greedy"], xt.get("greedy")
        report(ok, "greedy", f"xt {got}, python {py['greedy']}"
               + ("" if ok else greedy_gap(next_logits, prompt_row[:args.prompt_len].tolist(), args.new_tokens, got)))
    else:
        print(f"skip greedy: x-transformers cannot generate here ({py['greedy_error']})")
        if not xtransformer and config["attn_layers"].get("type") == "Encoder":
            ok = "greedy" in xt and xt["greedy"] is None
            report(ok, "greedy", f"xt_eval printed {json.dumps(xt['greedy']) if 'greedy' in xt else 'no greedy'} "
                   "for an Encoder (expected null)")
    print("PASS" if not failed else f"FAIL ({failed} check(s))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
