"""ニューラルネットの部品になる関数（第9章・第11章）: 活性化関数・全結合・ソフトマックス・ドロップアウト。"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Function, Variable, as_variable
from mini_dl.functions.tensor import matmul, reshape, sum, sum_to
from mini_dl.functions.math import exp


class Sigmoid(Function):
    r"""シグモイド関数 :math:`y = \frac{1}{1 + e^{-x}}`。微分は :math:`y (1 - y)` です。

    :math:`e^{-x}` は :math:`x` が大きな負の数だとあふれるので、:math:`z = e^{-|x|}`（0 < z ≤ 1 なので
    あふれない）を使い、符号で 2 つの式を使い分けます。

    .. math::

        \sigma(x) = \begin{cases} \dfrac{1}{1 + z} & (x \ge 0) \\[4pt] \dfrac{z}{1 + z} & (x < 0) \end{cases}

    どちらの式にも引き算がないので、:math:`x = -30` のような裾でも float32 の精度（相対誤差 :math:`10^{-7}` 程度）
    が保たれます（:math:`\frac{1}{2}\tanh\frac{x}{2} + \frac{1}{2}` は裾で桁落ちします）。
    """

    def forward(self, x):
        xp = cuda.get_array_module(x)
        z = xp.exp(-xp.abs(x))  # 0 < z <= 1（x が小さすぎると 0 に丸められるだけで、あふれない）
        return xp.where(x >= 0, 1 / (1 + z), z / (1 + z))  # Python の 1 は x の dtype に合わせられる

    def backward(self, gy):
        y = self.outputs[0]()
        return gy * y * (1 - y)


class ReLU(Function):
    r"""ReLU :math:`y = \max(0, x)`。微分は :math:`x > 0` なら 1、それ以外は 0 です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.maximum(x, 0)

    def backward(self, gy):
        x = self.inputs[0].data
        mask = (x > 0).astype(gy.dtype)
        return gy * mask


class LeakyReLU(Function):
    r"""Leaky ReLU :math:`y = x`（:math:`x > 0`）、:math:`y = a x`（それ以外）。

    負の側の傾き :math:`a`（``slope``）の既定値は、DeZero・Chainer と同じ 0.2 です。PyTorch の
    ``nn.LeakyReLU`` の既定値（``negative_slope=0.01``）とは違うので、PyTorch と同じにするなら
    ``slope=0.01`` を渡します。
    """

    def __init__(self, slope=0.2):
        self.slope = slope

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.where(x > 0, x, x * x.dtype.type(self.slope))

    def backward(self, gy):
        x = self.inputs[0].data
        scale = (x > 0).astype(gy.dtype)
        scale += (1 - scale) * scale.dtype.type(self.slope)  # x > 0 なら 1、それ以外は slope
        return gy * scale


class Linear(Function):
    r"""全結合 :math:`Y = X W + b` を 1 つの関数で計算します（``linear_simple`` を速くした版）。

    :math:`X` の最後の軸に :math:`W` を掛けます。前の軸はいくつあっても構いません（系列 (N, T, D) など）。
    前の軸をまとめて (M, D) の行列にし（M は前の軸の長さの積）、大きな行列積 1 回で計算します。

    Args:
        needs_gx (bool): ``False`` なら、入力 :math:`X` の勾配を計算しません（:math:`X` がデータのとき、
            層の 3 つの同じ大きさの行列積のうち、:math:`G_Y W^\top` を 1 回省けます）。

    Shape:
        X: (..., D)、W: (D, H)、b: (H,) または ``None`` -> Y: (..., H)
    """

    def __init__(self, needs_gx=True):
        self.needs_gx = needs_gx

    def forward(self, x, W, b=None):
        if x.ndim == 2:
            y = x @ W  # (N, D) @ (D, H) -> (N, H)
        else:
            D, H = W.shape
            y = (x.reshape(-1, D) @ W).reshape(x.shape[:-1] + (H,))  # (..., D) -> (M, D) -> (M, H) -> (..., H)
        if b is not None:
            y += b  # x @ W の結果は新しい配列なので、その場で足してメモリを節約する
        return y

    def backward(self, gy):
        x, W = self.inputs[:2]
        D, H = W.shape
        x2 = x if x.ndim == 2 else reshape(x, (-1, D))  # (..., D) -> (M, D)
        gy2 = gy if gy.ndim == 2 else reshape(gy, (-1, H))  # (..., H) -> (M, H)
        gx = None
        if self.needs_gx:
            gx = reshape(matmul(gy2, W.T), x.shape)  # (M, H) @ (H, D) -> (M, D) -> (..., D)
        gW = matmul(x2.T, gy2)  # (D, M) @ (M, H) -> (D, H)
        if len(self.inputs) == 2:
            return gx, gW
        gb = sum_to(gy, self.inputs[2].shape)  # (..., H) -> (H,)
        return gx, gW, gb


