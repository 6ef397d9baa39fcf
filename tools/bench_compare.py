#!/usr/bin/env python3
"""Run xtr's benchmark binary and the x-transformers peer side by side, in one run, and report ratios.

    python3 tools/bench_compare.py [--xtr build/bench/xtr_bench] [--peer /work/shared/peer/bench_xt.py]
                                   [--peer-seq2seq tools/bench_peer_seq2seq.py]
                                   [--repeat N] [--only train|generate|all|seq2seq|everything]
                                   [--configs LIST] [--out FILE.jsonl] [--nice N]

--only: train, generate, all (= train + generate: the decoder benches; the default), seq2seq (the encoder-decoder
benches), beam (beam search, 4 beams: tools/bench_peer_generation.py), everything (all + seq2seq + beam). The xtr side is invoked once per (bench, config):
    <xtr> --bench train_step|generate_kv --config small|enwik8             (train, generate)
    <xtr> --bench seq2seq_train --config copy                               (seq2seq)
    <xtr> --bench seq2seq_generate --config copy|copy_b32                   (seq2seq)
    <xtr> --bench beam_search --config small|enwik8                         (beam)
and must print one JSON line with at least {"bench", "config", "tokens_per_s"} (the fields bench_xt.py prints:
median_s or best_s, tokens_per_s, ...). The peers are invoked once per kind:
    python3 <peer> train|generate                       (decoder: train_step, generate_kv)
    python3 <peer-seq2seq> train|generate               (seq2seq_train; seq2seq_generate)
and print one JSON line per config. With --repeat N both sides run N times, alternating which goes first, and the
table shows the median tokens/s of each side per (bench, config) and the ratio xtr / peer (> 1: xtr is faster).
--out appends every raw JSON line (with "side" and "repeat" added) and one summary line (date, machine, commands,
medians) to a JSON-lines file. Lines that are not JSON objects (tables, warnings) are echoed with --verbose only.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys

CONFIGS = ("small", "enwik8")
# kind -> (which peer script, peer argument, bench name, configs); the order is the run and table order
KINDS = {
    "train": ("peer", "train", "train_step", CONFIGS),
    "generate": ("peer", "generate", "generate_kv", CONFIGS),
    "seq2seq_train": ("peer_seq2seq", "train", "seq2seq_train", ("copy",)),
    "seq2seq_generate": ("peer_seq2seq", "generate", "seq2seq_generate", ("copy", "copy_b32")),
    "beam": ("peer_generation", "beam", "beam_search", CONFIGS),
}
ONLY = {"train": ["train"], "generate": ["generate"], "all": ["train", "generate"],
        "seq2seq": ["seq2seq_train", "seq2seq_generate"],
        "beam": ["beam"],
        "everything": ["train", "generate", "seq2seq_train", "seq2seq_generate", "beam"]}
PEER_SEQ2SEQ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_peer_seq2seq.py")
PEER_GENERATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_peer_generation.py")


def shown_path(path):
    """path relative to the working directory when it lies under it (for readable commands), else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def machine():
    model, cores = platform.processor() or platform.machine(), os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model = fields.get("Model name", model)
        if "CPU(s)" in fields:
            cores = int(fields["CPU(s)"])
        tpc = fields.get("Thread(s) per core")
        threads = f", {tpc} thread(s) per core" if tpc else ""
    except (OSError, subprocess.SubprocessError, ValueError):
        threads = ""
    return {"cpu": model, "cpus": cores, "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else cores, "detail": f"{model}, {cores} CPU(s){threads}", "host": platform.node(),
            "os": platform.platform()}


