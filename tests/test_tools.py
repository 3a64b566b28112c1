"""Developer tools outside the package: ``tools/sass_loops.py`` compiles kernels for an NVIDIA GPU on any machine;
``tools/merge_linear_tables.py`` merges a partial ``moekit tune-linear`` run into existing tables,
``tools/compare_linear_tables.py`` compares two runs bucket by bucket."""
import os
import subprocess
import sys

_ROOT = os.path.join(os.path.dirname(__file__), "..")


def _run_script(path, *args):
    """Run the repository's script ``path`` (relative to the root) with ``args`` in a subprocess without
    TRITON_INTERPRET (an interpreted kernel cannot be compiled), moekit from ``src``; its stdout, once it
    succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.join(_ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, os.path.join(_ROOT, path), *map(str, args)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_sass_loops_counts_the_mxfp4_gemm_loop():
    """The grouped mxfp4 GEMM 1 (inline-PTX decode form) compiles for sm_90 without a GPU, and its K loop is
    found and counted: wgmma and the decode's bf16 multiplies. Run in a subprocess without
    TRITON_INTERPRET (an interpreted kernel cannot be compiled)."""
    lines = _run_script("tools/sass_loops.py", "gemm1_mxfp4", "--block-m", 32, "--block-n", 64, "--block-k", 32,
                        "--stages", 4, "--mx-asm").splitlines()
    assert lines[0].startswith("REG:")
    loop = max((ln for ln in lines if ln.startswith("loop of")), key=lambda ln: int(ln.split()[2]))
    assert "HGMMA" in loop and "HMUL2.BF16_V2" in loop


def test_mxfp4_mma_layout_loop_waits_once_per_dot():
    """The "mma"-layout mxfp4 GEMM 1 (32-row tile, 128-code steps) decodes the words without byte loads or
    shuffles of the tokens' halves, and its 16 wgmmas wait twice a step (one synchronous group per dot,
    ``moe_gemm._mx_words_tokens``), not once per wgmma."""
    stdout = _run_script("tools/sass_loops.py", "gemm1_mxfp4", "--mma", "--block-m", 32, "--block-n", 64,
                         "--block-k", 128, "--top", 200)
    loop = max((ln for ln in stdout.splitlines() if ln.startswith("loop of")), key=lambda ln: int(ln.split()[2]))
    ops = dict(item.rsplit(" ", 1) for item in loop.split(": ", 1)[1].split(", "))
    assert int(ops["HGMMA.64x32x16.F32.BF16"]) == 16 and int(ops["WARPGROUP.DEPBAR.LE"]) == 2, loop
    assert int(loop.split()[2]) < 600, loop  # the plain layout's loop: 732


def test_gluon_fp8_block_gemms_keep_their_wgmmas_asynchronous():
    """The Gluon fp8 block GEMMs (``moekit.kernels.moe_gemm_sm90``) compile for sm_90 without a GPU, and in
    each K loop (two steps) ptxas keeps the wgmmas asynchronous: one ``WARPGROUP.DEPBAR`` per K step. Any
    instruction touching an in-flight accumulator makes ptxas wait after every wgmma (one per 32-deep slice:
    8 or 16 per loop)."""
    for kernel, wgmmas in (("gemm1_fp8_block_sm90", 16), ("gemm2_fp8_block_sm90", 8)):
        stdout = _run_script("tools/sass_loops.py", kernel, "--block-n", 256, "--stages", 4, "--top", 200)
        loop = max((ln for ln in stdout.splitlines() if ln.startswith("loop of")),
                   key=lambda ln: int(ln.split()[2]))
        ops = dict(item.rsplit(" ", 1) for item in loop.split(": ", 1)[1].split(", "))
        assert sum(int(v) for k, v in ops.items() if k.startswith("QGMMA")) == wgmmas, loop
        assert int(ops["WARPGROUP.DEPBAR.LE"]) == 2, loop


def test_warp_specialized_prototype_compiles():
    """The warp-specialized fp8 block prototype (``benchmarks/proto_ws_fp8_block.py``, not shipped) compiles for
    sm_90 without a GPU, without spills, each consumer loop with 4 wgmmas and one wait (so it does not rot
    before a session runs it on a GPU)."""
    stdout = _run_script("benchmarks/proto_ws_fp8_block.py", "--compile")
    lines = stdout.splitlines()
    assert sum("STACK:0 " in ln for ln in lines) == 2, stdout
    consumers = [ln for ln in lines if "QGMMA" in ln]
    assert len(consumers) == 4 and all("'WARPGROUP.DEPBAR.LE': 1" in ln for ln in consumers), stdout


def test_linear_gemv_pipelining():
    """The dense router's gemv (``moekit.kernels.linear_gemv``) as measured in session 11: with per-channel
    scales its K loop is software-pipelined (cp.async, LDGSTS), with block scales it is not (plain loads).
    A triton that changes either would change what the tables were tuned on."""
    loops = {}
    for w_scale in (1, 2):
        stdout = _run_script("tools/sass_loops.py", "linear_gemv", "--w-scale", w_scale, "--gemv-stages", 4,
                             "--block-n", 4, "--block-k", 512)
        loops[w_scale] = [ln for ln in stdout.splitlines() if ln.startswith("loop of")]
        assert loops[w_scale], stdout
    assert any("LDGSTS" in ln for ln in loops[1]), loops[1]
    assert not any("LDGSTS" in ln for ln in loops[2]) and any("LDG.E" in ln for ln in loops[2]), loops[2]


def test_linear_gemv_mma_pipelining():
    """The dense router's gemv_mma (``moekit.kernels.linear_gemv_mma``) as tuned in session 12: for each weight
    format its K loop is software-pipelined (LDGSTS) and multiplies on tensor cores (HMMA), at 4 and 16 tokens."""
    for w_scale, m in ((0, 4), (1, 16), (2, 4)):
        stdout = _run_script("tools/sass_loops.py", "linear_gemv_mma", "--w-scale", w_scale, "--gemv-stages", 4,
                             "--block-n", 8, "--block-k", 128, "--block-m", m)
        loops = [ln for ln in stdout.splitlines() if ln.startswith("loop of")]
        assert any("LDGSTS" in ln and "HMMA" in ln for ln in loops), (w_scale, m, stdout)


def test_merge_linear_tables(tmp_path):
    """The new run's buckets replace the base's, the base's other buckets stay, tables only in the base are
    copied, and the merged tables parse without problems."""
    import json

    from moekit.linear import parse_table

    sys.path.insert(0, os.path.join(_ROOT, "tools"))
    try:
        from merge_linear_tables import main
    finally:
        sys.path.pop(0)
    base, new, out = tmp_path / "base", tmp_path / "new", tmp_path / "out"
    base.mkdir()
    new.mkdir()
    skinny = {"path": "skinny", "BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 128, "SPLIT_K": 3}
    (base / "a.json").write_text(json.dumps({"1": skinny, "64": {"path": "torch"}, "_meta": {"run": "old"}}))
    (base / "b.json").write_text(json.dumps({"1": {"path": "torch"}}))
    gemv = {"path": "gemv", "BLOCK_SIZE_M": 1, "BLOCK_SIZE_N": 4, "BLOCK_SIZE_K": 512, "num_stages": 4}
    (new / "a.json").write_text(json.dumps({"1": gemv, "_meta": {"run": "new"}}))
    main(str(base), str(new), str(out))
    a = json.loads((out / "a.json").read_text())
    assert a["1"] == gemv and a["64"] == {"path": "torch"}
    assert a["_meta"]["buckets_from_this_run"] == [1] and a["_meta"]["other_buckets_from"] == {"run": "old"}
    assert json.loads((out / "b.json").read_text()) == {"1": {"path": "torch"}}
    table, problems = parse_table(out / "a.json")
    assert not problems and sorted(table) == [1, 64]


def test_decode_gemvs_compile_their_programmatic_launch_instructions():
    """On sm_90 the decode GEMVs launched with PDL wait for the kernel before them (``griddepcontrol.wait``:
    SASS ACQBULK) and GEMV 1 lets GEMV 2 launch (``griddepcontrol.launch_dependents``: PREEXIT); without PDL
    neither instruction is there. Compiled without a GPU (``tools/sass_loops.py --count``)."""
    for kernel, pdl, expected in (("gemv1_mxfp4", False, "ACQBULK 0, PREEXIT 0"),
                                  ("gemv2_mxfp4", False, "ACQBULK 0, PREEXIT 0"),
                                  ("gemv1_mxfp4", True, "ACQBULK 1, PREEXIT 1"),
                                  ("gemv2_mxfp4", True, "ACQBULK 1, PREEXIT 0")):
        out = _run_script("tools/sass_loops.py", kernel, "--block-n", 8, "--block-k", 256, "--count",
                          "ACQBULK,PREEXIT", *(["--pdl"] if pdl else []))
        assert f"kernel: {expected}" in out.splitlines(), (kernel, pdl, out)


def test_grouped_gemms_compile_their_chain_instructions():
    """On sm_90 both grouped GEMMs launched chained (``kernels.pdl.chain``) wait for the kernel before them
    (ACQBULK) and let the next one launch (PREEXIT), once each; plainly compiled, neither is there."""
    for kernel in ("gemm1", "gemm2"):
        for pdl, expected in ((False, "ACQBULK 0, PREEXIT 0"), (True, "ACQBULK 1, PREEXIT 1")):
            out = _run_script("tools/sass_loops.py", kernel, "--block-m", 16, "--block-n", 64, "--block-k", 64,
                              "--count", "ACQBULK,PREEXIT", *(["--pdl"] if pdl else []))
            assert f"kernel: {expected}" in out.splitlines(), (kernel, pdl, out)


def _kernel_counts(out):
    """{opcode: count} of sass_loops' ``kernel:`` line (``--count``)."""
    line = next(ln for ln in out.splitlines() if ln.startswith("kernel:"))
    return {op: int(n) for op, n in (part.rsplit(" ", 1) for part in line[len("kernel: "):].split(", "))}


