"""Compile a moekit Triton kernel for an NVIDIA GPU on a machine without one, and count the SASS instructions
of its loops: a cheap first check of an instruction-count idea before any device time is spent.

    PYTHONPATH=src python3 tools/sass_loops.py gemv1_mxfp4 [--arch 90] [--warps 4] [--block-n 16] [--block-k 1024]
    PYTHONPATH=src python3 tools/sass_loops.py gemv2_mxfp4 --block-n 8 --block-k 256 --pdl --count ACQBULK,PREEXIT
    PYTHONPATH=src python3 tools/sass_loops.py gemm1_mxfp4 --block-m 16 --block-n 64 --block-k 32 --stages 4
    PYTHONPATH=src python3 tools/sass_loops.py gemm2_fp8_block_sm90 --block-n 256 --stages 4   (Gluon, 8 warps)
    PYTHONPATH=src python3 tools/sass_loops.py gemm2 --fp8-block 64 --block-m 16 --block-n 64 --block-k 128 --stages 4
    PYTHONPATH=src python3 tools/sass_loops.py gemm1 --fp8-block 128 --swap --block-n 128 --block-k 128
    PYTHONPATH=src python3 tools/sass_loops.py linear_gemv_mma --w-scale 1 --block-n 8 --block-k 128 --block-m 4 \
        --gemv-stages 4

Triton compiles for any target without a device (``triton.compile`` with a ``GPUTarget``); its wheel ships
``ptxas`` and ``cuobjdump``. Integer arguments that are multiples of 16 at run time must be marked
``divisible`` here (Triton specializes them, and vectorization depends on it), and arguments equal to 1 are
constants. Counts are static (one loop iteration), not a profile: they say nothing of stalls or occupancy,
which only ncu on the device measures (``docs/PERF_NOTES.md``, session 8: a decode with 25 % fewer
instructions per code ran slower).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_sass(fn, signature: dict, constants: dict, divisible, arch: int = 90, num_warps: int = 4,
                 num_stages: int = 3, gluon: bool = False):
    """SASS text and resource line of ``fn`` (a ``triton.jit`` function): ``signature`` maps every argument
    to a Triton type string ("*bf16", "i32", ...; constants are filled in, and constexpr parameters not in
    ``constants`` take their defaults), ``divisible`` names the arguments known to be multiples of 16."""
    names = list(fn.arg_names)
    constants = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}, **constants}
    sig = {n: "constexpr" if n in constants else signature[n] for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    if gluon:  # a Gluon kernel: its layouts and pipelining are explicit (no num_stages)
        from triton.experimental.gluon._runtime import GluonASTSource

        src, options = GluonASTSource(fn, sig, constants, attrs), {"num_warps": num_warps}
    else:
        src, options = ASTSource(fn, sig, constants, attrs), {"num_warps": num_warps, "num_stages": num_stages}
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return sass, res.strip().splitlines()[-1].strip()


def _instructions(sass: str):
    """[(address, instruction text)] of ``sass``."""
    return [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", sass)]


def _opcodes(body) -> collections.Counter:
    """Counter of the opcodes of ``body`` ([(address, text)]; a predicate such as ``@P0`` is skipped)."""
    return collections.Counter((t.split()[1] if t.startswith("@") else t.split()[0]) for _, t in body)


def loop_histograms(sass: str):
    """[(instruction count, Counter of opcodes)] for each loop (a backward branch) of ``sass``."""
    ins = _instructions(sass)
    where = {a: i for i, (a, _) in enumerate(ins)}
    out = []
    for i, (a, t) in enumerate(ins):
        m = re.search(r"BRA 0x([0-9a-f]+)", t)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in where:
            body = ins[where[int(m.group(1), 16)]:i + 1]
            out.append((len(body), _opcodes(body)))
    return out


def _gemv1_mxfp4(args):
    from moekit.kernels.moe_gemv import _moe_gemv1_kernel

    ptrs = {"x_ptr": "*bf16", "w_ptr": "*u8", "out_ptr": "*bf16", "ids_ptr": "*i32", "map_ptr": "*i32",
            "s_ptr": "*u8", "bias_ptr": "*bf16"}
    sig = {n: ptrs.get(n, "i32") for n in _moe_gemv1_kernel.arg_names}
    consts = {"stride_sk": 1, "HAS_MAP": False, "ACTIVATION": 0, "BLOCK_N": args.block_n, "BLOCK_K": args.block_k,
              "W_SCALE": 3, "GROUP_N": 1, "GROUP_K": 1, "HAS_BIAS": False, "PTX": args.ptx,
              "STAGES": args.gemv_stages, "PDL": args.pdl, "MMA": args.mma}
    div = list(ptrs)[:-1] + ["I", "K", "stride_xm", "stride_we", "stride_wn", "stride_om", "stride_se"]  # gpt-oss-20b
    return compile_sass(_moe_gemv1_kernel, sig, consts, div, args.arch, args.warps)


def _gemv2_mxfp4(args):
    """The decode GEMV 2 (gpt-oss-20b: top-4, mxfp4 weights) as ``moe_gemv`` launches it."""
    from moekit.kernels.moe_gemv import _moe_gemv2_kernel

    ptrs = {"a_ptr": "*bf16", "w_ptr": "*u8", "out_ptr": "*bf16", "ids_ptr": "*i32", "topk_w_ptr": "*fp32",
            "map_ptr": "*i32", "s_ptr": "*u8", "bias_ptr": "*bf16"}
    sig = {n: ptrs.get(n, "i32") for n in _moe_gemv2_kernel.arg_names}
    consts = {"stride_sk": 1, "HAS_MAP": False, "TOPK": 4, "BLOCK_N": args.block_n, "BLOCK_K": args.block_k,
              "W_SCALE": 3, "GROUP_N": 1, "GROUP_K": 1, "HAS_BIAS": False, "PTX": args.ptx,
              "STAGES": args.gemv_stages, "PDL": args.pdl, "MMA": args.mma}
    div = list(ptrs)[:-1] + ["N", "K", "stride_am", "stride_we", "stride_wn", "stride_om", "stride_se"]
    return compile_sass(_moe_gemv2_kernel, sig, consts, div, args.arch, args.warps)


def _gemm1_mxfp4(args):
    from moekit.kernels.moe_gemm import _moe_gemm1_kernel

    ptrs = {"x_ptr": "*bf16", "w_ptr": "*i32" if args.mma else "*u8", "out_ptr": "*bf16", "sorted_ptr": "*i32",
            "experts_ptr": "*i32", "npp_ptr": "*i32", "a_scale_ptr": "*fp32", "b_scale_ptr": "*u8",
            "b_zero_ptr": "*u8", "out_scale_ptr": "*fp32", "bias_ptr": "*bf16", "tiles_ptr": "*i32"}
    sig = {n: ptrs.get(n, "i32") for n in _moe_gemm1_kernel.arg_names}
    consts = {"stride_bsk": 1, "ACTIVATION": 0, "DOT_PRECISION": "tf32", "EVEN_K": not args.uneven_k,
              "BLOCK_M": args.block_m,
              "BLOCK_N": args.block_n, "BLOCK_K": args.block_k, "GROUP_M": 1, "QUANT": 5, "INT_ACC": False,
              "HAS_ZERO": False, "GROUP_N": 1, "GROUP_K": 32, "SCALE_TILE": False, "OUT_QUANT": 0, "QKIND": 0,
              "QMAX": 448.0, "EMIN": -6, "MX_DOT": args.mx_dot, "A_FMT": "bf16", "HAS_BIAS": False,
              "ASM_DECODE": args.mx_asm or args.mma, "TAILS": 0, "MX_WORDS": args.mma}
    div = ["x_ptr", "w_ptr", "out_ptr", "sorted_ptr", "experts_ptr", "npp_ptr", "b_scale_ptr", "I", "K",
           "stride_xm", "stride_we", "stride_wn", "stride_om", "up_offset", "stride_bse"]  # gpt-oss-20b
    return compile_sass(_moe_gemm1_kernel, sig, consts, div, args.arch, args.warps, args.stages)


def _gemm_plain(args, gemm: int):
    """GEMM 1 or 2 of ``moekit.kernels.moe_gemm`` with bf16 weights, or with ``--fp8`` fp8 w8a8 per channel
    (QUANT 1), or with ``--fp8-block G`` fp8 w8a8 128x128 blocks (QUANT 2) whose activation groups along K are
    G wide (GEMM 2: G < BLOCK_K is the grouped-step path); ``--tails N``: the tail-tile code paths down to
    ``BLOCK_M >> N`` rows (0: full tiles only)."""
    from moekit.kernels.moe_gemm import _moe_gemm1_kernel, _moe_gemm2_kernel

    fn = _moe_gemm1_kernel if gemm == 1 else _moe_gemm2_kernel
    elem = "*fp8e4nv" if args.fp8 or args.fp8_block else "*bf16"
    ptrs = {"x_ptr": elem, "a_ptr": elem, "w_ptr": elem, "out_ptr": "*bf16", "y_ptr": "*bf16", "topk_w_ptr": "*fp32",
            "sorted_ptr": "*i32", "experts_ptr": "*i32", "npp_ptr": "*i32", "tiles_ptr": "*i32",
            "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32", "b_zero_ptr": "*fp32", "out_scale_ptr": "*fp32",
            "bias_ptr": "*bf16"}
    sig = {n: ptrs.get(n, "i32") for n in fn.arg_names}
    consts = {"DOT_PRECISION": "tf32", "EVEN_K": True, "BLOCK_M": args.block_m, "BLOCK_N": args.block_n,
              "BLOCK_K": args.block_k, "GROUP_M": 8, "TAILS": args.tails, "QUANT": 1 if args.fp8 else 0,
              **({"ACTIVATION": 0} if gemm == 1 else {"MUL_WEIGHT": True})}
    if args.fp8_block:
        consts.update(QUANT=2, GROUP_N=128, GROUP_K=128, **({"GROUP_KA": args.fp8_block} if gemm == 2 else {}))
    if args.weight_only:  # packed int4 (group 128) or int8 per channel, bf16 activations
        int4 = args.weight_only == "int4"
        ptrs["w_ptr"] = "*u8" if int4 else "*i8"
        sig = {n: ptrs.get(n, "i32") for n in fn.arg_names}
        consts.update(QUANT=4 if int4 else 3, GROUP_K=128 if int4 else 1, SCALE_TILE=True,
                      ASM_DECODE=int4 and args.int4_asm)
    if args.swap:
        consts.update(SWAP_AB=True)
    if args.pdl:
        consts.update(PDL=True)
    div = [n for n in fn.arg_names if n in ptrs or n in ("I", "N", "K", "stride_xm", "stride_am", "stride_we",
                                                          "stride_wn", "stride_om", "stride_ym", "up_offset")]
    return compile_sass(fn, sig, consts, div, args.arch, args.warps, args.stages)


def _gemm_fp8_block_sm90(args, gemm: int):
    from moekit.kernels import moe_gemm_sm90 as g
    from moekit.quant.ops import MIN_SCALE

    fn = g._moe_gemm1_fp8_block_kernel if gemm == 1 else g._moe_gemm2_fp8_block_kernel
    ptrs = {n: "*fp32" for n in ("out_scale_ptr", "a_scale_ptr", "b_scale_ptr", "topk_w_ptr")}
    ptrs.update({n: "*fp8e4nv" for n in ("x_ptr", "a_ptr", "w_ptr", "out_ptr")})
    ptrs.update({n: "*i32" for n in ("sorted_ptr", "experts_ptr", "npp_ptr")},
                y_ptr="*fp32" if gemm == 2 and args.split else "*bf16")
    sig = {n: ptrs.get(n, "i32") for n in fn.arg_names}
    consts = {"BLOCK_M": 64, "BLOCK_N": 128 if gemm == 1 else args.block_n, "BLOCK_K": 128, "GROUP_M": 8,
              "STAGES": args.stages, "num_warps": 8 if gemm == 1 else args.gemm2_warps}
    consts.update({"INV_QMAX": 1 / 448.0, "MIN_S": MIN_SCALE} if gemm == 1 else
                  {"MUL_WEIGHT": not args.dense, "DENSE": args.dense, "SPLIT": args.dense and args.split})
    div = [n for n in fn.arg_names if n in ptrs or n in ("I", "N", "K", "stride_xm", "stride_am", "stride_we",
                                                          "stride_wn", "stride_om", "stride_ym")]
    return compile_sass(fn, sig, consts, div, args.arch, 8 if gemm == 1 else args.gemm2_warps, gluon=True)


def _linear_gemv(args):
    """The dense router's M = 1 GEMV with an fp8 weight, compiled as its launcher does (``--w-scale`` 0 none,
    1 per channel, 2 128x128 blocks; ``--gemv-stages`` the config's depth)."""
    from moekit.kernels.linear_gemv import _gemv_kernel, loop_stages

    ptrs = {"x_ptr": "*bf16", "w_ptr": "*fp8e4nv", "out_ptr": "*bf16", "bias_ptr": "*bf16", "ws_ptr": "*fp32"}
    sig = {n: ptrs.get(n, "i32") for n in _gemv_kernel.arg_names}
    consts = {"W_SCALE": args.w_scale, "SCALE_BN": 128, "SCALE_BK": 128, "HAS_BIAS": False, "ROWS": args.block_n,
              "BLOCK_K": args.block_k, "LOOP_STAGES": loop_stages(args.w_scale, args.gemv_stages)}
    div = list(ptrs) + ["N", "K", "stride_wn"]
    return compile_sass(_gemv_kernel, sig, consts, div, args.arch, args.warps)


