"""Developer tools outside the package: ``tools/sass_loops.py`` compiles kernels for an NVIDIA GPU on any machine."""
import os
import subprocess
import sys

_ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_sass_loops_counts_the_mxfp4_gemm_loop():
    """The grouped mxfp4 GEMM 1 (inline-PTX decode form) compiles for sm_90 without a GPU, and its K loop is
    found and counted: wgmma and the decode's bf16 multiplies. Run in a subprocess without
    TRITON_INTERPRET (an interpreted kernel cannot be compiled)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.join(_ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, os.path.join(_ROOT, "tools", "sass_loops.py"), "gemm1_mxfp4",
                          "--block-m", "32", "--block-n", "64", "--block-k", "32", "--stages", "4", "--mx-asm"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("REG:")
    loop = max((ln for ln in lines if ln.startswith("loop of")), key=lambda ln: int(ln.split()[2]))
    assert "HGMMA" in loop and "HMUL2.BF16_V2" in loop