def test_plain_gemms_compile_their_tail_tile_paths():
    """The grouped GEMMs of ``moekit.kernels.moe_gemm`` compile for sm_90 with every tail-tile height (tails down
    to 16 rows from 128): the full-height path keeps its wgmmas (as many as without tails), the 32- and 16-row
    paths run mma.sync, and there is a K loop per height. The fp8 per-channel GEMM 1 compiles too (its short tiles
    upcast e4m3 to fp16 for mma.sync). The interpreter cannot catch a path ptxas refuses (session 14's 16-deep
    fp8 dot), hence this."""
    wgmma, mma = "HGMMA.64x128x16.F32.BF16", "HMMA.16816.F32.BF16"
    base = ["--block-m", 128, "--block-n", 128, "--block-k", 64, "--warps", 8, "--stages", 3, "--count",
            f"{wgmma},{mma}"]
    full = _run_script("tools/sass_loops.py", "gemm1", *base)
    tails = _run_script("tools/sass_loops.py", "gemm1", "--tails", 3, *base)
    assert _kernel_counts(full)[wgmma] == _kernel_counts(tails)[wgmma] > 0
    assert _kernel_counts(full)[mma] == 0 < _kernel_counts(tails)[mma]
    assert sum(ln.startswith("loop of") for ln in tails.splitlines()) == 4
    fp8 = _run_script("tools/sass_loops.py", "gemm1", "--tails", 3, "--fp8", "--block-m", 128, "--block-n", 128,
                      "--block-k", 128, "--warps", 8, "--stages", 3)
    assert fp8.startswith("REG:") and "HMMA.16816.F32" in fp8


def test_compare_linear_tables(tmp_path):
    """Only buckets present in both runs are compared (other devices' tables filtered out); old / new per bucket
    and their geometric mean."""
    import json

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    name = "linear,N=8,K=16,device_name=GPU_A,dtype=bf16,quant=fp8_channel.json"
    (old / name).write_text(json.dumps({"64": {"path": "torch", "us": 20.0}, "256": {"path": "torch", "us": 9.0},
                                        "_meta": {}}))
    (new / name).write_text(json.dumps({"64": {"path": "triton_w8a8", "us": 10.0}, "1024": {"path": "torch",
                                                                                          "us": 5.0}}))
    other = name.replace("GPU_A", "GPU_B")
    (old / other).write_text(json.dumps({"64": {"path": "torch", "us": 1.0}}))
    (new / other).write_text(json.dumps({"64": {"path": "torch", "us": 2.0}}))
    out = _run_script("tools/compare_linear_tables.py", old, new, "--device", "GPU_A").splitlines()
    assert len(out) == 2 and "M=   64" in out[0] and "torch" in out[0] and "triton_w8a8" in out[0]
    assert out[0].endswith("x2.00") and out[1].startswith("1 buckets: geometric mean old/new x2.000")
