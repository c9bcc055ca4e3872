"""Run every benchmark and write their tables into the README's performance section.

    python tools/bench_all.py                      # all benchmarks, rewrites README.md between the markers
    python tools/bench_all.py --only sample,data   # a subset (the other sections are kept as they were)
    python tools/bench_all.py --dry-run            # print the section, leave README.md alone

Each benchmark runs in its own process (one at a time: run it on a quiet machine) with the
arguments below; its Markdown table(s) and final JSON line are collected. The section between
`<!-- perf-table -->` and `<!-- /perf-table -->` is generated: one sub-section per benchmark
(command, table, environment from its JSON line), each between its own `<!-- bench:NAME -->`
markers so that a partial run replaces only what it ran. Hand-written analysis belongs after the
section. Prints one JSON line with every benchmark's JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- perf-table -->", "<!-- /perf-table -->"

# name -> (title, arguments of tools/bench_NAME.py)
BENCHES = {
    "device": ("Device ceilings: memory bandwidth and dense matmul rate", ["--copy-mib", "256", "--n", "2048"]),
    "dfvqgan": ("DF-VQGAN inference and training step, JAX vs the PyTorch reference, same weights",
                ["--res", "128", "--batch", "2", "--iters", "2"]),  # 256 px: ~15 min more on 2 cores
    "data": ("Stage-2 input pipeline (256 px JPEG decode, augmentation, mask, tokenise, batch 32)", []),
    "sample": ("KV-cached sampler vs the official recompute sampler, same weights and random stream",
               ["--presets", "mid", "--hole", "0.5", "--reps", "3", "--max-recompute-s", "100000"]),
    "train": ("Train steps of both stages (the `lip-jax train` step functions, random data)", []),
}


def run_bench(name: str) -> dict | None:
    title, args = BENCHES[name]
    cmd = [sys.executable, os.path.join("tools", f"bench_{name}.py"), *args]
    print(f"[bench_all] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.splitlines()
    js = [l for l in lines if l.startswith("{")]
    if proc.returncode or not js:
        why = f"exit code {proc.returncode}" if proc.returncode else "no JSON line"
        print(f"bench_all: {cmd[1]} failed ({why}); its section is left as it was", file=sys.stderr)
        return None
    body = [l for l in lines if not l.startswith("{")]
    while body and not body[0].strip():
        body.pop(0)
    return {"name": name, "title": title, "command": "python " + " ".join(cmd[1:]), "table": "\n".join(body).strip(),
            "json": json.loads(js[-1]), "seconds": round(time.time() - t0, 1)}


def environment(js: dict) -> str:
    keys = ("backend", "device_kind", "device", "devices", "cpu_count", "jax", "torch")
    found = [f"{k} {js[k]}" for k in keys if k in js]
    return ", ".join(found)


def section(result: dict) -> str:
    return "\n".join([
        f"<!-- bench:{result['name']} -->",
        f"**{result['title']}** (`{result['command']}`; {environment(result['json'])}; "
        f"{result['seconds']:.0f} s):",
        "", result["table"], "",
        f"<!-- /bench:{result['name']} -->"])


def render(old: str, results: list[dict], header: str) -> str:
    """The new perf section: fresh sub-sections for what ran, the old ones for the rest."""
    kept = {m.group(1): m.group(0) for m in re.finditer(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", old, re.S)}
    fresh = {r["name"]: section(r) for r in results}
    parts = [fresh.get(n) or kept.get(n) for n in BENCHES]
    return "\n\n".join([header, *[p for p in parts if p]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {','.join(BENCHES)}")
    ap.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    ap.add_argument("--dry-run", action="store_true", help="print the section instead of writing the README")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    try:
        text = open(args.readme).read()
    except OSError as e:
        print(f"bench_all: {args.readme}: {e.strerror}", file=sys.stderr)
        return 2
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        print(f"bench_all: {args.readme}: needs one {BEGIN} ... {END} pair", file=sys.stderr)
        return 2
    runs = [run_bench(n) for n in names]  # a failed benchmark does not cost the others' results
    results = [r for r in runs if r]
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    header = (f"Generated by `python tools/bench_all.py` ({datetime.date.today().isoformat()}, "
              f"{os.cpu_count()} CPU cores); do not edit by hand.")
    new = render(text[a:b], results, header)
    if args.dry_run:
        print(new)
    else:
        tmp = args.readme + ".tmp"
        with open(tmp, "w") as f:
            f.write(text[:a] + "\n" + new + "\n" + text[b:])
        os.replace(tmp, args.readme)
        print(f"bench_all: wrote {len(results)} section(s) into {args.readme}", file=sys.stderr)
    print(json.dumps({"bench": "all", "results": [{k: r[k] for k in ("name", "command", "seconds", "json")}
                                                    for r in results]}))
    return 1 if len(results) < len(names) else 0


if __name__ == "__main__":
    sys.exit(main())
