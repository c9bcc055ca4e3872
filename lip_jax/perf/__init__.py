"""Performance accounting of compiled programs and profiler traces, shared by tools/plan.py and the benches."""
