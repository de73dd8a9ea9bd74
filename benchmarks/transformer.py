"""Transformer のブロックの順伝播+逆伝播を PyTorch の CPU 版と同じ実行の中で比べ、KV キャッシュの生成も測ります（第18章）。

    python benchmarks/transformer.py            # 既定の回数で測る（1 分ほど）
    python benchmarks/transformer.py --quick    # 回数を減らして短く
    python benchmarks/transformer.py --smoke    # 1 回ずつだけ（スクリプトが動くことのテスト用）
    python benchmarks/transformer.py --json benchmarks/results_transformer.json

測るもの:

* 本の GPT の大きさの Transformer のブロック 1 つ（Pre-LN、D = 64、4 ヘッド、MLP 4D、GELU、因果マスク）の
  順伝播と逆伝播（入力とすべてのパラメータの勾配）。入力は (32, 32, 64)、float32。mini_dl は
  ``L.TransformerBlock``、PyTorch は同じ形に書いたブロック（``nn.Linear`` の q・k・v・出力の写像、
  ``F.scaled_dot_product_attention(is_causal=True)``、``nn.LayerNorm``、``F.gelu(approximate="tanh")``）です。
* 生成: 文脈 256 の GPT（2 ブロック、D = 64、語彙 600）で 200 トークンを、KV キャッシュありと、
  毎回計算し直すのとで生成します（mini_dl だけ。結果が同じことも確かめます）。

実装ごとに少しずつ交互に測り（interleave）、中央値で比べます。スレッド数は両方を同じにそろえ（NumPy の
OpenBLAS は threadpoolctl で、PyTorch は ``torch.set_num_threads`` で）、1 スレッドと CPU のコア数の両方で測ります。
ほかの処理で混んだ機械では、2 スレッド以上の測定は大きく揺れます（OpenBLAS のスレッドが待ち合わせで CPU を使い続けるため）。
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # OpenBLAS と PyTorch のスレッドが取り合わないように

import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import mini_dl  # noqa: E402
import mini_dl.layers as L  # noqa: E402
from mini_dl import Variable, gpt, models  # noqa: E402
from bench import interleaved, options, report, save  # noqa: E402（同じフォルダの bench.py）

try:
    import torch
except ImportError:
    torch = None

B, T, D, H = 32, 32, 64, 4


def make_mini_dl(x, gy):
    block = L.TransformerBlock(D, H, seed=0)
    xv = Variable(x)

    def step():
        y = block(xv)
        block.cleargrads()
        xv.cleargrad()
        y.grad = Variable(gy)
        y.backward()
        return y
    return step


def make_torch(x, gy):
    nn = torch.nn
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
            self.fc1, self.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

        def heads(self, z):
            return z.view(B, T, H, D // H).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

        def forward(self, z):
            h = self.ln1(z)
            a = nn.functional.scaled_dot_product_attention(self.heads(self.q(h)), self.heads(self.k(h)),
                                                           self.heads(self.v(h)), is_causal=True)
            z = z + self.o(a.transpose(1, 2).reshape(B, T, D))
            return z + self.fc2(nn.functional.gelu(self.fc1(self.ln2(z)), approximate="tanh"))

    block = Block()
    xt = torch.from_numpy(x).requires_grad_()
    gyt = torch.from_numpy(gy)

    def step():
        block.zero_grad()
        xt.grad = None
        y = block(xt)
        y.backward(gyt)
        return y
    return step


def bench_block(rounds, repeat, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    gy = rng.standard_normal((B, T, D)).astype(np.float32)
    contenders = {"mini_dl": make_mini_dl(x, gy)}
    if torch is not None:
        contenders["PyTorch"] = make_torch(x, gy)
    with threadpool_limits(threads):
        if torch is not None:
            torch.set_num_threads(threads)
        return interleaved(contenders, rounds, repeat)


def bench_generate(rounds, n_tokens):
    model = models.GPT(600, dim=64, num_heads=4, num_layers=2, context=256, seed=0)
    prompt = np.array([[1, 2, 3, 4]])
    a = gpt.generate(model, prompt, n_tokens, temperature=0, use_cache=True)
    b = gpt.generate(model, prompt, n_tokens, temperature=0, use_cache=False)
    if not np.array_equal(a, b):
        raise AssertionError("KV キャッシュの生成と、計算し直しの生成が違います")
    with threadpool_limits(1):
        return interleaved({
            "KV cache": lambda: gpt.generate(model, prompt, n_tokens, temperature=0, use_cache=True),
            "recompute": lambda: gpt.generate(model, prompt, n_tokens, temperature=0, use_cache=False),
        }, rounds, 1)


def main():
    args, rounds = options(__doc__, 25)
    print(f"Python {platform.python_version()}, NumPy {np.__version__}, mini_dl {mini_dl.__version__}, "
          f"PyTorch {torch.__version__ if torch is not None else 'なし'}, CPU {os.cpu_count()} コア")
    base = "PyTorch" if torch is not None else "mini_dl"
    results = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        times = bench_block(rounds, 2 if args.quick else 5, threads)
        results[f"block fwd+bwd, {threads} threads"] = report(
            f"Transformer のブロックの順伝播+逆伝播（(32, 32, 64)、4 ヘッド、{threads} スレッド）", times, base)
    start = time.perf_counter()
    gen = bench_generate(1 if args.smoke else 3 if args.quick else 5, 20 if args.smoke else 200)
    results["generate"] = report("GPT（文脈 256）で 200 トークンの生成（貪欲法、1 スレッド。結果は同じ）", gen, "KV cache")
    print(f"  （生成の測定 {time.perf_counter() - start:.1f} 秒）")
    save(results, args.json)


if __name__ == "__main__":
    main()
