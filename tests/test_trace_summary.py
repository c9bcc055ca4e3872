"""lip_jax/perf/trace_summary.py and the tools/trace_summary.py command: device time of a trace, by kind and kernel."""

import gzip
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lip_jax.perf import trace_summary

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def gpu_like_trace(path):
    """The layout a GPU trace has: a device process with stream lines and a derived line."""
    meta = [dict(ph="M", pid=1, name="process_name", args=dict(name="/host:CPU")),
            dict(ph="M", pid=7, name="process_name", args=dict(name="/device:GPU:0")),
            dict(ph="M", pid=7, tid=1, name="thread_name", args=dict(name="Stream #13(Compute)")),
            dict(ph="M", pid=7, tid=2, name="thread_name", args=dict(name="Stream #14(Compute)")),
            dict(ph="M", pid=7, tid=3, name="thread_name", args=dict(name="XLA Modules"))]
    k = lambda tid, ts, dur, name, op=None: dict(ph="X", pid=7, tid=tid, ts=ts, dur=dur, name=name,
                                                 args=dict(hlo_op=op) if op else {})
    kernels = [k(1, 0, 40, "sm90_xmma_gemm_bf16bf16_bf16f32", "dot.1"),
               k(1, 50, 10, "loop_fusion", "fusion.3"),
               k(2, 55, 25, "cudnn_generated_fort_native_sdpa_sm90", "custom-call.2"),  # overlaps the fusion
               k(1, 90, 10, "loop_fusion", "fusion.3"),
               k(3, 0, 100, "jit_step", None),  # derived line: must not count
               dict(ph="X", pid=1, tid=9, ts=0, dur=500, name="cuLaunchKernel")]  # host: not a device
    with gzip.open(path, "wt") as f:
        json.dump(dict(traceEvents=meta + kernels), f)


def test_device_time_by_kind_and_op(tmp_path):
    run = tmp_path / "plugins" / "profile" / "x"
    run.mkdir(parents=True)
    gpu_like_trace(run / "perfetto_trace.json.gz")
    s = trace_summary.summarise(trace_summary.load_events(trace_summary.find_trace(str(tmp_path))), per=2)
    assert list(s) == ["/device:GPU:0"]
    d = s["/device:GPU:0"]
    # kernels span [0, 100] us; running in [0, 40] u [50, 80] u [90, 100] = 80 us
    assert d["window_ms"] == pytest.approx(0.1 / 2)
    assert d["busy_ms"] == pytest.approx(0.08 / 2)
    assert d["idle_share"] == pytest.approx(0.2)
    assert d["kernels"] == 2  # 4 kernels over --per 2
    assert d["kinds"] == pytest.approx(dict(matmul=0.02, attention=0.0125, other=0.01))
    assert [(r["op"], r["count"]) for r in d["top"]] == [("dot.1", 0.5), ("custom-call.2", 0.5), ("fusion.3", 1.0)]
    assert "| matmul | 0.020 | 47.1% |" in trace_summary.report(s, "")


def test_real_cpu_trace_and_bad_paths_are_one_line_errors(tmp_path):
    f = jax.jit(lambda x: jnp.sin(x @ x).sum())
    x = jnp.ones((64, 64))
    f(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path / "cpu"), create_perfetto_trace=True):
        f(x).block_until_ready()
    (tmp_path / "bad.json").write_text("{not json")
    for target, message in [(tmp_path / "cpu", "no device kernels"), (tmp_path / "missing", "no such file"),
                            (tmp_path / "bad.json", "not a readable JSON trace")]:
        p = subprocess.run([sys.executable, os.path.join(TOOLS, "trace_summary.py"), str(target)],
                           capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
