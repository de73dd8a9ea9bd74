"""小さな CNN の学習 1 ステップの時間を、PyTorch の CPU 版と同じ実行の中で比べます（第15章）。

    python benchmarks/cnn.py            # 既定の回数で測る（1 分ほど）
    python benchmarks/cnn.py --quick    # 回数を減らして短く
    python benchmarks/cnn.py --smoke    # 1 回ずつだけ（スクリプトが動くことのテスト用）
    python benchmarks/cnn.py --json benchmarks/results_cnn.json

測るもの:

* CNN の学習 1 ステップ（順伝播・逆伝播・Adam の更新）: 畳み込み 1→16（3×3、パディング 1）→ ReLU →
  最大プーリング 2 → 畳み込み 16→32（3×3、パディング 1）→ ReLU → 最大プーリング 2 → 全結合 10、
  バッチ 32 の 1×28×28、float32。mini_dl は ``models.CNN``、PyTorch は同じ形の ``nn.Sequential`` です。
  「mini_dl (NumPy only)」は、並列カーネルと配列の使い回し（第15章の 15.9 節）をやめた同じモデルです。
* 学習 1 ステップあたりのページフォールト（新しく確保したメモリのページに初めて触る回数。Linux と macOS だけ）。
* 2 つ目の畳み込み（入力 (32, 16, 14, 14)）の順伝播と逆伝播を、それぞれの行列積だけの時間（GEMM の下限）と比べます。
  順伝播の行列積は ``col @ W^T`` の 1 回、逆伝播は ``gy W``（入力の勾配）と ``col^T gy``（重みの勾配）の 2 回です。
  下限との差が、im2col・col2im・並べ替え・Python の処理の分です。

実装ごとに少しずつ交互に測り（interleave）、中央値で比べます。スレッド数は両方を同じにそろえ（NumPy の
OpenBLAS は threadpoolctl で、mini_dl の並列カーネル（numba）は ``mini_dl.functions.cpu.set_num_threads`` で、
PyTorch は ``torch.set_num_threads`` で）、1 スレッドと CPU のコア数の両方で測ります。
ほかの処理で混んだ機械では、2 スレッドの測定は大きく揺れます（スレッドが待ち合わせで CPU を使い続けるため）。
畳み込み 1 つの測定は 1 スレッドです。
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # OpenBLAS と PyTorch のスレッドが取り合わないように

import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import mini_dl  # noqa: E402
import mini_dl.functions as F  # noqa: E402
from mini_dl import Variable, optimizers  # noqa: E402
from mini_dl.functions import cpu  # noqa: E402
from mini_dl.models import CNN  # noqa: E402
from bench import interleaved, options, report, save, torch_train_step, train_step  # noqa: E402（同じフォルダの bench.py）

try:
    import torch
except ImportError:
    torch = None


def make_mini_dl(x, t):
    model = CNN((16, 32), 10, seed=0)
    return train_step(model, optimizers.Adam().setup(model), F.softmax_cross_entropy, x, t)


def numpy_only(step):
    """並列カーネルと配列の使い回し（第15章の 15.9 節）をやめて ``step`` を呼ぶ関数を返します（NumPy だけの版）。"""
    def run():
        with cpu.numpy_only():
            return step()
    return run


def make_torch(x, t):
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    return torch_train_step(model, torch.optim.Adam(model.parameters()), x, t)


def bench_step(rounds, repeat, threads):
    """mini_dl と PyTorch を、同じスレッド数（``threads``）にそろえて交互に測ります。"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, size=32)
    contenders = {"mini_dl": make_mini_dl(x, t), "mini_dl (NumPy only)": numpy_only(make_mini_dl(x, t))}
    if torch is not None:
        contenders["PyTorch"] = make_torch(x, t)
    with threadpool_limits(threads):  # NumPy の BLAS（OpenBLAS）のスレッド数
        cpu.set_num_threads(threads)  # mini_dl の並列カーネルのスレッド数
        if torch is not None:
            torch.set_num_threads(threads)
        return interleaved(contenders, rounds, repeat)


def page_faults(name, n):
    """``name`` の学習 ``n`` ステップの間のページフォールト（マイナーフォールト）の回数を、1 ステップあたりにして返します。

    ほかの測定でメモリの使い方が変わらないように、新しいプロセスで 1 つずつ測ります（学習だけをする、ふつうのスクリプトと同じ条件）。
    ``resource`` の無い Windows では ``None`` です。
    """
    try:
        import resource  # noqa: F401（Windows には無い）
    except ImportError:
        return None
    out = subprocess.run([sys.executable, __file__, "--faults", name, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def count_faults(name, n):
    """``page_faults`` が新しいプロセスで呼ぶ本体: ``name`` の学習ステップのページフォールトを数えて表示します。"""
    import resource
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, size=32)
    step = {"mini_dl": make_mini_dl, "mini_dl (NumPy only)": lambda x, t: numpy_only(make_mini_dl(x, t)),
            "PyTorch": make_torch}[name](x, t)
    with threadpool_limits(1):
        cpu.set_num_threads(1)
        if torch is not None:
            torch.set_num_threads(1)
        for _ in range(3):  # 温め
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n)


