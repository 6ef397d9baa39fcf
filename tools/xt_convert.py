#!/usr/bin/env python3
"""Bring x-transformers models and golden fixtures into the files xtr's tools read.

    python3 tools/xt_convert.py convert IN.pt OUT.safetensors [--config C.json]
        A PyTorch checkpoint -> safetensors under TransformerWrapper names, float32, contiguous.
        IN.pt may hold a state_dict, a dict with a 'model' or 'state_dict' entry (itself a state_dict or a module),
        or a whole pickled AutoregressiveWrapper / TransformerWrapper. A leading `net.` (AutoregressiveWrapper),
        `module.` (DDP) or `_orig_mod.` (torch.compile) is stripped from every name. With --config the model is
        rebuilt from C.json and must accept the tensors with load_state_dict(strict=True) (buffers the checkpoint
        lacks, e.g. `attn_layers.rotary_pos_emb.inv_freq`, are taken from the fresh model); the config is then
        stored as the file's `config` metadata, as the fixtures do.
    python3 tools/xt_convert.py config-from-fixture FIXTURE.safetensors OUT.json
        The fixture's `config` metadata plus its "x_transformers_version", as the C.json xt_eval takes.
    python3 tools/xt_convert.py tokens-from-fixture FIXTURE.safetensors OUT.json
        The fixture's `fixture.tokens` as a JSON list of token rows (xt_eval's T.json); for an XTransformer
        fixture the object {"src": rows, "tgt": rows, "src_mask": rows} from `fixture.src/tgt/src_mask`.
    python3 tools/xt_convert.py fixture-json FIXTURE.safetensors... [--out DIR]
        Both of the above for each fixture: DIR/<name>.config.json and DIR/<name>.tokens.json, and
        DIR/<name>.greedy.txt (`fixture.greedy` as a JSON list) where the fixture has greedy tokens
        (DIR defaults to the fixture's own folder), e.g.  fixture-json tests/fixtures/*.safetensors
        (an XTransformer fixture's greedy tokens come from the prompt tgt[:1, :1] = [[1]] and
        fixture.greedy's length: xt_eval --prompt-len 1 --new-tokens 24 reproduces them)

C.json holds the constructor keywords: TransformerWrapper's at the top level, the attention stack's under
"attn_layers" with its class ("Decoder" or "Encoder") under "type"; or XTransformer's keywords (dim,
tie_token_emb, enc_*, dec_*; no "attn_layers"). "x_transformers_version" selects the release's conventions.
"""
import argparse
import importlib.metadata
import json
import os
import sys
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STRIP_PREFIXES = ("module.", "_orig_mod.", "net.")
LAYER_TYPES = ("Decoder", "Encoder")


def import_x_transformers():
    with warnings.catch_warnings():  # torch warns (FutureWarning) about torch.jit.script used by x-transformers
        warnings.simplefilter("ignore", FutureWarning)
        import x_transformers
    try:  # x-transformers logs (loguru) that rotary dims < 32 are small; the fixtures are toy models on purpose
        from loguru import logger
        logger.disable("x_transformers")
    except ImportError:
        pass
    return x_transformers


def xt_version():
    return importlib.metadata.version("x-transformers")


def is_xtransformer(config):
    """Whether a C.json dict holds XTransformer keywords (enc_* / dec_*, no attn_layers)."""
    return "attn_layers" not in config and any(k.startswith(("enc_", "dec_")) for k in config)


def build_model(config):
    """TransformerWrapper, or XTransformer for enc_* / dec_* keywords, from a C.json dict (the keywords exactly as
    x-transformers takes them)."""
    x_transformers = import_x_transformers()
    cfg = json.loads(json.dumps(config))
    version = cfg.pop("x_transformers_version", None)
    if version and version != xt_version():
        print(f"warning: config written for x-transformers {version}, installed {xt_version()}",
              file=sys.stderr)
    if is_xtransformer(cfg):
        return x_transformers.XTransformer(**cfg)
    layers = cfg.pop("attn_layers")
    kind = layers.pop("type", "Decoder")
    if kind not in LAYER_TYPES:
        sys.exit(f"attn_layers.type must be one of {LAYER_TYPES}, not {kind!r}")
    return x_transformers.TransformerWrapper(**cfg, attn_layers=getattr(x_transformers, kind)(**layers))


