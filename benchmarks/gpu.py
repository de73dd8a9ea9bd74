"""GPU の上の mini_dl の速さを測り、JSON に書きます（GPU のあるマシンで実行します）。

    python benchmarks/gpu.py --out benchmarks/results_gpu.json   # GPU で測る（数分）
    python benchmarks/gpu.py --dry-run                           # GPU なしで、手順だけを小さく確かめる

測るもの（時間はすべて中央値）:

* MLP の学習 1 ステップ（784-1000-1000-10、バッチ 100、float32、Adam）: NumPy（CPU）と CuPy（GPU）。
* ``kernels.matmul``（共有メモリのタイル GEMM）と ``kernels.matmul_naive``、CuPy の ``@``（cuBLAS）: 正方行列。
* 融合の有無: バイアス+ReLU（``kernels.bias_relu`` と ``xp.maximum(x + b, 0)``）、Adam の更新
  （``kernels.adam_update`` と、配列の演算を並べた更新）。実効の帯域（読み書きしたバイト数 / 時間）も出します。

GPU の時間は CUDA のイベントで測ります（カーネルの起動は非同期なので、``time.perf_counter`` で囲むと
起動の時間しか測れません）。CPU の時間は ``time.perf_counter`` です。

``--dry-run`` は、GPU の代わりに CuPy の厳しい代役（``tests/strict_cupy.py``）と numba の CUDA シミュレータで、
小さな大きさのまま同じ手順を通します。数字に意味はなく、スクリプトが壊れていないことを確かめるためのものです
（テストが実行します）。
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class GpuTimer:
    """CUDA のイベントで、GPU の上の処理 1 回の時間（秒）を測ります。"""

    def __init__(self, cupy):
        self.cupy = cupy

    def __call__(self, f, repeat, warmup=3):
        for _ in range(warmup):
            f()
        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        times = []
        for _ in range(repeat):
            start.record()
            f()
            end.record()
            end.synchronize()  # end までの GPU の処理が終わるのを待つ
            times.append(self.cupy.cuda.get_elapsed_time(start, end) / 1e3)  # ミリ秒 → 秒
        return statistics.median(times)


def cpu_timer(f, repeat, warmup=1):
    """CPU の処理 1 回の時間（秒）の中央値です。"""
    for _ in range(warmup):
        f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mlp_step_time(xp, timer, sizes, batch, repeat):
    """MLP の学習 1 ステップ（順伝播・逆伝播・Adam）の時間を ``xp`` の上で測ります。"""
    import mini_dl.functions as F
    from mini_dl import cuda, optimizers
    from mini_dl.models import MLP

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    t = rng.integers(0, sizes[-1], batch)
    model = MLP(sizes[1:], activation=F.relu, seed=0)
    model(x)
    if xp is not np:
        model.to_gpu()
        x, t = cuda.as_cupy(x), cuda.as_cupy(t)
    opt = optimizers.Adam(lr=1e-3).setup(model)

    def step():
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()
    return timer(step, repeat)


def matmul_times(xp, timer, kernels, n, repeat):
    """n×n の行列積の時間: タイル GEMM・素朴な GEMM・``@``（GPU なら cuBLAS）。"""
    rng = np.random.default_rng(1)
    a = xp.asarray(rng.standard_normal((n, n)).astype(np.float32))
    b = xp.asarray(rng.standard_normal((n, n)).astype(np.float32))
    c = kernels.matmul(a, b)
    err = float(abs(_host(c) - _host(a) @ _host(b)).max())
    flops = 2 * n ** 3
    out = {"n": n, "max_abs_error": err}
    for name, f in [("tiled", lambda: kernels.matmul(a, b)), ("naive", lambda: kernels.matmul_naive(a, b)),
                    ("library", lambda: a @ b)]:
        sec = timer(f, repeat)
        out[name] = {"seconds": sec, "gflops": flops / sec / 1e9}
    out["tiled_over_library"] = out["tiled"]["seconds"] / out["library"]["seconds"]
    return out


def fusion_times(xp, timer, kernels, rows, cols, n_params, repeat):
    """融合したカーネルと、配列の演算を並べた版の時間と実効の帯域。"""
    rng = np.random.default_rng(2)
    x = xp.asarray(rng.standard_normal((rows, cols)).astype(np.float32))
    b = xp.asarray(rng.standard_normal(cols).astype(np.float32))
    nbytes = 4 * (2 * rows * cols + cols)  # 融合: x を読み、y を書く（b は小さい）
    fused = timer(lambda: kernels.bias_relu(x, b), repeat)
    unfused = timer(lambda: xp.maximum(x + b, 0), repeat)
    out = {"bias_relu": {"shape": [rows, cols], "fused_seconds": fused, "unfused_seconds": unfused,
                         "speedup": unfused / fused, "fused_gb_per_s": nbytes / fused / 1e9}}

    p = xp.asarray(rng.standard_normal(n_params).astype(np.float32))
    g = xp.asarray(rng.standard_normal(n_params).astype(np.float32))
    m, v = xp.zeros_like(p), xp.zeros_like(p)
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8

    def adam_unfused():
        nonlocal m, v
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p[...] = p - lr * (m / (1 - b1)) / (xp.sqrt(v / (1 - b2)) + eps)

    fused = timer(lambda: kernels.adam_update(p, g, m, v, lr=lr, beta1=b1, beta2=b2, eps=eps, t=1), repeat)
    unfused = timer(adam_unfused, repeat)
    nbytes = 4 * n_params * 7  # 融合: p・g・m・v を読み、p・m・v を書く
    out["adam"] = {"n_params": n_params, "fused_seconds": fused, "unfused_seconds": unfused,
                   "speedup": unfused / fused, "fused_gb_per_s": nbytes / fused / 1e9}
    return out


def _host(a):
    from mini_dl import cuda
    return cuda.as_numpy(a)


def device_info(cupy):
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {"name": name, "total_memory_gib": props["totalGlobalMem"] / 2 ** 30,
            "multiprocessors": props["multiProcessorCount"], "cupy": cupy.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="結果を書く JSON のパス")
    parser.add_argument("--dry-run", action="store_true", help="GPU なしで手順だけを小さく確かめる")
    args = parser.parse_args(argv)

    from mini_dl import cuda

    if args.dry_run:
        sys.path.insert(0, str(ROOT / "tests"))
        import strict_cupy

        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        with strict_cupy.install():
            results = _run(np, cpu_timer, cpu_timer, sizes=(20, 16, 16, 4), batch=8, ns=(9,),
                           fusion=(5, 7, 33), repeat=2, device_xp=strict_cupy)
        results["device"] = {"name": "dry-run（CuPy の代役と CUDA シミュレータ。数字に意味はありません）"}
    else:
        if not cuda.is_available():
            print("CuPy が使える GPU が見つかりません。GPU のあるマシンで実行するか、--dry-run で手順だけを確かめてください。",
                  file=sys.stderr)
            return 1
        cupy = cuda.cupy
        gpu = GpuTimer(cupy)
        results = _run(cupy, gpu, cpu_timer, sizes=(784, 1000, 1000, 10), batch=100, ns=(256, 1024, 2048),
                       fusion=(4096, 4096, 10_000_000), repeat=20, device_xp=cupy)
        results["device"] = device_info(cupy)
    results["python"] = platform.python_version()
    results["numpy"] = np.__version__
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def _run(kernel_xp, gpu_timer, host_timer, sizes, batch, ns, fusion, repeat, device_xp):
    """測定をすべて行います。``kernel_xp`` はカーネルに渡す配列のモジュール（dry-run では NumPy）。"""
    from mini_dl import kernels

    mlp_cpu = mlp_step_time(np, host_timer, sizes, batch, repeat)
    mlp_gpu = mlp_step_time(device_xp, gpu_timer, sizes, batch, repeat)
    return {
        "mlp_step": {"sizes": list(sizes), "batch": batch, "cpu_seconds": mlp_cpu, "gpu_seconds": mlp_gpu,
                     "cpu_over_gpu": mlp_cpu / mlp_gpu},
        "matmul": [matmul_times(kernel_xp, gpu_timer, kernels, n, repeat) for n in ns],
        "fusion": fusion_times(kernel_xp, gpu_timer, kernels, *fusion, repeat=repeat),
    }


if __name__ == "__main__":
    sys.exit(main())