def sigmoid(x):
    """``x`` の各要素のシグモイド関数を計算します。"""
    return Sigmoid()(x)


def relu(x):
    """``x`` の各要素の ReLU を計算します。"""
    return ReLU()(x)


def leaky_relu(x, slope=0.2):
    """``x`` の各要素の Leaky ReLU（負の側の傾き ``slope``）を計算します。

    ``slope`` の既定値 0.2 は DeZero と同じで、PyTorch の ``F.leaky_relu`` の既定値 0.01 とは違います。
    """
    return LeakyReLU(slope)(x)


def linear_simple(x, W, b=None):
    """全結合 ``x @ W + b`` を、既存の関数の組み合わせで計算します（``linear`` の素朴な版）。

    ``matmul`` は前の軸をバッチとして扱うので、``x`` が (..., D) でも ``linear`` と同じ (..., H) を返します。
    """
    y = matmul(x, W)
    if b is None:
        return y
    return y + b


def linear(x, W, b=None):
    """全結合 ``x @ W + b`` を、``x`` の最後の軸について計算します（PyTorch の ``F.linear`` と違い、``W`` は (入力, 出力)）。

    Args:
        x: shape (..., D) の入力（前の軸はいくつでも。``Variable`` か配列。配列ならデータとみなし、その勾配は求めません）。
        W: shape (D, H) の重み。
        b: shape (H,) のバイアス、または ``None``。

    Returns:
        Variable: shape (..., H) の出力。

    Shape:
        x: (..., D)、W: (D, H)、b: (H,) -> y: (..., H)

    Raises:
        ValueError: ``W`` が 2 次元でないか、``x`` の最後の軸の長さと ``W`` の行数が違うとき。
    """
    if W.ndim != 2 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"linear の shape が合いません: x {x.shape} と W {W.shape}"
                         f"（W は (D, H) の 2 次元で、x の最後の軸の長さ D と W の行数を同じにします）")
    f = Linear(needs_gx=isinstance(x, Variable))  # x が配列（データ）なら、x の勾配は要らない
    if b is None:
        return f(x, W)
    return f(x, W, b)


# --- 分類: ソフトマックスと交差エントロピー（第11章） ----------------------------------------

def _logsumexp(x, axis):
    r"""最大値を引いてあふれないように :math:`\log \sum e^x` を計算します（配列の計算）。"""
    xp = cuda.get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    return m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))


class Softmax(Function):
    r"""ソフトマックス :math:`y_i = e^{x_i} / \sum_j e^{x_j}`（``axis`` の方向に）。最大値を引いてから計算します。

    ``axis`` の既定は最後の軸（``-1``）で、PyTorch の ``F.softmax(x, dim=-1)`` と同じです（DeZero の既定は ``axis=1``）。
    """

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        xp = cuda.get_array_module(x)
        y = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        y /= y.sum(axis=self.axis, keepdims=True)
        return y

    def backward(self, gy):
        y = self.outputs[0]()  # 出力の Variable（その creator はこの関数なので、2 階微分でも x につながる）
        gx = y * gy
        return gx - y * sum(gx, axis=self.axis, keepdims=True)


