"""Transformer の部品になる関数（第18章）: 埋め込み・層正規化・GELU・スケール付き内積注意。

どの関数も、速い版（``Function`` を 1 つ書いたもの）のとなりに、既存の関数を組み合わせた素朴な版
（``*_simple``）を置いています。テストは 2 つが同じ値と勾配を返すことを確かめます。
逆伝播は、ふつう（1 階の微分）は配列で速く計算し、``backward(create_graph=True)`` のときだけ
``Variable`` の計算で組み立てるので、2 階微分もできます（``BatchNorm`` と同じ作りです）。
"""
import math

import numpy as np

from mini_dl import cuda
from mini_dl.core import Config, Function, Variable, as_variable
from mini_dl.functions.math import tanh
from mini_dl.functions.nn import softmax
from mini_dl.functions.tensor import _swap_last, get_item, matmul, mean, sum, sum_to, where


# --- 埋め込み ----------------------------------------------------------------------------------

class Embedding(Function):
    r"""埋め込み: 整数の ID ``ids`` で、行列 :math:`W` の行を取り出します（:math:`y = W[\text{ids}]`）。

    逆伝播は、取り出した行に勾配を足し込みます（同じ ID が何回出てきても、その分だけ足します）。
    ID は定数なので、微分するのは :math:`W` だけです。

    Shape:
        ids: (...)（整数）、W: (V, D) -> y: (..., D)
    """

    def __init__(self, ids):
        self.ids = ids

    def forward(self, W):
        return W[self.ids]  # (...) の ID -> (..., D)

    def backward(self, gy):
        return EmbeddingGrad(self.ids, self.inputs[0].shape)(gy)


class EmbeddingGrad(Function):
    """``Embedding`` の逆伝播: 形 ``(V, D)`` の 0 の配列の ``ids`` の行に、勾配を足し込みます。"""

    def __init__(self, ids, shape):
        self.ids = ids
        self.shape = shape

    def forward(self, gy):
        xp = cuda.get_array_module(gy)
        gW = xp.zeros(self.shape, dtype=gy.dtype)
        D = self.shape[1]
        xp.add.at(gW, self.ids.reshape(-1), gy.reshape(-1, D))  # (..., D) -> (M, D) を M 個の行へ足す
        return gW

    def backward(self, ggW):
        return embedding(self.ids, ggW)


def _check_ids(ids, W):
    """``ids`` が整数の配列で、``W`` と同じ装置にあり、範囲に入っていることを確かめ、配列を返します。"""
    if isinstance(ids, Variable):
        ids = ids.data
    xp = cuda.get_array_module(W.data if isinstance(W, Variable) else W)
    if isinstance(ids, (int, np.integer)):
        ids = xp.asarray(ids)
    if not isinstance(ids, cuda.array_types) or ids.dtype.kind not in "iu":
        kind = getattr(ids, "dtype", type(ids).__name__)
        raise TypeError(f"embedding の ids は整数の配列にします（受け取ったもの: {kind}）")
    if cuda.get_array_module(ids) is not xp:
        raise TypeError("embedding の ids と W は同じ装置（CPU か GPU）に置きます"
                        f"（ids: {type(ids).__module__}、W: {xp.__name__}）")
    V = W.shape[0]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise IndexError(f"embedding の ids は 0 以上 {V} 未満にします"
                         f"（受け取った範囲: {int(ids.min())}〜{int(ids.max())}）")
    return ids


def embedding_simple(ids, W):
    """埋め込みを ``get_item`` で計算します（``embedding`` の素朴な版）。"""
    return get_item(W, _check_ids(ids, W))


def embedding(ids, W):
    r"""埋め込み: ``ids`` の各要素を、行列 ``W`` の行（長さ D のベクトル）に置き換えます。

    PyTorch の ``F.embedding(input, weight)`` と同じ引数の順番です。

    Args:
        ids: 整数の配列（shape は何でも）。``W`` と同じ装置（CPU か GPU）に置きます。
        W: shape (V, D) の埋め込み行列（V は語彙の大きさ）。

    Returns:
        Variable: shape ``ids.shape + (D,)``、dtype は ``W`` と同じ。

    Raises:
        TypeError: ``ids`` が整数の配列でないか、``W`` と違う装置にあるとき。
        IndexError: ``ids`` に 0 未満か V 以上の値があるとき。
    """
    return Embedding(_check_ids(ids, W))(W)


# --- 層正規化 ----------------------------------------------------------------------------------