def load_checkpoint(path):
    """A flat {name: tensor} dict from any of the checkpoint forms the docstring lists."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a pickled module needs full unpickling: only do this with files you trust
        print(f"note: {path} is not a plain state_dict; unpickling it in full", file=sys.stderr)
        import_x_transformers()  # the classes a pickled wrapper needs, imported quietly
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj:
                obj = obj[key]
                break
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        sys.exit(f"{path}: no state_dict found (got {type(obj).__name__})")
    out = {}
    for name, t in obj.items():
        for p in STRIP_PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
        out[name] = t
    return out


def convert(args):
    sd = load_checkpoint(args.input)
    metadata = None
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
        model = build_model(config)
        want = model.state_dict()
        missing = set(want) - set(sd)
        missing_params = missing - {n for n, _ in model.named_buffers()}
        unexpected = set(sd) - set(want)
        if missing_params or unexpected:
            sys.exit(f"{args.input} does not fit {args.config}:\n  missing: {sorted(missing_params)}\n"
                     f"  unexpected: {sorted(unexpected)}")
        for name in sorted(missing):
            print(f"note: buffer {name} not in the checkpoint; taken from a fresh model", file=sys.stderr)
            sd[name] = want[name]
        try:
            model.load_state_dict(sd, strict=True)  # also checks every shape
        except RuntimeError as e:
            sys.exit(f"{args.input} does not fit {args.config}: {e}")
        metadata = {"config": json.dumps({k: v for k, v in config.items() if k != "x_transformers_version"}),
                    "x_transformers_version": config.get("x_transformers_version", xt_version())}
    out = {}
    for name, t in sd.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        else:
            print(f"note: {name} is {t.dtype}; kept as is", file=sys.stderr)
        out[name] = t.contiguous().clone()  # clone: safetensors refuses tensors that share storage
    save_file(out, args.output, metadata=metadata)
    print(f"wrote {args.output}: {len(out)} tensors, {sum(t.numel() for t in out.values()):,} values")


def fixture_config(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        sys.exit(f"{path}: no `config` metadata")
    cfg = json.loads(meta["config"])
    layers = cfg.pop("attn_layers", None)
    cfg["x_transformers_version"] = meta.get("x_transformers_version", "unknown")
    if layers is not None:
        cfg["attn_layers"] = layers
    return cfg


def fixture_tokens(path):
    """`fixture.tokens` as rows, or {"src", "tgt", "src_mask"} from an XTransformer fixture."""
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        if "fixture.tokens" in keys:
            return f.get_tensor("fixture.tokens").tolist()
        if {"fixture.src", "fixture.tgt"} <= keys:
            out = {"src": f.get_tensor("fixture.src").tolist(), "tgt": f.get_tensor("fixture.tgt").tolist()}
            if "fixture.src_mask" in keys:
                out["src_mask"] = f.get_tensor("fixture.src_mask").bool().tolist()
            return out
    sys.exit(f"{path}: no `fixture.tokens` tensor (nor `fixture.src` and `fixture.tgt`)")


def fixture_greedy(path):
    """`fixture.greedy`'s one row, or None."""
    with safe_open(path, "pt") as f:
        return f.get_tensor("fixture.greedy")[0].tolist() if "fixture.greedy" in f.keys() else None


def write_config(cfg, path):
    with open(path, "w") as f:
        f.write(json.dumps(cfg, indent=2) + "\n")


def write_tokens(tokens, path):
    """Rows one per line: a list of rows, or an object of row lists ({"src": ..., "tgt": ..., "src_mask": ...})."""
    def rows_text(rows, indent):
        return "[\n" + ",\n".join(indent + "  " + json.dumps(r) for r in rows) + "\n" + indent + "]"
    if isinstance(tokens, dict):
        text = "{\n" + ",\n".join(f"  {json.dumps(k)}: " + rows_text(v, "  ") for k, v in tokens.items()) + "\n}"
    else:
        text = rows_text(tokens, "")
    with open(path, "w") as f:
        f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("convert", help="PyTorch checkpoint -> safetensors")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--config", help="C.json: check the tensors fit this model and store it as metadata")
    for name in ("config-from-fixture", "tokens-from-fixture"):
        p = sub.add_parser(name)
        p.add_argument("fixture")
        p.add_argument("output")
    p = sub.add_parser("fixture-json", help="<name>.config.json and <name>.tokens.json for each fixture")
    p.add_argument("fixtures", nargs="+")
    p.add_argument("--out", help="output folder (default: next to each fixture)")
    args = ap.parse_args()

    if args.cmd == "convert":
        convert(args)
    elif args.cmd == "config-from-fixture":
        write_config(fixture_config(args.fixture), args.output)
    elif args.cmd == "tokens-from-fixture":
        write_tokens(fixture_tokens(args.fixture), args.output)
    else:
        for fx in args.fixtures:
            stem = os.path.join(args.out or os.path.dirname(fx), os.path.basename(fx).removesuffix(".safetensors"))
            write_config(fixture_config(fx), stem + ".config.json")
            write_tokens(fixture_tokens(fx), stem + ".tokens.json")
            written = [stem + ".config.json", stem + ".tokens.json"]
            greedy = fixture_greedy(fx)
            if greedy is not None:
                with open(stem + ".greedy.txt", "w") as f:
                    f.write(json.dumps(greedy) + "\n")
                written.append(stem + ".greedy.txt")
            print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
