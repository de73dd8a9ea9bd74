"""本の出力がどの機械でも同じになることを確かめます（DESIGN.md「Outputs that hold on every machine」）。

ノートブックは AVX-512 の機械で実行して保存しています。読者の機械（AVX2 のノート PC、Apple silicon、GPU）では
NumPy の SIMD の経路や BLAS のカーネルが違い、浮動小数点数の最後の桁が変わります。そこで、本のすべての
ノートブックを、NumPy の SIMD を SSE4.2（X86_V2）まで落とし、OpenBLAS のカーネルを Sandy Bridge 用にした
別のプロセスで nbval にかけ、比べる出力がすべて一致することを確かめます。

手で試すときは、リポジトリの直下で::

    NPY_DISABLE_CPU_FEATURES="X86_V4 X86_V3 AVX512_ICL AVX512_SPR" OPENBLAS_CORETYPE=Sandybridge \\
        python -m pytest book --nbval --nbval-current-env --nbval-sanitize-with book/sanitize.cfg -p no:cacheprovider
"""
import os
import platform
import subprocess
import sys

import pytest

import booktools

ROOT = booktools.ROOT

# NumPy 2.4 の CPU 機能のグループ名。X86_V4（AVX-512）と X86_V3（AVX2・FMA）と、その上の AVX512_ICL・AVX512_SPR を止めます。
DISABLED = "X86_V4 X86_V3 AVX512_ICL AVX512_SPR"


def _env():
    env = dict(os.environ)
    # この環境にもともと OPENBLAS_* が設定されていることがあるので、上書きします
    for key in [k for k in env if k.startswith("OPENBLAS_")]:
        del env[key]
    env["NPY_DISABLE_CPU_FEATURES"] = DISABLED
    env["OPENBLAS_CORETYPE"] = "Sandybridge"
    env["PYTHONHASHSEED"] = "0"
    return env


pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="NPY_DISABLE_CPU_FEATURES と OPENBLAS_CORETYPE の名前は x86_64 のものです")


def test_the_switches_really_change_numpy_and_openblas():
    code = ("import numpy as np, io, contextlib\n"
            "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
            "print(f['X86_V3'], f['X86_V4'], f['AVX512_ICL'])\n"
            "from threadpoolctl import threadpool_info\n"
            "print([i.get('architecture') for i in threadpool_info() if i.get('internal_api') == 'openblas'])\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "False False False", f"NumPy の AVX2・AVX-512 の経路が止まっていません: {lines[0]}"
    assert "Sandybridge" in lines[1], f"OpenBLAS のカーネルが Sandybridge になっていません: {lines[1]}"


@pytest.mark.timeout(900)  # 本のすべてのノートブックをもう一度実行するので、ほかのテストの 300 秒では足りません
def test_book_outputs_survive_another_simd_level_and_blas_kernel():
    notebooks = [str(p.relative_to(ROOT)) for p in booktools.toc_notebooks()]
    cmd = [sys.executable, "-m", "pytest", *notebooks, "--nbval", "--nbval-current-env",
           "--nbval-sanitize-with", "book/sanitize.cfg", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        "SIMD の段階と BLAS のカーネルを変えると、本の比べる出力が変わりました。機械で変わる数は "
        "nbval-ignore-output のセルで表示し、remove-cell の隠しセルで許容範囲を assert してください。\n"
        + proc.stdout[-6000:] + proc.stderr[-2000:])