def _linear_gemv_mma(args):
    """The dense router's tensor-core GEMV (M <= 16) as its launcher compiles it: ``--w-scale`` 0 (a bf16 weight),
    1 (fp8 per channel) or 2 (fp8 128x128 blocks); ``--block-n`` rows per program, ``--block-k`` each warp's K
    slice, ``--warps`` the slices, ``--gemv-stages`` the loop's depth, ``--block-m`` M (the token columns are
    its next power of two)."""
    from moekit.kernels.linear_gemv_mma import _gemv_mma_kernel
    from moekit.linear import gemv_mma_columns

    ptrs = {"x_ptr": "*bf16", "w_ptr": "*fp8e4nv" if args.w_scale else "*bf16", "out_ptr": "*bf16",
            "bias_ptr": "*bf16", "ws_ptr": "*fp32"}
    sig = {n: ptrs.get(n, "i32") for n in _gemv_mma_kernel.arg_names}
    consts = {"W_SCALE": args.w_scale, "SCALE_BN": 128, "SCALE_BK": 128, "HAS_BIAS": False, "DOT_PRECISION": "tf32",
              "ROWS": args.block_n, "S": args.warps, "BLOCK_K": args.block_k,
              "MP": gemv_mma_columns(args.block_m), "LOOP_STAGES": args.gemv_stages}
    div = list(ptrs) + ["N", "K", "stride_xm", "stride_wn", "stride_om"]
    return compile_sass(_gemv_mma_kernel, sig, consts, div, args.arch, args.warps)