def run(cmd, timeout, verbose):
    """Run one command; return (records, error). records: JSON objects printed on stdout."""
    print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout} s: {shlex.join(cmd)}"
    except OSError as e:
        return [], f"could not start {shlex.join(cmd)}: {e}"
    records = []
    for line in proc.stdout.splitlines():
        s = line.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                records.append(obj)
                continue
        if verbose and s:
            print(f"  | {line}", file=sys.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return records, f"exit status {proc.returncode}: {shlex.join(cmd)}\n{tail}"
    if verbose and proc.stderr.strip():
        for line in proc.stderr.strip().splitlines()[-5:]:
            print(f"  ! {line}", file=sys.stderr)
    return records, None


def valid(rec, bench, config):
    return rec.get("bench") == bench and rec.get("config") == config and isinstance(rec.get("tokens_per_s"), (int, float))


def fmt(x):
    if x is None:
        return "n/a"
    return f"{x:,.1f}" if x < 1e5 else f"{x:,.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xtr", default="build/bench/xtr_bench", help="xtr benchmark binary (default build/bench/xtr_bench)")
    ap.add_argument("--peer", default="/work/shared/peer/bench_xt.py", help="peer script (default %(default)s)")
    ap.add_argument("--peer-seq2seq", default=shown_path(PEER_SEQ2SEQ),
                    help="encoder-decoder peer script (default %(default)s)")
    ap.add_argument("--peer-generation", default=shown_path(PEER_GENERATION),
                    help="beam-search peer script (default %(default)s)")
    ap.add_argument("--python", default=sys.executable or "python3", help="interpreter for the peer")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, alternating order; medians reported")
    ap.add_argument("--only", choices=tuple(ONLY), default="all",
                    help="all = train + generate (default); everything = all + seq2seq")
    ap.add_argument("--configs", help="comma list of configs to keep (default: every config of the selected "
                    "benches: small,enwik8 for train/generate, copy for seq2seq_train, copy,copy_b32 for "
                    "seq2seq_generate); a bench none of whose configs is named is skipped")
    ap.add_argument("--out", help="append raw JSON lines and a summary line to this .jsonl file")
    ap.add_argument("--nice", type=int, default=0, help="run both sides under nice -n N (same for both)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per command (default 3600)")
    ap.add_argument("--peer-only", action="store_true", help="do not run xtr (e.g. before it is built)")
    ap.add_argument("--verbose", action="store_true", help="echo non-JSON output of both sides")
    args = ap.parse_args(argv)

    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    kinds = ONLY[args.only]
    known = [c for k in kinds for c in KINDS[k][3]]
    known = [c for i, c in enumerate(known) if c not in known[:i]]
    if args.configs is None:
        kind_configs = {k: list(KINDS[k][3]) for k in kinds}
    else:
        configs = [c for c in args.configs.split(",") if c]
        for c in configs:
            if c not in known:
                ap.error(f"unknown config {c!r}; the peer knows {', '.join(known)}")
        kind_configs = {k: [c for c in configs if c in KINDS[k][3]] for k in kinds}
        if configs:
            kinds = [k for k in kinds if kind_configs[k]]
    peer_paths = {"peer": args.peer, "peer_seq2seq": args.peer_seq2seq, "peer_generation": args.peer_generation}

    if not args.peer_only:
        if not os.path.isfile(args.xtr):
            sys.exit(f"bench_compare: xtr benchmark binary not found at '{args.xtr}'. Build it first "
                     f"(cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target xtr_bench), "
                     f"pass --xtr PATH, or use --peer-only.")
        if not os.access(args.xtr, os.X_OK):
            sys.exit(f"bench_compare: '{args.xtr}' exists but is not executable (chmod +x, or pass --xtr PATH).")
    for key in dict.fromkeys(KINDS[k][0] for k in kinds):
        if not os.path.isfile(peer_paths[key]):
            sys.exit(f"bench_compare: peer script not found at '{peer_paths[key]}' "
                     f"(pass --{key.replace('_', '-')} PATH).")

    prefix = ["nice", "-n", str(args.nice)] if args.nice else []
    xtr_cmd = lambda bench, config: prefix + [args.xtr, "--bench", bench, "--config", config]
    peer_cmd = lambda kind: prefix + [args.python, peer_paths[KINDS[kind][0]], KINDS[kind][1]]

    results = {("xtr", KINDS[k][2], c): [] for k in kinds for c in kind_configs[k]}
    results.update({("peer", KINDS[k][2], c): [] for k in kinds for c in kind_configs[k]})
    raw, errors, commands = [], [], []

    for rep in range(args.repeat):
        sides = ["xtr", "peer"] if rep % 2 == 0 else ["peer", "xtr"]
        if args.peer_only:
            sides = ["peer"]
        for kind in kinds:
            bench, configs = KINDS[kind][2], kind_configs[kind]
            for side in sides:
                if side == "xtr":
                    for config in configs:
                        cmd = xtr_cmd(bench, config)
                        recs, err = run(cmd, args.timeout, args.verbose)
                        if rep == 0:
                            commands.append(shlex.join(cmd))
                        got = [r for r in recs if valid(r, bench, config)]
                        if err:
                            errors.append(err)
                        elif not got:
                            errors.append(f"no JSON line with bench={bench}, config={config} and a numeric "
                                          f"tokens_per_s from: {shlex.join(cmd)}")
                        for r in recs:
                            raw.append({**r, "side": "xtr", "repeat": rep})
                        for r in got[:1]:
                            results[("xtr", bench, config)].append(float(r["tokens_per_s"]))
                else:
                    cmd = peer_cmd(kind)
                    recs, err = run(cmd, args.timeout, args.verbose)
                    if rep == 0:
                        commands.append(shlex.join(cmd))
                    if err:
                        errors.append(err)
                    for r in recs:
                        raw.append({**r, "side": "peer", "repeat": rep})
                    for config in configs:
                        got = [r for r in recs if valid(r, bench, config)]
                        if not got and not err:
                            errors.append(f"peer printed no line for bench={bench}, config={config}")
                        for r in got[:1]:
                            results[("peer", bench, config)].append(float(r["tokens_per_s"]))

    # table
    rows = []
    print()
    print("| bench | config | xtr tokens/s | peer tokens/s | ratio xtr/peer | runs |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in kinds:
        bench = KINDS[kind][2]
        for config in kind_configs[kind]:
            xs, ps = results[("xtr", bench, config)], results[("peer", bench, config)]
            xm = statistics.median(xs) if xs else None
            pm = statistics.median(ps) if ps else None
            ratio = xm / pm if (xm is not None and pm) else None
            rows.append({"bench": bench, "config": config, "xtr_tokens_per_s": xm, "peer_tokens_per_s": pm,
                         "ratio": None if ratio is None else round(ratio, 3), "xtr_runs": xs, "peer_runs": ps})
            r = f"{ratio:.2f}x" if ratio is not None else "n/a"
            print(f"| {bench} | {config} | {fmt(xm)} | {fmt(pm)} | {r} | {len(xs)}/{len(ps)} |")
    mach = machine()
    print(f"\nmachine: {mach['detail']}; repeats: {args.repeat}; date: "
          f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")

    # JSON lines: one summary line on stdout, everything appended to --out
    summary = {"summary": "bench_compare", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "machine": mach, "repeat": args.repeat, "nice": args.nice, "commands": commands,
        "results": rows, "errors": errors}
    print(json.dumps({"summary": "bench_compare", "results": [{k: v for k, v in r.items() if not k.endswith("_runs")}
                                                               for r in rows]}))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as fh:
            for r in raw:
                fh.write(json.dumps(r) + "\n")
            fh.write(json.dumps(summary) + "\n")
        print(f"appended {len(raw)} raw lines + 1 summary line to {args.out}", file=sys.stderr)

    if errors:
        print("\nerrors:", file=sys.stderr)
        for e in errors:
            print(f"- {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
