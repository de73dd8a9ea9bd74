"""要素ごとの数学関数（``mini_dl.functions``、``import mini_dl.functions as F`` と使います）。

どの関数も ``forward`` は配列で、``backward`` は ``Variable`` で計算するので、
何回でも微分できます（第7章）。
"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import (  # noqa: F401  形を扱う関数は core にあり、F.reshape のようにここからも使えます
    Function,
    broadcast_to,
    get_item,
    matmul,
    reshape,
    sum,
    sum_to,
    transpose,
)
from mini_dl.core import Variable, _keepdims_shape, as_array, as_variable


class Square(Function):
    r"""2 乗 :math:`y = x^2`。微分は :math:`\frac{dy}{dx} = 2x` です。"""

    def forward(self, x):
        return x ** 2

    def backward(self, gy):
        x = self.inputs[0]
        gx = 2 * x * gy
        return gx


class Exp(Function):
    r"""指数関数 :math:`y = e^x`。微分は :math:`\frac{dy}{dx} = e^x = y` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.exp(x)

    def backward(self, gy):
        y = self.outputs[0]()  # 出力は弱参照で持っているので、呼び出して取り出す
        gx = gy * y
        return gx


class Log(Function):
    r"""自然対数 :math:`y = \log x`。微分は :math:`\frac{dy}{dx} = \frac{1}{x}` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.log(x)

    def backward(self, gy):
        x = self.inputs[0]
        gx = gy / x
        return gx


class Sin(Function):
    r""":math:`y = \sin x`。微分は :math:`\cos x` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.sin(x)

    def backward(self, gy):
        x = self.inputs[0]
        gx = gy * cos(x)
        return gx


class Cos(Function):
    r""":math:`y = \cos x`。微分は :math:`-\sin x` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.cos(x)

    def backward(self, gy):
        x = self.inputs[0]
        gx = gy * -sin(x)
        return gx


class Tanh(Function):
    r"""双曲線正接 :math:`y = \tanh x`。微分は :math:`1 - y^2` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.tanh(x)

    def backward(self, gy):
        y = self.outputs[0]()
        gx = gy * (1 - y * y)
        return gx


def square(x):
    """``x`` の各要素を 2 乗します。"""
    return Square()(x)


def exp(x):
    """``x`` の各要素の指数関数 :math:`e^x` を計算します。"""
    return Exp()(x)


def log(x):
    """``x`` の各要素の自然対数を計算します。"""
    return Log()(x)


def sin(x):
    """``x`` の各要素の :math:`\\sin` を計算します。"""
    return Sin()(x)


def cos(x):
    """``x`` の各要素の :math:`\\cos` を計算します。"""
    return Cos()(x)


def tanh(x):
    """``x`` の各要素の :math:`\\tanh` を計算します。"""
    return Tanh()(x)


# --- 最大・最小・切り詰め（第8章） ------------------------------------------------------------

