"""損失関数と正解率（第9章・第11章）。"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Function, Variable, as_array
from mini_dl.functions.math import log
from mini_dl.functions.nn import _logsumexp, softmax
from mini_dl.functions.tensor import clip, sum


class MeanSquaredError(Function):
    r"""平均二乗誤差 :math:`L = \frac{1}{n} \sum_i (x_{0i} - x_{1i})^2`（n はすべての要素の数）。

    PyTorch の ``F.mse_loss``（``reduction="mean"``）と同じく、すべての要素の平均です。
    """

    def forward(self, x0, x1):
        diff = x0 - x1
        return (diff * diff).sum() / diff.dtype.type(diff.size)

    def backward(self, gy):
        x0, x1 = self.inputs
        diff = x0 - x1  # Variable で計算し直すので、2 階微分でも diff の x0・x1 への依存が残る
        gx0 = gy * diff * (2 / diff.size)
        return gx0, -gx0


def mean_squared_error_simple(x0, x1):
    """平均二乗誤差を、既存の関数の組み合わせで計算します（``mean_squared_error`` の素朴な版）。"""
    diff = x0 - x1
    return sum(diff * diff) / diff.size


def mean_squared_error(x0, x1):
    r"""平均二乗誤差 :math:`\frac{1}{n}\sum (x_0 - x_1)^2` を計算します（n はすべての要素の数）。

    PyTorch の ``F.mse_loss(x0, x1)``（``reduction="mean"``）と同じ値です。出力が 1 つの回帰
    （shape ``(N, 1)``）なら n = N です。DeZero の ``mean_squared_error`` は最初の軸の長さ N で割るので、
    出力が H 個（shape ``(N, H)``）のときは、その H 倍の値になります。

    Args:
        x0: 予測か正解（``Variable`` か配列）。
        x1: ``x0`` と同じ shape・dtype のもう一方。

    Returns:
        Variable: 損失（0 次元、入力と同じ dtype）。

    Raises:
        ValueError: 2 つの入力の shape が違うとき（ブロードキャストによる思わぬ誤差を防ぎます）。
        TypeError: 2 つの入力の dtype が違うとき（float32 の予測に float64 の正解を渡すと、損失と勾配が
            float64 に広がるのを防ぎます）。
    """
    if x0.shape != x1.shape:
        raise ValueError(f"mean_squared_error の 2 つの入力は同じ shape にします（受け取った shape: {x0.shape} と {x1.shape}）")
    if x0.dtype != x1.dtype:
        # そろえる先は、浮動小数点数 → Variable（予測）→ 小さい dtype の順に優先して選ぶ
        keep = min((x0, x1), key=lambda x: (x.dtype.kind != "f", not isinstance(x, Variable), x.dtype.itemsize)).dtype
        raise TypeError(
            f"mean_squared_error の 2 つの入力の dtype が違います（受け取った dtype: {x0.dtype} と {x1.dtype}）。"
            f"同じ dtype にそろえてください（たとえば正解の配列 t を t.astype(np.{keep.name}) にします）"
        )
    return MeanSquaredError()(x0, x1)


class SoftmaxCrossEntropy(Function):
    r"""ソフトマックスと交差エントロピー誤差を 1 つにした関数（``softmax_cross_entropy_simple`` を速く安定にした版）。

    .. math:: L = -\frac{1}{N} \sum_n \log \mathrm{softmax}(x_n)_{t_n}

    逆伝播 :math:`(\mathrm{softmax}(x) - \text{one-hot}(t)) / N` の one-hot は、``eye(C)`` を作らずに、
    (N, C) の 0 の配列の ``(n, t_n)`` の位置に 1 を置いて作ります（C が語彙の数ほど大きくても、
    C×C の配列は作りません）。``softmax(x)`` は ``Variable`` で計算するので、2 階微分もできます。

    Shape:
        x: (N, C) のスコア（ロジット）、t: (N,) の正解のクラス番号（整数） -> L: ()
    """

    def forward(self, x, t):
        xp = cuda.get_array_module(x)
        N = x.shape[0]
        log_p = x - _logsumexp(x, axis=1)  # (N, C) の log softmax
        picked = log_p[xp.arange(N), t.ravel()]  # (N,) 正解のクラスの log 確率（添字も x と同じ装置の配列）
        return -picked.sum() / x.dtype.type(N)

    def backward(self, gy):
        x, t = self.inputs
        N, C = x.shape
        xp = cuda.get_array_module(x.data)
        onehot = xp.zeros((N, C), dtype=x.dtype)
        onehot[xp.arange(N), t.data.ravel()] = 1  # (N,) -> (N, C)、eye(C) は作らない
        gx = (softmax(x, axis=1) - onehot) * (gy / N)  # softmax(x) は Variable なので 2 階微分もできる
        return gx, None


def softmax_cross_entropy_simple(x, t):
    """ソフトマックスと交差エントロピー誤差を、既存の関数の組み合わせで計算します（素朴な版）。

    ``softmax`` は最大値を引くのであふれません。問題は小さい側です。正解のクラスの確率が :math:`10^{-15}` より
    小さくなる（スコアの差がおよそ 35 以上）と、``log`` の前の ``clip`` で :math:`10^{-15}` に置き換わり、
    損失は :math:`-\\log 10^{-15} \\approx 34.5` で頭打ちになって、勾配も 0 になります。``clip`` がなければ、
    スコアの差がおよそ 104 以上で確率が float32 の 0 に丸められ（アンダーフロー）、``log(0) = -inf`` になります。
    ``softmax_cross_entropy`` は log-sum-exp で :math:`\\log p` を直接求めるので、この問題がありません。
    """
    xp = cuda.get_array_module(x)
    N = x.shape[0]
    p = softmax(x, axis=1)
    p = clip(p, 1e-15, 1.0)  # log(0) を避ける
    log_p = log(p)
    picked = log_p[xp.arange(N), t.data if isinstance(t, Variable) else t]  # 添字も x と同じ装置の配列（CuPy の配列にも .data がある）
    return -sum(picked) / N


def softmax_cross_entropy(x, t):
    """ソフトマックスと交差エントロピー誤差 :math:`-\\frac{1}{N}\\sum_n \\log p_{n, t_n}` を計算します。

    PyTorch の ``F.cross_entropy(x, t)``（``reduction="mean"``）と同じ値です。

    Args:
        x: shape (N, C) のスコア（ロジット）。
        t: shape (N,) の正解のクラス番号（整数の配列。``x`` と同じ装置の上に置きます）。

    Returns:
        Variable: 損失（0 次元、``x`` と同じ dtype）。

    Raises:
        TypeError: ``t`` が整数の配列でないとき。``x`` と ``t`` の装置（NumPy と CuPy）が違うとき。
        ValueError: ``x`` が 2 次元でないか、``t`` の長さが ``x`` の行数と違うとき。
            ``t`` に 0 以上 C 未満でないクラス番号があるとき（CuPy は範囲外の番号を黙って
            折り返してしまうので、ここで調べます）。
    """
    t_data = t.data if hasattr(t, "creator") else t
    if not np.issubdtype(t_data.dtype, np.integer):
        raise TypeError(f"softmax_cross_entropy の t には整数のクラス番号を渡してください（受け取った dtype: {t_data.dtype}）")
    if x.ndim != 2 or t_data.shape != (x.shape[0],):
        raise ValueError(
            f"softmax_cross_entropy の shape が合いません: x {x.shape}、t {t_data.shape}"
            f"（x は (N, C)、t は (N,) にします）"
        )
    if cuda.get_array_module(t_data) is not cuda.get_array_module(x):
        raise TypeError(
            "softmax_cross_entropy の x と t は同じ装置（CPU か GPU）に置きます"
            f"（受け取った型: x {type(getattr(x, 'data', x)).__name__}、t {type(t_data).__name__}。"
            "GPU なら t も cuda.as_cupy(t) で GPU に移してください）"
        )
    C = x.shape[1]
    if t_data.size:
        low, high = int(t_data.min()), int(t_data.max())
        if low < 0 or high >= C:
            bad = low if low < 0 else high
            raise ValueError(
                f"softmax_cross_entropy の t に範囲外のクラス番号 {bad} があります"
                f"（クラスの数 C = {C} なので、t は 0 以上 {C - 1} 以下にします）"
            )
    return SoftmaxCrossEntropy()(x, t)


def accuracy(y, t):
    """正解率: スコア ``y``（(N, C)）の最大のクラスが、正解 ``t``（(N,)）と一致する割合を返します。

    微分はしないので、計算グラフは作りません。

    Returns:
        Variable: 正解率（0 次元、``y`` と同じ dtype）。
    """
    y_data = y.data if hasattr(y, "creator") else y
    t_data = t.data if hasattr(t, "creator") else t
    pred = y_data.argmax(axis=1).reshape(t_data.shape)
    acc = (pred == t_data).mean()
    return Variable(as_array(acc.astype(y_data.dtype)))
