"""Where the device time goes: summarise a JAX profiler trace (perfetto JSON) by kernel and kind.

    python tools/trace_summary.py TRACE_DIR_OR_FILE [--top 25] [--per N]

TRACE_DIR_OR_FILE is a `jax.profiler.trace(dir, create_perfetto_trace=True)` directory (the newest
perfetto_trace.json.gz under it is read) or such a file; `bench_train.py --trace` and
`bench_sample.py --trace` write one. For every device in the trace it prints the traced window, the
time some kernel was running (the union over streams) and so the idle share, the time per kind of
kernel (matmul, attention, collective, copy, other) and the kernels that took longest, grouped by
HLO op where the trace names it. --per N divides the counts and times by N (steps or tokens in the
trace). Prints a table and one final JSON line. CPU traces carry no per-kernel events: the tool says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lip_jax.perf.trace_summary import TraceError, find_trace, load_events, report, summarise  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", help="trace directory or perfetto_trace.json(.gz)")
    p.add_argument("--top", type=int, default=25, help="kernels to list per device")
    p.add_argument("--per", type=float, default=1.0, help="divide counts and times by this (steps, tokens)")
    args = p.parse_args(argv)
    if args.per <= 0:
        p.error("--per must be positive")
    try:
        path = find_trace(args.trace)
        summary = summarise(load_events(path), args.top, args.per)
    except TraceError as e:
        print(f"trace_summary: {e}", file=sys.stderr)
        return 2
    print(report(summary, f" (per {args.per:g})" if args.per != 1 else ""))
    print(json.dumps(dict(trace=path, per=args.per, devices=summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