class Max(Function):
    """最大値（``axis`` で軸を選べます）。

    勾配は最大値をとった要素にだけ流れます。最大値の要素が複数あるときは、勾配を等分します。
    """

    def __init__(self, axis=None, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        return x.max(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        return _extreme_grad(self, gy)


class Min(Max):
    """最小値（``axis`` で軸を選べます）。勾配の流れ方は ``Max`` と同じです。"""

    def forward(self, x):
        return x.min(axis=self.axis, keepdims=self.keepdims)


def _extreme_grad(f, gy):
    """``Max``・``Min`` の逆伝播: 選ばれた要素（同点なら等分）にだけ ``gy`` を流します。"""
    x, y = f.inputs[0], f.outputs[0]()
    shape = _keepdims_shape(x.shape, f.axis, f.keepdims, y.shape)
    hit = x.data == y.data.reshape(shape)  # (x の shape) 選ばれた要素なら True
    share = hit / hit.sum(axis=f.axis, keepdims=True)  # 同点の要素で等分する重み
    return broadcast_to(reshape(gy, shape), x.shape) * share.astype(x.dtype)


class Clip(Function):
    r"""値を :math:`[x_{min}, x_{max}]` に切り詰めます。範囲の外では勾配は 0 です。"""

    def __init__(self, x_min, x_max):
        self.x_min = x_min
        self.x_max = x_max

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.clip(x, self.x_min, self.x_max)

    def backward(self, gy):
        x = self.inputs[0].data
        mask = (x >= self.x_min) & (x <= self.x_max)
        return gy * mask.astype(gy.dtype)


def max(x, axis=None, keepdims=False):
    """``x`` の最大値を計算します（``axis`` は int か int のタプル）。"""
    return Max(axis, keepdims)(x)


def min(x, axis=None, keepdims=False):
    """``x`` の最小値を計算します（``axis`` は int か int のタプル）。"""
    return Min(axis, keepdims)(x)


def clip(x, x_min, x_max):
    """``x`` の各要素を ``x_min`` 以上 ``x_max`` 以下に切り詰めます。"""
    return Clip(x_min, x_max)(x)


# --- 活性化関数・全結合・損失（第9章） --------------------------------------------------------

class Sigmoid(Function):
    r"""シグモイド関数 :math:`y = \frac{1}{1 + e^{-x}}`。微分は :math:`y (1 - y)` です。

    :math:`e^{-x}` は :math:`x` が大きな負の数だとあふれるので、同じ値になる
    :math:`\frac{1}{2}\tanh\frac{x}{2} + \frac{1}{2}` で計算します。
    """

    def forward(self, x):
        xp = cuda.get_array_module(x)
        half = x.dtype.type(0.5)  # 0.5 を x と同じ dtype にして、float32 のまま計算する
        return xp.tanh(x * half) * half + half

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
    r"""Leaky ReLU :math:`y = x`（:math:`x > 0`）、:math:`y = a x`（それ以外）。"""

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

    Args:
        needs_gx (bool): ``False`` なら、入力 :math:`X` の勾配を計算しません（:math:`X` がデータのとき、
            いちばん大きな行列積を 1 回省けます）。

    Shape:
        X: (N, D)、W: (D, H)、b: (H,) または ``None`` -> Y: (N, H)
    """

    def __init__(self, needs_gx=True):
        self.needs_gx = needs_gx

    def forward(self, x, W, b=None):
        y = x @ W
        if b is not None:
            y += b  # x @ W の結果は新しい配列なので、その場で足してメモリを節約する
        return y

    def backward(self, gy):
        x, W = self.inputs[:2]
        gx = matmul(gy, W.T) if self.needs_gx else None  # (N, H) @ (H, D) -> (N, D)
        gW = matmul(x.T, gy)  # (D, N) @ (N, H) -> (D, H)
        if len(self.inputs) == 2:
            return gx, gW
        gb = sum_to(gy, self.inputs[2].shape)  # (N, H) -> (H,)
        return gx, gW, gb


class MeanSquaredError(Function):
    r"""平均二乗誤差 :math:`L = \frac{1}{N} \sum_i (x_{0i} - x_{1i})^2`（N は要素の数ではなく、最初の軸の長さ）。"""

    def forward(self, x0, x1):
        diff = x0 - x1
        return (diff * diff).sum() / diff.dtype.type(len(diff))

    def backward(self, gy):
        x0, x1 = self.inputs
        diff = x0 - x1
        gx0 = gy * diff * (2 / len(diff))
        return gx0, -gx0


def sigmoid(x):
    """``x`` の各要素のシグモイド関数を計算します。"""
    return Sigmoid()(x)


def relu(x):
    """``x`` の各要素の ReLU を計算します。"""
    return ReLU()(x)


def leaky_relu(x, slope=0.2):
    """``x`` の各要素の Leaky ReLU（負の側の傾き ``slope``）を計算します。"""
    return LeakyReLU(slope)(x)


def linear_simple(x, W, b=None):
    """全結合 ``x @ W + b`` を、既存の関数の組み合わせで計算します（``linear`` の素朴な版）。"""
    y = matmul(x, W)
    if b is None:
        return y
    return y + b


def linear(x, W, b=None):
    """全結合 ``x @ W + b`` を計算します。

    Args:
        x: shape (N, D) の入力（``Variable`` か配列。配列ならデータとみなし、その勾配は求めません）。
        W: shape (D, H) の重み。
        b: shape (H,) のバイアス、または ``None``。

    Returns:
        Variable: shape (N, H) の出力。

    Raises:
        ValueError: ``x`` の列数と ``W`` の行数が違うとき。
    """
    if x.shape[-1] != W.shape[0]:
        raise ValueError(f"linear の shape が合いません: x {x.shape} と W {W.shape}（x の列数と W の行数は同じにします）")
    f = Linear(needs_gx=isinstance(x, Variable))  # x が配列（データ）なら、x の勾配は要らない
    if b is None:
        return f(x, W)
    return f(x, W, b)


def mean_squared_error_simple(x0, x1):
    """平均二乗誤差を、既存の関数の組み合わせで計算します（``mean_squared_error`` の素朴な版）。"""
    diff = x0 - x1
    return sum(diff * diff) / len(diff)


def mean_squared_error(x0, x1):
    r"""平均二乗誤差 :math:`\frac{1}{N}\sum (x_0 - x_1)^2` を計算します（N は最初の軸の長さ）。

    Raises:
        ValueError: 2 つの入力の shape が違うとき（ブロードキャストによる思わぬ誤差を防ぎます）。
    """
    if x0.shape != x1.shape:
        raise ValueError(f"mean_squared_error の 2 つの入力は同じ shape にします（受け取った shape: {x0.shape} と {x1.shape}）")
    return MeanSquaredError()(x0, x1)


# --- 分類: ソフトマックスと交差エントロピー（第11章） ----------------------------------------

def _logsumexp(x, axis):
    r"""最大値を引いてあふれないように :math:`\log \sum e^x` を計算します（配列の計算）。"""
    xp = cuda.get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    return m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))


class Softmax(Function):
    r"""ソフトマックス :math:`y_i = e^{x_i} / \sum_j e^{x_j}`（``axis`` の方向に）。最大値を引いてから計算します。"""

    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, x):
        xp = cuda.get_array_module(x)
        y = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        y /= y.sum(axis=self.axis, keepdims=True)
        return y

    def backward(self, gy):
        y = self.outputs[0]()
        gx = y * gy
        return gx - y * sum(gx, axis=self.axis, keepdims=True)


class LogSoftmax(Function):
    r"""ソフトマックスの対数 :math:`y_i = x_i - \log \sum_j e^{x_j}`（大きな値でもあふれません）。"""

    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, x):
        return x - _logsumexp(x, self.axis)

    def backward(self, gy):
        y = self.outputs[0]()
        return gy - exp(y) * sum(gy, axis=self.axis, keepdims=True)


class SoftmaxCrossEntropy(Function):
    r"""ソフトマックスと交差エントロピー誤差を 1 つにした関数（``softmax_cross_entropy_simple`` を速く安定にした版）。

    .. math:: L = -\frac{1}{N} \sum_n \log \mathrm{softmax}(x_n)_{t_n}

    Shape:
        x: (N, C) のスコア（ロジット）、t: (N,) の正解のクラス番号（整数） -> L: ()
    """

    def forward(self, x, t):
        N = x.shape[0]
        log_p = x - _logsumexp(x, axis=1)  # (N, C) の log softmax
        picked = log_p[np.arange(N), t.ravel()]  # (N,) 正解のクラスの log 確率
        return -picked.sum() / x.dtype.type(N)

    def backward(self, gy):
        x, t = self.inputs
        N, C = x.shape
        xp = cuda.get_array_module(x.data)
        y = softmax(x)  # (N, C) の確率
        t_onehot = xp.eye(C, dtype=x.dtype)[t.data.ravel()]  # (N,) -> (N, C)
        gx = (y - t_onehot) * (gy / N)
        return gx, None


def softmax(x, axis=1):
    """``axis`` の方向のソフトマックスを計算します。"""
    return Softmax(axis)(x)


def log_softmax(x, axis=1):
    """``axis`` の方向のソフトマックスの対数を計算します。"""
    return LogSoftmax(axis)(x)


def softmax_cross_entropy_simple(x, t):
    """ソフトマックスと交差エントロピー誤差を、既存の関数の組み合わせで計算します（素朴な版。大きな値であふれます）。"""
    N = x.shape[0]
    p = softmax(x)
    p = clip(p, 1e-15, 1.0)  # log(0) を避ける
    log_p = log(p)
    picked = log_p[np.arange(N), t.data if hasattr(t, "data") else t]
    return -sum(picked) / N


def softmax_cross_entropy(x, t):
    """ソフトマックスと交差エントロピー誤差 :math:`-\\frac{1}{N}\\sum_n \\log p_{n, t_n}` を計算します。

    Args:
        x: shape (N, C) のスコア（ロジット）。
        t: shape (N,) の正解のクラス番号（整数の配列）。

    Returns:
        Variable: 損失（0 次元、``x`` と同じ dtype）。

    Raises:
        TypeError: ``t`` が整数の配列でないとき。
        ValueError: ``x`` が 2 次元でないか、``t`` の長さが ``x`` の行数と違うとき。
    """
    t_data = t.data if hasattr(t, "creator") else t
    if not np.issubdtype(t_data.dtype, np.integer):
        raise TypeError(f"softmax_cross_entropy の t には整数のクラス番号を渡してください（受け取った dtype: {t_data.dtype}）")
    if x.ndim != 2 or t_data.shape != (x.shape[0],):
        raise ValueError(
            f"softmax_cross_entropy の shape が合いません: x {x.shape}、t {t_data.shape}"
            f"（x は (N, C)、t は (N,) にします）"
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


# --- ドロップアウトとバッチ正規化（第11章） --------------------------------------------------

class Dropout(Function):
    """ドロップアウト: 割合 ``ratio`` の要素を 0 にし、残りを ``1 / (1 - ratio)`` 倍します（inverted dropout）。"""

    def __init__(self, ratio, rng):
        self.ratio = ratio
        self.rng = rng

    def forward(self, x):
        xp = cuda.get_array_module(x)
        keep = self.rng.random(x.shape) >= self.ratio  # (x の shape) 残す要素は True
        self.mask = xp.asarray(keep.astype(x.dtype) * x.dtype.type(1 / (1 - self.ratio)))
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


_dropout_rng = np.random.default_rng()


def dropout(x, ratio=0.5, training=True, rng=None):
    """学習中（``training=True``）だけドロップアウトします。推論中は ``x`` をそのまま返します。

    Args:
        x: 入力。
        ratio (float): 0 にする割合（0 以上 1 未満）。
        training (bool): 学習中なら ``True``。
        rng: マスクを作る ``numpy.random.Generator``（``None`` なら共通のもの）。
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"dropout の ratio は 0 以上 1 未満にします（受け取った値: {ratio}）")
    if not training or ratio == 0:
        return as_variable(x)
    return Dropout(ratio, rng if rng is not None else _dropout_rng)(x)


class BatchNorm(Function):
    r"""バッチ正規化: ミニバッチの平均と分散で正規化し、:math:`\gamma \hat{x} + \beta` を返します。

    学習中（``running_mean`` などを渡して ``training=True``）は、ミニバッチの統計で正規化し、
    推論用の移動平均 ``running_mean``・``running_var`` をその場で更新します。推論中は移動平均を使います。
    逆伝播は配列で計算するので、この関数の 2 階微分には対応しません。

    Shape:
        x: (N, C) または (N, C, H, W)。gamma・beta・running_mean・running_var: (C,)
    """

    def __init__(self, running_mean, running_var, training, momentum, eps):
        self.running_mean = running_mean
        self.running_var = running_var
        self.training = training
        self.momentum = momentum
        self.eps = eps

    def forward(self, x, gamma, beta):
        xp = cuda.get_array_module(x)
        axes = (0,) if x.ndim == 2 else (0, 2, 3)  # 平均をとる軸: (N,) か (N, H, W)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)  # (C,) をブロードキャストする形
        if self.training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            n = x.size // gamma.size
            m = self.momentum
            self.running_mean *= m
            self.running_mean += (1 - m) * mean
            self.running_var *= m
            self.running_var += (1 - m) * var * (n / (n - 1 if n > 1 else 1))  # 不偏分散で移動平均をとる
        else:
            mean, var = self.running_mean, self.running_var
        self.inv_std = 1 / xp.sqrt(var + x.dtype.type(self.eps))
        self.x_hat = (x - mean.reshape(shape)) * self.inv_std.reshape(shape)
        self.axes, self.shape = axes, shape
        return gamma.reshape(shape) * self.x_hat + beta.reshape(shape)

    def backward(self, gy):
        gamma = self.inputs[1].data
        g = gy.data
        axes, shape, x_hat = self.axes, self.shape, self.x_hat
        gbeta = g.sum(axis=axes)
        ggamma = (g * x_hat).sum(axis=axes)
        if self.training:
            n = g.size // gamma.size
            gx = (g - (gbeta.reshape(shape) + x_hat * ggamma.reshape(shape)) / x_hat.dtype.type(n))
        else:
            gx = g
        gx = gx * (gamma * self.inv_std).reshape(shape)
        return Variable(gx), Variable(ggamma), Variable(gbeta)


def batch_norm(x, gamma, beta, running_mean, running_var, training=True, momentum=0.9, eps=1e-5):
    """バッチ正規化（``BatchNorm`` 関数の短縮形）。``running_mean``・``running_var`` は学習中にその場で更新されます。"""
    return BatchNorm(running_mean, running_var, training, momentum, eps)(x, gamma, beta)