KERNELS = {"gemv1_mxfp4": _gemv1_mxfp4, "gemv2_mxfp4": _gemv2_mxfp4, "gemm1_mxfp4": _gemm1_mxfp4,
           "linear_gemv": _linear_gemv, "linear_gemv_mma": _linear_gemv_mma,
           "gemm1_fp8_block_sm90": lambda a: _gemm_fp8_block_sm90(a, 1),
           "gemm2_fp8_block_sm90": lambda a: _gemm_fp8_block_sm90(a, 2),
           "gemm1": lambda a: _gemm_plain(a, 1), "gemm2": lambda a: _gemm_plain(a, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kernel", choices=sorted(KERNELS))
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--block-n", type=int, default=16)
    ap.add_argument("--block-k", type=int, default=1024)
    ap.add_argument("--block-m", type=int, default=16)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--no-mx-dot", dest="mx_dot", action="store_false", help="gemm1_mxfp4: moekit's own decode")
    ap.add_argument("--mx-asm", action="store_true", help="gemm1_mxfp4: the inline-PTX decode (BLOCK_K 32-128)")
    ap.add_argument("--mma", action="store_true",
                    help="gemm1_mxfp4, gemv1_mxfp4, gemv2_mxfp4: weights in the mma layout (gemm1: int32 words, "
                         "PTX decode)")
    ap.add_argument("--uneven-k", action="store_true", help="gemm1_mxfp4: K not a multiple of BLOCK_K (masked steps)")
    ap.add_argument("--ptx", action="store_true", help="gemv1_mxfp4, gemv2_mxfp4: the inline-PTX decode")
    ap.add_argument("--pdl", action="store_true",
                    help="gemv1_mxfp4, gemv2_mxfp4, gemm1, gemm2: as launched with programmatic dependent launch")
    ap.add_argument("--gemv-stages", type=int, default=1,
                    help="gemv1_mxfp4, gemv2_mxfp4, linear_gemv: the K loop's pipelining depth")
    ap.add_argument("--w-scale", type=int, default=1, choices=(0, 1, 2),
                    help="linear_gemv(_mma): the weight's scales")
    ap.add_argument("--gemm2-warps", type=int, default=8, help="gemm2_fp8_block_sm90: 8 or 4 warps")
    ap.add_argument("--dense", action="store_true",
                    help="gemm2_fp8_block_sm90 as the dense router's gluon_w8a8 path (DENSE, no routing weight)")
    ap.add_argument("--int4-asm", action="store_true", help="--weight-only int4: the inline-PTX decode")
    ap.add_argument("--weight-only", choices=("int4", "int8"), default=None,
                    help="gemm1, gemm2: weight-only int4 (group 128) / int8 (per channel) weights, bf16 activations")
    ap.add_argument("--split", action="store_true",
                    help="with --dense: split-K (fp32 partials; the gluon_w8a8 path's SPLIT_K > 1)")
    ap.add_argument("--tails", type=int, default=0, help="gemm1, gemm2: tail-tile paths down to BLOCK_M >> TAILS rows")
    ap.add_argument("--fp8", action="store_true", help="gemm1, gemm2: fp8 w8a8 per channel instead of bf16")
    ap.add_argument("--fp8-block", type=int, default=0, metavar="G",
                    help="gemm1, gemm2: fp8 w8a8 128x128 blocks, activation groups G wide along K (gemm2)")
    ap.add_argument("--swap", action="store_true",
                    help="gemm1, gemm2 with --fp8 / --fp8-block: the weight as the MMA's left operand (SWAP_AB)")
    ap.add_argument("--top", type=int, default=24, help="opcodes listed per loop (most frequent first)")
    ap.add_argument("--count", default="", help="comma-separated opcodes counted over the whole kernel")
    args = ap.parse_args()
    sass, res = KERNELS[args.kernel](args)
    print(res)
    if args.count:
        ops = _opcodes(_instructions(sass))
        print("kernel:", ", ".join(f"{op} {ops[op]}" for op in args.count.split(",")))
    for n, ops in loop_histograms(sass):
        print(f"loop of {n} instructions:", ", ".join(f"{k} {v}" for k, v in ops.most_common(args.top)))


if __name__ == "__main__":
    main()
