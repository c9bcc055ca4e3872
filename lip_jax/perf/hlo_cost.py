"""Statistics of compiled (post-SPMD, per-device) XLA programs: from the HLO text, matmul /
convolution FLOPs and collective bytes (in total and per source op) with while-loop trip counts
applied, and the largest array; from the memory analysis, the peak. XLA's own `cost_analysis()`
counts a loop body once, so it misses scanned layers and accumulation loops.
Used by tools/plan.py, tools/bench_train.py and tests/test_partitioning_rules.py."""

from __future__ import annotations

import collections
import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}



_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")


def _shape_bytes(text: str) -> int:
    return sum(DTYPE_BYTES[d] * math.prod(int(x) for x in dims.split(",") if x) for d, dims in _SHAPE.findall(text))


def _split_operands(rest: str) -> str:
    """The operand list of an instruction: `rest` up to the parenthesis closing the call."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[:i]
    return rest


def parse_hlo(text: str) -> dict:
    """Collective operand bytes per kind (loop trip counts applied where known) and the largest
    non-parameter array, from compiled (post-SPMD-partitioning, per-device) HLO text."""
    comps: dict[str, list] = {}
    entry, cur = None, None
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            cur = m.group(2)
            comps[cur] = []
            if m.group(1):
                entry = cur
            continue
        if cur is not None and line.strip() == "}":
            cur = None
            continue
        if cur is not None:
            comps[cur].append(line)

    shapes = {}  # instruction name -> result type (names are unique in a module)
    for lines in comps.values():
        for line in lines:
            m = _INSTR.match(line)
            if m:
                shapes[m.group(1)] = m.group(2)

    def operand_bytes(rest):
        ops = _split_operands(rest)
        named = re.findall(r"%([\w.\-]+)", ops)
        return sum(_shape_bytes(shapes.get(n, "")) for n in named) if named else _shape_bytes(ops)

    calls: dict[str, list] = collections.defaultdict(list)
    local: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    unknown_loops = 0
    largest = (0, "", "")
    for name, lines in comps.items():
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            result, op, rest = m.group(2), m.group(3), m.group(4)
            base = op[:-len("-start")] if op.endswith("-start") else op
            if base in COLLECTIVES:  # keyed by (kind, source op); totals per kind are summed at the end
                local[name][(base, _short_op(_op_name(line, op)))] += operand_bytes(rest)
            if op in ("dot", "convolution"):
                local[name]["flops"] += _matmul_flops(op, result, rest, shapes)
            elif op == "custom-call":
                local[name]["flops"] += _library_call_flops(result, rest, shapes)
            if op == "while":
                body = re.search(r"body=%?([\w.\-]+)", line)
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                if not trip:
                    unknown_loops += 1
                if body:
                    calls[name].append((body.group(1), int(trip.group(1)) if trip else 1))
            else:
                for key in ("to_apply", "calls", "true_computation", "false_computation"):
                    for callee in re.findall(key + r"=%?([\w.\-]+)", line):
                        calls[name].append((callee, 1))
                bc = re.search(r"branch_computations=\{([^}]*)\}", line)
                if bc:
                    calls[name].extend((c.strip().lstrip("%"), 1) for c in bc.group(1).split(","))
            if op not in ("parameter", "get-tuple-element", "tuple", "bitcast", "constant") and "fused" not in name:
                size = _shape_bytes(result)
                if not result.startswith("(") and size > largest[0]:
                    largest = (size, result.split("{")[0], _op_name(line, op))

    totals: collections.Counter = collections.Counter()

    def walk(name, mult, depth=0):
        if depth > 64:
            return
        for kind, b in local.get(name, {}).items():
            totals[kind] += b * mult
        for callee, n in calls.get(name, ()):
            walk(callee, mult * n, depth + 1)

    if entry:
        walk(entry, 1)
    flops = totals.pop("flops", 0)
    by_op = sorted(totals.items(), key=lambda kb: -kb[1])
    collectives: collections.Counter = collections.Counter()
    for (kind, _), b in by_op:
        collectives[kind] += b
    return {"collectives": dict(collectives), "matmul_flops": flops, "unknown_trip_loops": unknown_loops,
            # where the collective bytes come from: (kind, jax op_name tail), largest first
            "collectives_by_op": [{"kind": k, "op": op, "bytes": b} for (k, op), b in by_op],
            "largest": {"bytes": largest[0], "shape": largest[1], "op": _short_op(largest[2])}}


def _dims(shape_text: str) -> list[int]:
    m = _SHAPE.search(shape_text)
    return [int(x) for x in m.group(2).split(",") if x] if m else []


def peak_bytes(mem) -> int:
    """Peak device memory of a compiled program from its `memory_analysis()`: arguments + outputs
    - donated aliases + temporaries."""
    return mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes


def _matmul_flops(op: str, result: str, rest: str, shapes: dict) -> int:
    """2 x multiply-adds of a dot (result size x contracted size) or a convolution (result size x
    kernel size / output features), from the HLO text; 0 where the operands cannot be read."""
    ops = _split_operands(rest)
    named = re.findall(r"%([\w.\-]+)", ops)
    operands = [shapes.get(n, "") for n in named] if named else re.findall(r"\S+\[[\d,]*\]", ops)
    if len(operands) < 2:
        return 0
    out = math.prod(_dims(result))
    if op == "dot":
        lhs = _dims(operands[0])
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        contracted = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i) if m else 1
        return 2 * out * contracted
    rhs = _dims(operands[1])
    m = re.search(r"dim_labels=\w+_(\w+)->", rest)
    if not m or len(m.group(1)) != len(rhs):
        return 0
    return 2 * out * math.prod(rhs) // rhs[m.group(1).index("o")]


def _library_call_flops(result: str, rest: str, shapes: dict) -> int:
    """FLOPs of the GPU library calls XLA lowers matmuls, convolutions and fused attention to:
    cuBLAS GEMMs (contracting dims in the backend config), cuDNN convolutions (dim_labels, as a
    convolution) and cuDNN flash attention (counted as the dense math it replaces: 2 matmuls of
    B x N x T x S x H forward, 4 backward, masks ignored, as XLA's attention is counted)."""
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    target = target.group(1) if target else ""
    named = re.findall(r"%([\w.\-]+)", _split_operands(rest))
    if target.startswith("__cublas$"):
        m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', rest)
        if not named or not m:
            return 0
        lhs = _dims(shapes.get(named[0], ""))
        contracted = math.prod(lhs[int(i)] for i in re.findall(r"\d+", m.group(1)))
        return 2 * math.prod(_dims(result)) * contracted
    if target.startswith("__cudnn$conv"):
        # dim_labels and window are the forward convolution's in every direction; which array is
        # the forward output and which the kernel depends on the direction
        labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
        if len(named) < 2 or not labels:
            return 0
        ops = [shapes.get(n, "") for n in named[:2]]
        out, kernel = {"__cudnn$convBackwardInput": (ops[0], ops[1]),
                       "__cudnn$convBackwardFilter": (ops[1], result)}.get(target, (result, ops[1]))
        k = _dims(kernel)
        if len(k) != len(labels.group(1)):
            return 0
        return 2 * math.prod(_dims(out)) * math.prod(k) // k[labels.group(1).index("o")]
    if target.startswith("__cudnn$fmha"):
        if len(named) < 3:
            return 0
        q, k = _dims(shapes.get(named[0], "")), _dims(shapes.get(named[1], ""))
        if len(q) != 4 or len(k) != 4:
            return 0
        # B T N H layout (jax.nn.dot_product_attention); T x S from the query and key lengths
        per_matmul = 2 * q[0] * q[2] * q[1] * k[1] * q[3]
        return per_matmul * (4 if "Backward" in target else 2)
    return 0


def _op_name(line: str, default: str) -> str:
    m = re.search(r'op_name="([^"]*)"', line)
    return m.group(1) if m else default


def _short_op(op_name: str) -> str:
    """Keep the informative tail of a jax op_name (module path and primitive)."""
    parts = [p for p in op_name.split("/") if p and not p.startswith(("jit(", "jvp(", "transpose(", "checkpoint"))]
    return "/".join(parts[-4:])