class LayerNorm(Function):
    r"""層正規化: 最後の軸の平均 :math:`\mu` と分散 :math:`\sigma^2` で正規化し、スケールとシフトをかけます。

    .. math::

        \hat{x} = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad y = \gamma \hat{x} + \beta

    バッチ正規化と違い、統計は 1 つのデータ（1 つのトークン）の中でとるので、学習中と推論中の違いがありません。
    逆伝播は :math:`g = \gamma g_y` として
    :math:`g_x = \frac{1}{\sigma}\left(g - \overline{g} - \hat{x}\,\overline{g \hat{x}}\right)`
    （上線は最後の軸の平均）です。

    Shape:
        x: (..., D)、gamma・beta: (D,) -> y: (..., D)
    """

    def __init__(self, eps=1e-5):
        self.eps = eps

    def forward(self, x, gamma, beta):
        xp = cuda.get_array_module(x)
        mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
        xc = x - mu
        var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
        self.inv_std = 1 / xp.sqrt(var + x.dtype.type(self.eps))
        self.x_hat = xc * self.inv_std
        return self.x_hat * gamma + beta

    def backward(self, gy):
        if Config.enable_backprop:  # create_graph=True: Variable の計算で組み立てて、2 階微分できるようにする
            return self._backward_graph(gy)
        x_hat, gamma = self.x_hat, self.inputs[1].data
        gyd = gy.data
        D = x_hat.shape[-1]
        g = gyd * gamma
        gx = (g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True)) * self.inv_std
        ggamma = (gyd * x_hat).reshape(-1, D).sum(axis=0)  # (..., D) -> (D,)
        gbeta = gyd.reshape(-1, D).sum(axis=0)
        return Variable(gx), Variable(ggamma), Variable(gbeta)

    def _backward_graph(self, gy):
        """``backward`` と同じ式を、x・gamma・gy の ``Variable`` の計算で組み立てます（2 階微分用）。"""
        x, gamma = self.inputs[:2]
        xc = x - mean(x, axis=-1, keepdims=True)
        inv_std = (mean(xc * xc, axis=-1, keepdims=True) + self.eps) ** -0.5  # (..., 1)
        x_hat = xc * inv_std
        g = gy * gamma
        gx = (g - mean(g, axis=-1, keepdims=True) - x_hat * mean(g * x_hat, axis=-1, keepdims=True)) * inv_std
        return gx, sum_to(gy * x_hat, gamma.shape), sum_to(gy, gamma.shape)


def layer_norm_simple(x, gamma, beta, eps=1e-5):
    """層正規化を ``mean`` と四則演算で計算します（``layer_norm`` の素朴な版）。"""
    xc = x - mean(x, axis=-1, keepdims=True)
    var = mean(xc * xc, axis=-1, keepdims=True)
    return xc * (var + eps) ** -0.5 * gamma + beta


def layer_norm(x, gamma, beta, eps=1e-5):
    r"""最後の軸の層正規化 :math:`\gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta`。

    PyTorch の ``F.layer_norm(x, (D,), weight, bias, eps)`` と同じ計算です（分散は N で割る標本分散）。

    Args:
        x: 入力（shape (..., D)）。
        gamma, beta: shape (D,) のスケールとシフト。
        eps (float): 分散に足す小さな数。

    Returns:
        Variable: ``x`` と同じ shape・dtype の出力。

    Raises:
        ValueError: ``gamma`` か ``beta`` の shape が (D,) でないとき。
    """
    D = x.shape[-1]
    if gamma.shape != (D,) or beta.shape != (D,):
        raise ValueError(f"layer_norm の gamma と beta の shape は x の最後の軸と同じ ({D},) にします"
                         f"（受け取った shape: gamma {gamma.shape}、beta {beta.shape}）")
    return LayerNorm(eps)(x, gamma, beta)


# --- GELU --------------------------------------------------------------------------------------

_GELU_C = math.sqrt(2 / math.pi)
_GELU_A = 0.044715


