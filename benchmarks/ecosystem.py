"""同じ MLP の学習 1 ステップを、mini_dl・PyTorch・JAX・DeZero で、同じ実行の中で交互に比べます（第22章）。

    python benchmarks/ecosystem.py            # 既定の回数で測る（1〜2 分）
    python benchmarks/ecosystem.py --quick    # 回数を減らして短く
    python benchmarks/ecosystem.py --smoke    # 1 回ずつだけ（スクリプトが動くことのテスト用）
    python benchmarks/ecosystem.py --json benchmarks/results_ecosystem.json

測るもの:

* MLP の学習 1 ステップ（順伝播・逆伝播・SGD の更新）: 784-100-10 と 784-1000-1000-10、バッチ 100、ReLU、
  ソフトマックス交差エントロピー。初期値は NumPy で 1 回だけ作り、すべての実装に写します。
  比べるのは、手で書いた NumPy の逆伝播、mini_dl、PyTorch（あれば）、JAX（``jit`` あり・なし）、DeZero 0.0.13 の 3 通りです。
  DeZero は、配ったまま（NumPy 2 では重みも勾配も float64）、重みだけ float32（逆伝播の ``gy *= 1/N`` で勾配が float64 に上がる）、
  すべて float32（その 1 か所を float32 のスカラーにしたサブクラス）の 3 つです。
* 演算 1 回のオーバーヘッド: 要素 1 個の ``x + x`` の順伝播（NumPy・mini_dl・DeZero・PyTorch・JAX の jit なし）。

スレッドは 1 つにそろえます（NumPy の OpenBLAS は threadpoolctl で、PyTorch は ``torch.set_num_threads`` で、JAX は
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``）。XLA は自分のスレッドプールを持つので、この設定で 1 スレッドにならない版もあります。
DeZero 0.0.13 は NumPy 2 では ``np.int`` が無いため import できないので、import の間だけ ``np.int = int`` を置きます。
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # OpenBLAS と PyTorch のスレッドが取り合わないように
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import platform  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import mini_dl  # noqa: E402
import mini_dl.functions as F  # noqa: E402
from mini_dl import models, optimizers  # noqa: E402
from bench import HandMLP, interleaved, options, report, save, torch_train_step, train_step  # noqa: E402（同じフォルダの bench.py）

try:
    import torch
except ImportError:
    torch = None
try:
    import jax
    import jax.numpy as jnp
except ImportError:
    jax = None


def import_dezero():
    """DeZero 0.0.13 を、import の間だけ ``np.int`` を置いて読みます（無ければ ``None``）。"""
    had = hasattr(np, "int")
    np.int = int
    try:
        import dezero
        import dezero.functions
        import dezero.models
        import dezero.optimizers
    except ImportError:
        return None
    finally:
        if not had:
            del np.int
    return dezero


dezero = import_dezero()
LR = 0.1


def init_params(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32), np.zeros(b, dtype=np.float32))
            for a, b in zip(sizes, sizes[1:])]


def make_hand(params, x, t):
    model = HandMLP([params[0][0].shape[0]] + [W.shape[1] for W, _ in params], np.random.default_rng(0))
    model.Ws = [W.copy() for W, _ in params]
    model.bs = [b.copy() for _, b in params]
    return lambda: model.step(x, t, LR)


def make_mini_dl(params, x, t):
    model = models.MLP([W.shape[1] for W, _ in params], activation=F.relu)
    model(x[:1])
    for layer, (W, b) in zip(model.layers, params):
        layer.W.data, layer.b.data = W.copy(), b.copy()
    return train_step(model, optimizers.SGD(lr=LR).setup(model), F.softmax_cross_entropy, x, t)


def make_torch(params, x, t):
    layers = []
    for W, b in params:
        lin = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T))  # (in, out) -> (out, in)
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    return torch_train_step(model, torch.optim.SGD(model.parameters(), lr=LR), x, t)


def _jax_loss(params, x, t):
    h = x
    for W, b in params[:-1]:
        h = jax.nn.relu(h @ W + b)
    W, b = params[-1]
    log_p = jax.nn.log_softmax(h @ W + b)
    return -jnp.mean(jnp.take_along_axis(log_p, t[:, None], axis=1))


def _jax_update(params, x, t):
    loss, grads = jax.value_and_grad(_jax_loss)(params, x, t)
    return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), loss


def make_jax(params, x, t, jit=True):
    state = [[(jnp.asarray(W), jnp.asarray(b)) for W, b in params]]
    xj, tj = jnp.asarray(x), jnp.asarray(t)
    update = jax.jit(_jax_update) if jit else _jax_update

    def step():
        state[0], loss = update(state[0], xj, tj)
        return float(loss)  # 計算の終わりを待つ
    return step


def _sce32():
    class SoftmaxCrossEntropy32(dezero.functions.SoftmaxCrossEntropy):
        def backward(self, gy):  # DeZero と同じ計算で、1/N を入力と同じ型にする（float64 に上がらない）
            x, t = self.inputs
            N, C = x.shape
            gy = gy * x.dtype.type(1 / N)
            y = dezero.functions.softmax(x)
            return (y - np.eye(C, dtype=x.dtype)[t.data]) * gy
    return lambda y, t: SoftmaxCrossEntropy32()(y, t)


def make_dezero(params, x, t, mode):
    """mode: "shipped"（重みも float64）、"weights32"（重みだけ float32）、"float32"（すべて float32）。"""
    DF, DM, DO = dezero.functions, dezero.models, dezero.optimizers
    model = DM.MLP([W.shape[1] for W, _ in params], activation=DF.relu)
    model(x[:1])
    for layer, (W, b) in zip(model.layers, params):
        layer.W.data = W.astype(np.float64) if mode == "shipped" else W.copy()
        layer.b.data = b.copy()
    sce = _sce32() if mode == "float32" else DF.softmax_cross_entropy
    return train_step(model, DO.SGD(lr=LR).setup(model), sce, x, t)


def bench_mlp(sizes, x, t, rounds, repeat, eager_jax):
    params = init_params(sizes)
    c = {"hand NumPy": make_hand(params, x, t), "mini_dl": make_mini_dl(params, x, t)}
    if torch is not None:
        c["PyTorch"] = make_torch(params, x, t)
    if jax is not None:
        c["JAX (jit)"] = make_jax(params, x, t)
        if eager_jax:
            c["JAX (no jit)"] = make_jax(params, x, t, jit=False)
    if dezero is not None:
        c["DeZero as shipped (float64)"] = make_dezero(params, x, t, "shipped")
        c["DeZero float32 weights"] = make_dezero(params, x, t, "weights32")
        c["DeZero float32"] = make_dezero(params, x, t, "float32")
    return interleaved(c, rounds, repeat)


def bench_overhead(rounds, repeat):
    one = np.ones(1, dtype=np.float32)
    v = mini_dl.Variable(one.copy())
    c = {"NumPy": lambda: one + one, "mini_dl": lambda: v + v}
    if dezero is not None:
        vd = dezero.Variable(one.copy())
        c["DeZero"] = lambda: vd + vd
    if torch is not None:
        vt = torch.ones(1, requires_grad=True)
        c["PyTorch (requires_grad)"] = lambda: vt + vt
    if jax is not None:
        vj = jnp.asarray(one)
        c["JAX (no jit)"] = lambda: (vj + vj).block_until_ready()
    return interleaved(c, rounds, repeat)


def main():
    args, rounds = options(__doc__, 21)
    versions = {"numpy": np.__version__, "torch": getattr(torch, "__version__", None),
                "jax": getattr(jax, "__version__", None), "dezero": getattr(dezero, "__version__", None)}
    print(f"Python {platform.python_version()}, mini_dl {mini_dl.__version__}, "
          + ", ".join(f"{k} {v or 'なし'}" for k, v in versions.items()) + f", CPU {os.cpu_count()} コア、1 スレッド")
    rng = np.random.default_rng(0)
    x = rng.random((100, 784), dtype=np.float32)
    t = rng.integers(0, 10, size=100)
    base = "PyTorch" if torch is not None else "hand NumPy"
    results = {}
    if torch is not None:
        torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        for sizes, repeat in [((784, 100, 10), 1 if args.smoke else 20), ((784, 1000, 1000, 10), 1 if args.smoke else 3)]:
            name = "MLP " + "-".join(map(str, sizes))
            times = bench_mlp(sizes, x, t, rounds, repeat, eager_jax=True)
            results[name] = report(f"{name}（バッチ 100、1 ステップ）", times, base)
        results["x + x forward"] = report("演算 1 回のオーバーヘッド: x + x の順伝播（要素 1 個）",
                                          bench_overhead(rounds, 10 if args.smoke else 5000), "NumPy")
    save(results, args.json)


if __name__ == "__main__":
    main()
