"""lip_jax/perf/hlo_cost.py: FLOPs and collective bytes of compiled HLO, with loop trip counts."""

import jax
import jax.numpy as jnp

from lip_jax.perf import hlo_cost


def test_matmul_and_conv_flops_count_every_loop_iteration():
    def f(a, b, x, w):
        looped = jax.lax.fori_loop(0, 5, lambda i, h: h @ b, a)  # 5 x [4, 8] @ [8, 8]
        grouped = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                               feature_group_count=2)  # [1, 6, 6, 4] * [3, 3, 2, 6]
        return looped, grouped

    args = (jnp.ones((4, 8)), jnp.ones((8, 8)), jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 2, 6)))
    compiled = jax.jit(f).lower(*args).compile()
    stats = hlo_cost.parse_hlo(compiled.as_text())
    dot = 2 * 4 * 8 * 8 * 5
    conv = 2 * (6 * 6 * 6) * (3 * 3 * 2)  # output size x (kernel taps x input channels per group)
    assert stats["matmul_flops"] == dot + conv
    assert stats["unknown_trip_loops"] == 0
    # XLA's own estimate counts the loop body once: the reason for this parser
    assert compiled.cost_analysis()["flops"] < dot + conv
    assert stats["largest"]["bytes"] == 6 * 6 * 6 * 4


HLO = """
HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p = (s32[], f32[256]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[256]{0} get-tuple-element(%p), index=1
  %r = f32[256]{0} all-reduce(%x), replica_groups={{0,1}}, to_apply=%add, metadata={op_name="jit(step)/transpose(jvp(Net))/ff/dot_general"}
  ROOT %t = (s32[], f32[256]{0}) tuple(%i, %r)
}

%cond (p: (s32[], f32[256])) -> pred[] {
  %p = (s32[], f32[256]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: f32[256], y: f32[64,32]) -> (s32[], f32[256]) {
  %x = f32[256]{0} parameter(0)
  %y = f32[64,32]{1,0} parameter(1)
  %g = f32[128,32]{1,0} all-gather(%y), dimensions={0}, replica_groups={{0,1}}
  %z = s32[] constant(0)
  %t = (s32[], f32[256]{0}) tuple(%z, %x)
  ROOT %w = (s32[], f32[256]{0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"7"}}
}
"""


def test_collective_bytes_apply_trip_counts():
    stats = hlo_cost.parse_hlo(HLO)
    assert stats["collectives"] == {"all-reduce": 7 * 256 * 4, "all-gather": 64 * 32 * 4}
    assert stats["unknown_trip_loops"] == 0
    # per source (op_name tail; the HLO op without metadata), largest first
    assert stats["collectives_by_op"] == [{"kind": "all-gather", "op": "all-gather", "bytes": 64 * 32 * 4},
                                          {"kind": "all-reduce", "op": "ff/dot_general", "bytes": 7 * 256 * 4}]
    unknown = hlo_cost.parse_hlo(HLO.replace(', backend_config={"known_trip_count":{"n":"7"}}', ""))
    assert unknown["collectives"]["all-reduce"] == 256 * 4 and unknown["unknown_trip_loops"] == 1


# What XLA:GPU emits instead of dot / convolution: cuBLAS GEMMs, cuDNN convolutions in all three
# directions (dim_labels and window always those of the forward convolution) and cuDNN attention.
GPU_HLO = """
HloModule g

ENTRY %main (a: f32[32,16], b: f32[32,8], x: f32[2,8,8,4], w: f32[6,3,3,4], dy: f32[2,8,8,6], q: bf16[2,16,4,8], k: bf16[2,24,4,8]) -> f32[16,8] {
  %a = f32[32,16]{1,0} parameter(0)
  %b = f32[32,8]{1,0} parameter(1)
  %x = f32[2,8,8,4]{3,2,1,0} parameter(2)
  %w = f32[6,3,3,4]{3,2,1,0} parameter(3)
  %dy = f32[2,8,8,6]{3,2,1,0} parameter(4)
  %q = bf16[2,16,4,8]{3,2,1,0} parameter(5)
  %k = bf16[2,24,4,8]{3,2,1,0} parameter(6)
  %gemm = (f32[16,8]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_batch_dimensions":[],"lhs_contracting_dimensions":["0"],"rhs_batch_dimensions":[],"rhs_contracting_dimensions":["0"]}}}
  %fwd = (f32[2,8,8,6]{3,2,1,0}, u8[16]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %bwi = (f32[2,8,8,4]{3,2,1,0}, u8[16]{0}) custom-call(%dy, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %bwf = (f32[6,3,3,4]{3,2,1,0}, u8[16]{0}) custom-call(%x, %dy), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %att = (bf16[2,16,4,8]{3,2,1,0}, f32[2,4,16]{2,1,0}, u8[16]{0}) custom-call(%q, %k, %k), custom_call_target="__cudnn$fmhaSoftmax"
  %attb = (bf16[2,16,4,8]{3,2,1,0}, bf16[2,24,4,8]{3,2,1,0}, bf16[2,24,4,8]{3,2,1,0}, u8[16]{0}) custom-call(%q, %k, %k), custom_call_target="__cudnn$fmhaSoftmaxBackward"
  ROOT %out = f32[16,8]{1,0} get-tuple-element(%gemm), index=0
}
"""


def test_gpu_library_calls_count_as_the_math_they_replace():
    conv = 2 * (2 * 8 * 8 * 6) * (3 * 3 * 4)  # forward output x (taps x input channels), each direction
    attention = 2 * (2 * 4 * 16 * 24 * 8)  # one B x N x T x S x H matmul
    assert hlo_cost.parse_hlo(GPU_HLO)["matmul_flops"] == 2 * 16 * 8 * 32 + 3 * conv + 2 * attention + 4 * attention
    # each call on its own, so a wrong direction cannot hide behind another
    for name, flops in [("gemm", 2 * 16 * 8 * 32), ("fwd", conv), ("bwi", conv), ("bwf", conv),
                        ("att", 2 * attention), ("attb", 4 * attention)]:
        lines = [ln for ln in GPU_HLO.splitlines()
                 if "custom-call" not in ln or ln.strip().startswith(f"%{name} ")]
        assert hlo_cost.parse_hlo("\n".join(lines))["matmul_flops"] == flops, name
