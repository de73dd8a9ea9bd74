"""mini_dl の速さを、手で書いた NumPy の逆伝播（と、あれば PyTorch の CPU 版）と同じ実行の中で比べます。

    python benchmarks/bench.py            # 既定の回数で測る（数分）
    python benchmarks/bench.py --quick    # 回数を減らして短く

測るもの:

* MLP の 1 ステップ（順伝播・逆伝播・SGD の更新）の時間: 784-1000-1000-10 と 784-100-10、
  バッチ 100、float32、ReLU、ソフトマックス交差エントロピー。
* 演算 1 回あたりのオーバーヘッド: 要素 1 個の ``x + x`` の順伝播と、順伝播+逆伝播。

実装ごとに少しずつ交互に測り（interleave）、中央値と、手書き NumPy（演算は PyTorch）に対する比を表示します。
結果は ``--json PATH`` で JSON にも書けます。時間は機械によって違うので、比で比べてください。
"""
import os

# OpenBLAS と PyTorch のスレッドが取り合わないように、待ち時間を短くします（numpy を読む前に設定）
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import mini_dl  # noqa: E402
import mini_dl.functions as F  # noqa: E402
from mini_dl import optimizers  # noqa: E402
from mini_dl.models import MLP  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


# --- 手で書いた NumPy の MLP（フレームワークなしの下限） ------------------------------------

