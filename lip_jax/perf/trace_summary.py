"""Where the device time goes: summarise a JAX profiler trace (perfetto JSON) by kernel and kind.

For every device in the trace: the traced window, the time some kernel was running (the union over
streams) and so the idle share, the time per kind of kernel (matmul, attention, collective, copy,
other) and the kernels that took longest, grouped by HLO op where the trace names it. CPU traces
carry no per-kernel events: TraceError says so. tools/trace_summary.py is the command line.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

KINDS = (  # first match wins; matched against the kernel name, lower case
    ("attention", re.compile(r"fmha|flash|cudnn.*attn|sdpa")),
    ("matmul", re.compile(r"gemm|gemv|cublas|cutlass|xmma|wgmma|sm\d+_.*(mma|tensorop)|dot|matmul")),
    ("convolution", re.compile(r"conv|cudnn|implicit_")),
    ("collective", re.compile(r"nccl|all-reduce|all-gather|reduce-scatter|all-to-all|collective")),
    ("copy", re.compile(r"memcpy|memset|copy")),
)


class TraceError(ValueError):
    pass


def find_trace(path: str) -> str:
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise TraceError(f"{path}: no such file or directory")
    found = sorted(glob.glob(os.path.join(path, "**", "perfetto_trace.json*"), recursive=True), key=os.path.getmtime)
    if not found:
        raise TraceError(f"{path}: no perfetto_trace.json(.gz) under it (trace with create_perfetto_trace=True)")
    return found[-1]


def load_events(path: str) -> list[dict]:
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            data = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not a readable JSON trace ({e})") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise TraceError(f"{path}: no traceEvents list")
    return events


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if pattern.search(low):
            return kind
    return "other"


def union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def kernel_lines(names: dict) -> set | None:
    """The device's lines that hold kernels: GPU streams, else TPU's "XLA Ops"; derived lines
    (XLA Modules, Steps) would count the same time twice."""
    for test in (lambda n: n.startswith("Stream"), lambda n: n == "XLA Ops"):
        picked = {tid for tid, n in names.items() if test(n)}
        if picked:
            return picked
    return None


def summarise(events: list[dict], top: int = 25, per: float = 1.0) -> dict:
    procs = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name" and "pid" in e}
    devices = {pid: name for pid, name in procs.items() if name.startswith("/device:")}
    if not devices:
        raise TraceError("the trace has no device kernels (a CPU trace has none; trace on a GPU or TPU)")
    threads = collections.defaultdict(dict)
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name" and "pid" in e:
            threads[e["pid"]][e.get("tid")] = e["args"].get("name", "")
    out = {}
    for pid, dev in sorted(devices.items(), key=lambda kv: kv[1]):
        kernels = [e for e in events if e.get("pid") == pid and e.get("ph") == "X" and "dur" in e]
        lines = kernel_lines(threads[pid])
        if lines is not None:
            kernels = [e for e in kernels if e.get("tid") in lines]
        if not kernels:
            continue
        spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
        window = max(e for _, e in spans) - min(s for s, _ in spans)
        busy = union_us(spans)
        by_kind = collections.Counter()
        by_op = collections.defaultdict(lambda: [0, 0.0, ""])
        for e in kernels:
            name = e.get("name", "?")
            op = (e.get("args") or {}).get("hlo_op") or name
            kind = kind_of(name + " " + op)
            by_kind[kind] += float(e["dur"])
            row = by_op[op]
            row[0] += 1
            row[1] += float(e["dur"])
            row[2] = kind
        kernel_us = sum(by_kind.values())
        ops = sorted(by_op.items(), key=lambda kv: -kv[1][1])
        out[dev] = dict(
            window_ms=window / 1e3 / per, busy_ms=busy / 1e3 / per, idle_share=1 - busy / window if window else 0.0,
            kernels=len(kernels) / per, kernel_ms=kernel_us / 1e3 / per,
            mean_kernel_us=kernel_us / len(kernels),
            kinds={k: v / 1e3 / per for k, v in by_kind.most_common()},
            top=[dict(op=op, kind=k, count=c / per, ms=t / 1e3 / per, share=t / kernel_us)
                 for op, (c, t, k) in ops[:top]])
    if not out:
        raise TraceError("the trace's devices ran no kernels in the traced window")
    return out


def report(summary: dict, per_label: str) -> str:
    lines = []
    for dev, s in summary.items():
        lines.append(f"\n{dev}{per_label}: window {s['window_ms']:.3f} ms, kernels running {s['busy_ms']:.3f} ms "
                     f"(idle {100 * s['idle_share']:.1f}%), {s['kernels']:.0f} kernels, "
                     f"mean {s['mean_kernel_us']:.1f} us")
        lines.append("\n| kind | ms | share |\n|---|---|---|")
        for k, ms in s["kinds"].items():
            lines.append(f"| {k} | {ms:.3f} | {100 * ms / s['kernel_ms']:.1f}% |")
        lines.append("\n| op | kind | count | ms | share |\n|---|---|---|---|---|")
        for r in s["top"]:
            op = r["op"] if len(r["op"]) <= 80 else r["op"][:77] + "..."
            lines.append(f"| {op} | {r['kind']} | {r['count']:.1f} | {r['ms']:.3f} | {100 * r['share']:.1f}% |")
    return "\n".join(lines)


def profile(trace_dir: str, fn, per: float, top: int = 15) -> tuple[str, dict | None]:
    """Run fn() (it must block until its device work is done) under the JAX profiler into trace_dir;
    (report text, summary) of that trace, or on a CPU the reason there is none."""
    import jax

    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        fn()
    try:
        summary = summarise(load_events(find_trace(trace_dir)), top, per)
    except TraceError as e:
        return f"\n{trace_dir}: {e}", None
    return report(summary, f" (per {per:g})"), summary