def bench_conv(rounds, repeat):
    """2 つ目の畳み込みの順伝播・逆伝播と、その行列積だけの時間。"""
    rng = np.random.default_rng(0)
    x = Variable(rng.standard_normal((32, 16, 14, 14)).astype(np.float32))
    W = Variable((rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32))
    b = Variable(np.zeros(32, dtype=np.float32))
    gy = Variable(rng.standard_normal((32, 32, 14, 14)).astype(np.float32))
    # (N*OH*OW, C*KH*KW) = (6272, 144)。逆伝播が使い終わって作業領域（workspace）へ返さないように、コピーを持つ
    col = np.ascontiguousarray(F.im2col_array(x.data, 3, 1, 1).T).T
    Wm = W.data.reshape(32, -1)  # (OC, C*KH*KW) = (32, 144)
    gy2 = np.ascontiguousarray(gy.data.transpose(0, 2, 3, 1)).reshape(-1, 32)  # (N*OH*OW, OC) = (6272, 32)
    y = F.conv2d(x, W, b, 1, 1)
    f = y.creator

    def backward():
        with mini_dl.no_grad():
            f.col = col  # 逆伝播で手放した col を戻して、毎回同じ条件で測る
            return f.backward(gy)

    fwd = {"mini_dl conv2d": lambda: F.conv2d(x, W, b, 1, 1), "GEMM col @ W^T": lambda: col @ Wm.T}
    bwd = {"mini_dl conv2d backward": backward, "GEMM gy W + col^T gy": lambda: (gy2 @ Wm, col.T @ gy2)}
    if torch is not None:
        xt, Wt, bt = (torch.from_numpy(a.data).requires_grad_() for a in (x, W, b))
        gyt = torch.from_numpy(gy.data)
        fwd["PyTorch conv2d"] = lambda: torch.nn.functional.conv2d(xt, Wt, bt, padding=1)

        def torch_backward():
            yt = torch.nn.functional.conv2d(xt, Wt, bt, padding=1)
            return torch.autograd.grad(yt, (xt, Wt, bt), gyt)
        bwd["PyTorch conv2d forward+backward"] = torch_backward
    return interleaved(fwd, rounds, repeat), interleaved(bwd, rounds, repeat)


def main():
    args, rounds = options(__doc__, 25)
    if args.smoke:
        args.quick = True
    print(f"Python {platform.python_version()}, NumPy {np.__version__}, mini_dl {mini_dl.__version__}, "
          f"PyTorch {torch.__version__ if torch is not None else 'なし'}, CPU {os.cpu_count()} コア")
    base = "PyTorch" if torch is not None else "mini_dl"
    results = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        step = bench_step(rounds, 2 if args.quick else 5, threads)
        results[f"CNN step, {threads} threads"] = report(
            f"CNN の学習 1 ステップ（バッチ 32、1×28×28、Adam、{threads} スレッド）", step, base)
    with threadpool_limits(1):
        cpu.set_num_threads(1)
        names = ["mini_dl", "mini_dl (NumPy only)"] + (["PyTorch"] if torch is not None else [])
        faults = {name: page_faults(name, 2 if args.smoke else 20) for name in names}
        if None not in faults.values():
            print("\n学習 1 ステップあたりのページフォールト（1 スレッド、それぞれ新しいプロセスで）")
            for name, f in faults.items():
                print(f"  {name:26s} {f:9.0f} 回")
            results["page faults per step"] = faults
        if torch is not None:
            torch.set_num_threads(1)
        fwd, bwd = bench_conv(rounds, 5 if args.quick else 20)
    results["conv forward"] = report("畳み込み 16→32（3×3、パディング 1、入力 (32, 16, 14, 14)）の順伝播、1 スレッド",
                                     fwd, "GEMM col @ W^T")
    results["conv backward"] = report("同じ畳み込みの逆伝播（入力と重みとバイアスの勾配）、1 スレッド", bwd,
                                      "GEMM gy W + col^T gy")
    save(results, args.json)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--faults"]:  # page_faults が新しいプロセスで呼ぶ
        count_faults(sys.argv[2], int(sys.argv[3]))
    else:
        main()