class LogSoftmax(Function):
    r"""ソフトマックスの対数 :math:`y_i = x_i - \log \sum_j e^{x_j}`（大きな値でもあふれません）。

    ``axis`` の既定は最後の軸（``-1``）で、PyTorch の ``F.log_softmax(x, dim=-1)`` と同じです。
    """

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        return x - _logsumexp(x, self.axis)

    def backward(self, gy):
        y = self.outputs[0]()  # 出力の Variable
        # exp(y) = softmax(x) も Variable の計算なので、2 階微分では y を通って x まで微分される
        return gy - exp(y) * sum(gy, axis=self.axis, keepdims=True)


def softmax(x, axis=-1):
    """``axis`` の方向（既定は最後の軸）のソフトマックスを計算します。

    Args:
        x: 入力（``Variable`` か配列）。
        axis (int): 和が 1 になる軸（既定は ``-1``。PyTorch の ``dim=-1`` と同じ）。

    Returns:
        Variable: ``x`` と同じ shape・dtype の確率。
    """
    return Softmax(axis)(x)


def log_softmax(x, axis=-1):
    """``axis`` の方向（既定は最後の軸）のソフトマックスの対数を計算します。

    Args:
        x: 入力（``Variable`` か配列）。
        axis (int): ソフトマックスをとる軸（既定は ``-1``。PyTorch の ``dim=-1`` と同じ）。

    Returns:
        Variable: ``x`` と同じ shape・dtype の対数確率。
    """
    return LogSoftmax(axis)(x)


# --- ドロップアウトとバッチ正規化（第11章） --------------------------------------------------

class Dropout(Function):
    """ドロップアウト: 割合 ``ratio`` の要素を 0 にし、残りを ``1 / (1 - ratio)`` 倍します（inverted dropout）。

    マスクは入力と同じ装置の上で作ります。NumPy の入力なら ``rng``（``numpy.random.Generator``）から
    float32 の一様乱数を直接引き、CuPy の入力なら ``rng`` から引いた種で CuPy の乱数生成器を作って、
    GPU の上で引きます（CPU で作ったマスクを GPU に送ることはしません）。どちらも ``rng`` の種で決まります。
    """

    def __init__(self, ratio, rng):
        self.ratio = ratio
        self.rng = rng

    def forward(self, x):
        xp = cuda.get_array_module(x)
        if xp is np:
            u = self.rng.random(x.shape, dtype=np.float32)  # float32 で引く（float64 の一時配列を作らない）
        else:  # GPU: 種だけを CPU の乱数から引き、乱数そのものは GPU の上で作る
            seed = int(self.rng.integers(2**63))
            u = xp.random.default_rng(seed).random(x.shape, dtype=np.float32)
        scale = x.dtype.type(1 / (1 - self.ratio))
        self.mask = (u >= self.ratio).astype(x.dtype) * scale  # (x の shape) 残す要素は 1/(1-ratio)、消す要素は 0
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask  # 順伝播と同じマスク（定数）を掛ける。gy について何回でも微分できる


_dropout_rng = np.random.default_rng()


def dropout(x, ratio=0.5, training=True, rng=None):
    """学習中（``training=True``）だけドロップアウトします。推論中は ``x`` をそのまま返します。

    Args:
        x: 入力（``Variable`` か配列。NumPy でも CuPy でも、マスクは同じ装置の上で作ります）。
        ratio (float): 0 にする割合（0 以上 1 未満）。既定は PyTorch と同じ 0.5。
        training (bool): 学習中なら ``True``。
        rng: マスクを作る ``numpy.random.Generator``（``None`` ならモジュールに 1 つある共通のもの）。
            同じ種の ``rng`` からは、同じマスクができます。

    Returns:
        Variable: ``x`` と同じ shape・dtype の出力。

    Raises:
        ValueError: ``ratio`` が 0 以上 1 未満でないとき。
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"dropout の ratio は 0 以上 1 未満にします（受け取った値: {ratio}）")
    if not training or ratio == 0:
        return as_variable(x)
    return Dropout(ratio, rng if rng is not None else _dropout_rng)(x)