class HandMLP:
    def __init__(self, sizes, rng):
        self.Ws = [(rng.standard_normal((a, b)) * np.sqrt(1 / a)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
        self.bs = [np.zeros(b, dtype=np.float32) for b in sizes[1:]]

    def step(self, x, t, lr):
        hs = [x]
        for W, b in zip(self.Ws[:-1], self.bs[:-1]):
            hs.append(np.maximum(hs[-1] @ W + b, 0))
        y = hs[-1] @ self.Ws[-1] + self.bs[-1]
        y = y - y.max(axis=1, keepdims=True)
        p = np.exp(y)
        p /= p.sum(axis=1, keepdims=True)
        n = len(x)
        loss = -np.log(p[np.arange(n), t]).mean()
        g = p
        g[np.arange(n), t] -= 1
        g /= n
        for i in reversed(range(len(self.Ws))):
            gW = hs[i].T @ g
            gb = g.sum(axis=0)
            if i > 0:
                g = (g @ self.Ws[i].T) * (hs[i] > 0)
            self.Ws[i] -= lr * gW
            self.bs[i] -= lr * gb
        return loss


def make_hand(sizes, x, t):
    model = HandMLP(sizes, np.random.default_rng(0))
    return lambda: model.step(x, t, 0.01)


def train_step(model, opt, loss_fn, x, t):
    """mini_dl（と、同じ書き方の DeZero）の学習 1 ステップを、引数なしで呼べる関数にして返します。"""
    def step():
        loss = loss_fn(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()
        return loss
    return step


def torch_train_step(model, opt, x, t):
    """PyTorch の学習 1 ステップ（交差エントロピー）を、引数なしで呼べる関数にして返します。"""
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)

    def step():
        loss = torch.nn.functional.cross_entropy(model(xt), tt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step


def make_mini_dl(sizes, x, t):
    model = MLP(sizes[1:], activation=F.relu, seed=0)
    return train_step(model, optimizers.SGD(lr=0.01).setup(model), F.softmax_cross_entropy, x, t)


def make_torch(sizes, x, t):
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    return torch_train_step(model, torch.optim.SGD(model.parameters(), lr=0.01), x, t)


def interleaved(contenders, rounds, repeat):
    """``{名前: 関数}`` を、1 ラウンドに ``repeat`` 回ずつ交互に呼び、1 回あたりの時間のリストを返します。"""
    times = {name: [] for name in contenders}
    for f in contenders.values():  # 温め（初回の確保や遅延初期化を除く）
        f()
    for _ in range(rounds):
        for name, f in contenders.items():
            start = time.perf_counter()
            for _ in range(repeat):
                f()
            times[name].append((time.perf_counter() - start) / repeat)
    return times


def bench_mlp(sizes, rounds, repeat):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, sizes[0])).astype(np.float32)
    t = rng.integers(0, sizes[-1], size=100)
    contenders = {"hand NumPy": make_hand(sizes, x, t), "mini_dl": make_mini_dl(sizes, x, t)}
    if torch is not None:
        contenders["PyTorch"] = make_torch(sizes, x, t)
    return interleaved(contenders, rounds, repeat)


def bench_overhead(rounds, repeat):
    a = np.ones(1, dtype=np.float32)
    v = mini_dl.Variable(a.copy())

    def mini_fb():
        y = v + v
        y.backward()
        v.cleargrad()

    fwd = {"NumPy": lambda: a + a, "mini_dl": lambda: v + v}
    fb = {"mini_dl": mini_fb}
    if torch is not None:
        tx = torch.ones(1)
        tg = torch.ones(1, requires_grad=True)

        def torch_fb():
            y = tg + tg
            y.backward()
            tg.grad = None
        fwd["PyTorch"] = lambda: tx + tx
        fwd["PyTorch (requires_grad)"] = lambda: tg + tg
        fb["PyTorch"] = torch_fb
    return interleaved(fwd, rounds, repeat), interleaved(fb, rounds, repeat)


def report(title, times, base):
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\n{title}")
    for name, m in med.items():
        unit, scale = ("ms", 1e3) if m > 1e-4 else ("µs", 1e6)
        ratio = f"{m / med[base]:.2f}×" if base in med else "-"
        print(f"  {name:26s} {m * scale:9.3f} {unit}   {ratio} {base}")
    return {name: {"median_s": m, "ratio": m / med[base] if base in med else None} for name, m in med.items()}


def options(doc, rounds):
    """ベンチマークのスクリプトに共通の引数を読み、``(args, ラウンド数)`` を返します。

    ``--quick`` は回数を減らし、``--smoke`` は 1 回ずつだけ動かし（テスト用。時間は意味を持ちません）、
    ``--json`` は結果を書く JSON ファイルです。``rounds`` は既定のラウンド数です。
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="回数を減らして短く測る")
    parser.add_argument("--smoke", action="store_true", help="1 回ずつだけ動かす（テスト用。時間は意味を持ちません）")
    parser.add_argument("--json", help="結果を書く JSON ファイル")
    args = parser.parse_args()
    return args, 1 if args.smoke else 7 if args.quick else rounds


def save(results, path):
    """結果を JSON に書きます（``path`` が ``None`` なら何もしません。``--json`` を省いたとき）。"""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, ensure_ascii=False, indent=1)


def main():
    args, rounds = options(__doc__, 15)
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    print(f"Python {platform.python_version()}, NumPy {np.__version__}, mini_dl {mini_dl.__version__}, "
          f"PyTorch {torch.__version__ if torch is not None else 'なし'}, CPU {os.cpu_count()} コア")
    results = {
        "MLP 784-1000-1000-10": report("MLP 784-1000-1000-10（バッチ 100、1 ステップ）",
                                       bench_mlp((784, 1000, 1000, 10), rounds, 3 if args.quick else 5),
                                       "hand NumPy"),
        "MLP 784-100-10": report("MLP 784-100-10（バッチ 100、1 ステップ）",
                                 bench_mlp((784, 100, 10), rounds, 20 if args.quick else 50), "hand NumPy"),
    }
    fwd, fb = bench_overhead(rounds, 2000 if args.quick else 10000)
    base = "PyTorch" if torch is not None else "NumPy"
    results["x + x forward"] = report("演算 1 回のオーバーヘッド: x + x の順伝播（要素 1 個）", fwd, base)
    results["x + x forward+backward"] = report("x + x の順伝播+逆伝播（要素 1 個）", fb, base)
    save(results, args.json)


if __name__ == "__main__":
    main()