class GELU(Function):
    r"""GELU の tanh による近似（GPT-2 と同じ。PyTorch の ``F.gelu(x, approximate="tanh")``）。

    .. math::

        y = \frac{x}{2}\left(1 + \tanh u\right), \qquad u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)

    微分は :math:`\frac{1}{2}(1 + t) + \frac{x}{2}(1 - t^2)\sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\,x^2)`
    （:math:`t = \tanh u`）です。
    """

    def forward(self, x):
        xp = cuda.get_array_module(x)
        c, a, half = (x.dtype.type(v) for v in (_GELU_C, _GELU_A, 0.5))
        self.t = xp.tanh(c * (x + a * x * x * x))
        return half * x * (1 + self.t)

    def backward(self, gy):
        x = self.inputs[0]
        if Config.enable_backprop:  # 2 階微分用: 同じ式を Variable の計算で
            t = tanh(_GELU_C * (x + _GELU_A * x ** 3))
            return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * x * x))
        x, t = x.data, self.t
        c, a, half = (x.dtype.type(v) for v in (_GELU_C, _GELU_A, 0.5))
        return Variable(gy.data * (half * (1 + t) + half * x * (1 - t * t) * c * (1 + 3 * a * x * x)))


def gelu_simple(x):
    """GELU（tanh の近似）を ``tanh`` と四則演算で計算します（``gelu`` の素朴な版）。"""
    return 0.5 * x * (1 + tanh(_GELU_C * (x + _GELU_A * x ** 3)))


def gelu(x):
    """``x`` の各要素の GELU（GPT-2 と同じ tanh の近似）を計算します。"""
    return GELU()(x)


# --- スケール付き内積注意 ------------------------------------------------------------------------

def _attention_mask(mask, causal, Lq, Lk, xp):
    """``mask`` と ``causal`` から、(..., Lq, Lk) にブロードキャストできる真偽値の配列（または ``None``）を作ります。

    因果マスクは右下にそろえます: クエリ i は、キー j ≤ i + (Lk - Lq) を見ます。Lq = Lk なら下三角で、
    KV キャッシュで新しいトークン 1 個（Lq = 1）を計算するときは、キャッシュのすべてのキーを見ます。
    """
    if mask is not None:
        if isinstance(mask, Variable):
            mask = mask.data
        if not isinstance(mask, cuda.array_types) or mask.dtype != bool:
            raise TypeError("scaled_dot_product_attention の mask は真偽値（bool）の配列にします（True の場所を見ます）"
                            f"（受け取ったもの: {getattr(mask, 'dtype', type(mask).__name__)}）")
        if cuda.get_array_module(mask) is not xp:
            raise TypeError("scaled_dot_product_attention の mask は q と同じ装置（CPU か GPU）に置きます")
    if causal:
        i = xp.arange(Lq)[:, None]
        j = xp.arange(Lk)[None, :]
        tri = j <= i + (Lk - Lq)  # (Lq, Lk)
        mask = tri if mask is None else mask & tri
    return mask


def _check_qkv(q, k, v):
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError("scaled_dot_product_attention の q・k・v は同じ次元数 (..., L, D) にします"
                         f"（受け取った shape: q {q.shape}、k {k.shape}、v {v.shape}）")
    if q.shape[-1] != k.shape[-1] or k.shape[:-1] != v.shape[:-1] or q.shape[:-2] != k.shape[:-2]:
        raise ValueError("scaled_dot_product_attention の shape が合いません: q (..., Lq, D)、k (..., Lk, D)、"
                         f"v (..., Lk, Dv) にします（受け取った shape: q {q.shape}、k {k.shape}、v {v.shape}）")


