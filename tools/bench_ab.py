#!/usr/bin/env python3
"""Two builds of xtr_bench, same machine, same run: before and after a change to a hot path.

    python3 tools/bench_ab.py --a /tmp/base/build/bench/xtr_bench --b build/bench/xtr_bench --repeat 7
    python3 tools/bench_ab.py --a A --b B --benches train_step:small,generate_kv:enwik8 --out bench/ab.jsonl

Runs every (bench, config) of --benches on A and B alternately (A B, then B A, ...) --repeat times, takes the
median tokens/s of each side and prints a markdown table with the ratio B / A (> 1: B is faster) and one JSON
summary line. --steps N is passed to every run (the bench's own default otherwise). Exit status 1 when a command
fails or prints no JSON line.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

DEFAULT = "train_step:small,train_step:enwik8,generate_kv:small,generate_kv:enwik8"


def run(binary, bench, config, steps, extra):
    cmd = [binary, "--bench", bench, "--config", config] + (["--steps", str(steps)] if steps else []) + extra
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-300:]}")
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("bench") == bench:
                return record["tokens_per_s"], cmd
    raise RuntimeError(f"{' '.join(cmd)} printed no JSON line for {bench}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="xtr_bench before the change")
    ap.add_argument("--b", required=True, help="xtr_bench after the change")
    ap.add_argument("--benches", default=DEFAULT, help=f"comma list of bench:config (default {DEFAULT})")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--extra", default="", help="further arguments for both binaries, space-separated")
    ap.add_argument("--out", help="append the summary (and every run) as JSON lines")
    args = ap.parse_args(argv)
    extra = args.extra.split() if args.extra else []
    pairs = [tuple(item.split(":")) for item in args.benches.split(",") if item]
    results = {p: {"a": [], "b": []} for p in pairs}
    failed = False
    for r in range(args.repeat):
        for bench, config in pairs:
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            for side in order:
                try:
                    value, _ = run(getattr(args, side), bench, config, args.steps, extra)
                    results[(bench, config)][side].append(value)
                except Exception as e:  # noqa: BLE001 - reported, then the other runs go on
                    print(f"error: {e}", file=sys.stderr)
                    failed = True
    print("| bench | config | A tokens/s | B tokens/s | B / A |")
    print("|---|---|---:|---:|---:|")
    summary = []
    for (bench, config), v in results.items():
        if not v["a"] or not v["b"]:
            continue
        a, b = statistics.median(v["a"]), statistics.median(v["b"])
        print(f"| {bench} | {config} | {a:.1f} | {b:.1f} | {b / a:.3f} |")
        summary.append({"bench": bench, "config": config, "a_median": a, "b_median": b, "ratio": b / a,
                        "a_runs": v["a"], "b_runs": v["b"]})
    line = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "a": args.a, "b": args.b,
            "repeat": args.repeat, "results": summary}
    print(json.dumps(line))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
