#!/usr/bin/env python3
"""Run xtr's benchmark binary and the x-transformers peer side by side, in one run, and report ratios.

    python3 tools/bench_compare.py [--xtr build/bench/xtr_bench] [--peer /work/shared/peer/bench_xt.py]
                                   [--repeat N] [--only train|generate|all] [--out FILE.jsonl] [--nice N]

The xtr side is invoked once per (bench, config):
    <xtr> --bench train_step|generate_kv --config small|enwik8
and must print one JSON line with at least {"bench", "config", "tokens_per_s"} (the fields bench_xt.py prints:
median_s or best_s, tokens_per_s, ...). The peer is invoked once per kind:
    python3 <peer> train|generate
and prints one JSON line per config. With --repeat N both sides run N times, alternating which goes first, and the
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

BENCHES = {"train": "train_step", "generate": "generate_kv"}      # peer kind -> bench name
CONFIGS = ("small", "enwik8")


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
    ap.add_argument("--python", default=sys.executable or "python3", help="interpreter for the peer")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, alternating order; medians reported")
    ap.add_argument("--only", choices=("train", "generate", "all"), default="all")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of configs (default small,enwik8)")
    ap.add_argument("--out", help="append raw JSON lines and a summary line to this .jsonl file")
    ap.add_argument("--nice", type=int, default=0, help="run both sides under nice -n N (same for both)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per command (default 3600)")
    ap.add_argument("--peer-only", action="store_true", help="do not run xtr (e.g. before it is built)")
    ap.add_argument("--verbose", action="store_true", help="echo non-JSON output of both sides")
    args = ap.parse_args(argv)

    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    kinds = list(BENCHES) if args.only == "all" else [args.only]
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}; the peer knows {', '.join(CONFIGS)}")

    if not args.peer_only:
        if not os.path.isfile(args.xtr):
            sys.exit(f"bench_compare: xtr benchmark binary not found at '{args.xtr}'. Build it first "
                     f"(cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target xtr_bench), "
                     f"pass --xtr PATH, or use --peer-only.")
        if not os.access(args.xtr, os.X_OK):
            sys.exit(f"bench_compare: '{args.xtr}' exists but is not executable (chmod +x, or pass --xtr PATH).")
    if not os.path.isfile(args.peer):
        sys.exit(f"bench_compare: peer script not found at '{args.peer}' (pass --peer PATH).")

    prefix = ["nice", "-n", str(args.nice)] if args.nice else []
    xtr_cmd = lambda bench, config: prefix + [args.xtr, "--bench", bench, "--config", config]
    peer_cmd = lambda kind: prefix + [args.python, args.peer, kind]

    results = {("xtr", BENCHES[k], c): [] for k in kinds for c in configs}
    results.update({("peer", BENCHES[k], c): [] for k in kinds for c in configs})
    raw, errors, commands = [], [], []

    for rep in range(args.repeat):
        sides = ["xtr", "peer"] if rep % 2 == 0 else ["peer", "xtr"]
        if args.peer_only:
            sides = ["peer"]
        for kind in kinds:
            bench = BENCHES[kind]
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
    print(f"| bench | config | xtr tokens/s | peer tokens/s | ratio xtr/peer | runs |")
    print(f"|---|---|---:|---:|---:|---:|")
    for kind in kinds:
        bench = BENCHES[kind]
        for config in configs:
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