class ScaledDotProductAttention(Function):
    r"""スケール付き内積注意 :math:`\mathrm{softmax}\left(\frac{Q K^\top}{\sqrt{D}} + M\right) V` を 1 つの関数で。

    :math:`M` は ``mask`` が偽の場所で :math:`-\infty`、それ以外で 0 です（見ない場所の重みが 0 になります）。
    逆伝播は、保存した注意の重み :math:`P` から
    :math:`G_V = P^\top G`、:math:`G_P = G V^\top`、:math:`G_S = P \odot (G_P - \textstyle\sum_j G_P \odot P)`、
    :math:`G_Q = G_S K / \sqrt{D}`、:math:`G_K = G_S^\top Q / \sqrt{D}` と計算します。

    Shape:
        q: (..., Lq, D)、k: (..., Lk, D)、v: (..., Lk, Dv)、mask: (..., Lq, Lk) にブロードキャストできる形
        -> y: (..., Lq, Dv)
    """

    def __init__(self, mask=None):
        self.mask = mask

    def forward(self, q, k, v):
        xp = cuda.get_array_module(q)
        scale = q.dtype.type(1 / math.sqrt(q.shape[-1]))
        s = (q @ k.swapaxes(-1, -2)) * scale  # (..., Lq, D) @ (..., D, Lk) -> (..., Lq, Lk)
        if self.mask is not None:
            s = xp.where(self.mask, s, q.dtype.type(-np.inf))
        s -= s.max(axis=-1, keepdims=True)
        p = xp.exp(s, out=s)
        p /= p.sum(axis=-1, keepdims=True)
        self.p = p  # 注意の重み (..., Lq, Lk)
        return p @ v  # (..., Lq, Lk) @ (..., Lk, Dv) -> (..., Lq, Dv)

    def backward(self, gy):
        q, k, v = self.inputs
        if Config.enable_backprop:  # 2 階微分用: 素朴な版と同じ計算を Variable で組み立てて微分する
            p = _attention_weights(q, k, self.mask)
            gp = matmul(gy, _swap_last(v))
            gs = p * (gp - sum(gp * p, axis=-1, keepdims=True))
            scale = 1 / math.sqrt(q.shape[-1])
            return matmul(gs, k) * scale, matmul(_swap_last(gs), q) * scale, matmul(_swap_last(p), gy)
        p, g = self.p, gy.data
        scale = p.dtype.type(1 / math.sqrt(q.shape[-1]))
        gv = p.swapaxes(-1, -2) @ g  # (..., Lk, Lq) @ (..., Lq, Dv) -> (..., Lk, Dv)
        gp = g @ v.data.swapaxes(-1, -2)  # (..., Lq, Dv) @ (..., Dv, Lk) -> (..., Lq, Lk)
        gs = p * (gp - (gp * p).sum(axis=-1, keepdims=True))
        gs *= scale
        gq = gs @ k.data  # (..., Lq, Lk) @ (..., Lk, D) -> (..., Lq, D)
        gk = gs.swapaxes(-1, -2) @ q.data  # (..., Lk, Lq) @ (..., Lq, D) -> (..., Lk, D)
        return Variable(gq), Variable(gk), Variable(gv)


def _attention_weights(q, k, mask):
    """注意の重み softmax(q k^T / sqrt(D)) を ``Variable`` の計算で求めます（マスクは真偽値の配列か ``None``）。"""
    s = matmul(q, _swap_last(k)) * (1 / math.sqrt(q.shape[-1]))  # (..., Lq, Lk)
    if mask is not None:
        s = where(mask, s, -np.inf)
    return softmax(s, axis=-1)


def scaled_dot_product_attention_simple(q, k, v, mask=None, causal=False):
    """スケール付き内積注意を ``matmul``・``where``・``softmax`` で計算します（素朴な版）。"""
    q, k, v = as_variable(q), as_variable(k), as_variable(v)
    _check_qkv(q, k, v)
    xp = cuda.get_array_module(q.data)
    mask = _attention_mask(mask, causal, q.shape[-2], k.shape[-2], xp)
    return matmul(_attention_weights(q, k, mask), v)


def scaled_dot_product_attention(q, k, v, mask=None, causal=False):
    r"""スケール付き内積注意 :math:`\mathrm{softmax}(Q K^\top / \sqrt{D})\,V`（最後の 2 つの軸について）。

    前の軸（バッチ・ヘッド）はいくつあっても構いません。q・k・v で同じにします。

    Args:
        q: クエリ (..., Lq, D)。
        k: キー (..., Lk, D)。
        v: 値 (..., Lk, Dv)。
        mask: 真偽値の配列で、(..., Lq, Lk) にブロードキャストできる形。``True`` の場所だけを見ます
            （PyTorch の真偽値の ``attn_mask`` と同じ向き）。パディングを隠すのに使います。
        causal (bool): ``True`` なら、未来のキーを見ません（因果マスク）。右下にそろえるので、
            Lq < Lk（KV キャッシュ）ではクエリ i がキー :math:`j \le i + L_k - L_q` を見ます
            （Lq = Lk なら PyTorch の ``is_causal=True`` と同じです）。

    Returns:
        Variable: (..., Lq, Dv) の出力。

    Raises:
        ValueError: shape が合わないとき。
        TypeError: ``mask`` が真偽値の配列でないか、q と違う装置にあるとき。

    すべてのキーが隠された行は、重みが決まらないので NaN になります（PyTorch と同じです）。
    """
    q, k, v = as_variable(q), as_variable(k), as_variable(v)
    _check_qkv(q, k, v)
    xp = cuda.get_array_module(q.data)
    mask = _attention_mask(mask, causal, q.shape[-2], k.shape[-2], xp)
    return ScaledDotProductAttention(mask)(q, k, v)
