"""ベンチマークのスクリプトが壊れていないことのテスト（速さそのものは測りません）。

``benchmarks/gpu.py`` は GPU のあるマシンでしか意味のある数字を出しませんが、``--dry-run`` なら CuPy の代役と
CUDA シミュレータで、同じ手順を小さな大きさで最後まで通せます。
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mini_dl import cuda

ROOT = Path(__file__).resolve().parents[1]


def _smoke(script, tmp_path):
    """``benchmarks/<script>.py --smoke`` を最後まで動かし、書いた JSON を返します（時間は測りません）。"""
    out = tmp_path / f"{script}.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def test_gpu_benchmark_runs_end_to_end_in_dry_run(tmp_path):
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text(encoding="utf-8"))
    assert "dry-run" in r["device"]["name"]
    assert r["mlp_step"]["cpu_seconds"] > 0 and r["mlp_step"]["gpu_seconds"] > 0
    for m in r["matmul"]:
        assert m["max_abs_error"] < 1e-4, m  # タイル GEMM の結果は NumPy と同じ
        assert {"tiled", "naive", "library"} <= m.keys()
    assert {"bias_relu", "adam"} <= r["fusion"].keys()


@pytest.mark.skipif(cuda.is_available(), reason="GPU のあるマシンでは本当に測ってしまう")
def test_gpu_benchmark_without_a_gpu_says_so():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "GPU が見つかりません" in done.stderr


def test_cnn_benchmark_runs_end_to_end(tmp_path):
    # 時間は測らず（--smoke は 1 回ずつ）、スクリプトが最後まで動いて、比べる相手がそろった JSON を書くことだけを確かめます
    r = _smoke("cnn", tmp_path)
    assert {"CNN step, 1 threads", "conv forward", "conv backward"} <= r.keys()
    assert "mini_dl" in r["CNN step, 1 threads"] and "GEMM col @ W^T" in r["conv forward"]
    assert "mini_dl (NumPy only)" in r["CNN step, 1 threads"]
    faults = r.pop("page faults per step", None)  # Linux と macOS だけ（新しいプロセスで数えたページフォールト）
    assert faults is None or set(faults) >= {"mini_dl", "mini_dl (NumPy only)"}
    assert all(v["median_s"] > 0 for part in r.values() for v in part.values())


def test_transformer_benchmark_runs_end_to_end(tmp_path):
    # 時間は測らず、Transformer のブロックと KV キャッシュの生成の測定が最後まで動いて JSON を書くことだけを確かめます
    r = _smoke("transformer", tmp_path)
    assert {"block fwd+bwd, 1 threads", "generate"} <= r.keys()
    assert "mini_dl" in r["block fwd+bwd, 1 threads"]


def test_inference_benchmark_runs_end_to_end(tmp_path):
    # 時間は測らず、mini_dl と onnxruntime の推論の比べ方が最後まで動いて JSON を書くことだけを確かめます（第20章）
    r = _smoke("inference", tmp_path)
    assert {"MLP batch 1", "CNN batch 2048", "GPT batch 64"} <= r.keys()
    assert {"mini_dl", "ORT (no opt)", "ORT (all opt)"} <= r["MLP batch 1"].keys()
    assert all(v["median_s"] > 0 for part in r.values() for v in part.values())


def test_ecosystem_benchmark_runs_end_to_end(tmp_path):
    # 時間は測らず、mini_dl・手書きの NumPy・JAX・DeZero（と、入っていれば PyTorch）の比べ方が最後まで動くことだけを確かめます（第22章）
    r = _smoke("ecosystem", tmp_path)
    assert {"MLP 784-100-10", "MLP 784-1000-1000-10", "x + x forward"} <= r.keys()
    assert {"hand NumPy", "mini_dl", "JAX (jit)", "DeZero float32"} <= r["MLP 784-100-10"].keys()
    assert all(v["median_s"] > 0 for part in r.values() for v in part.values())
