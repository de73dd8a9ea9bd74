r"""プーリング（第15章）: ``max_pooling``、``average_pooling``。

画像 (N, C, H, W) の窓ごとに、最大値か平均を取ります。窓の並べ方・パディング・出力の大きさは畳み込みと同じで、
``mini_dl.functions.conv`` の道具（``_window_slices``・``_pad``・``Im2col``）を使います。
"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Function
from mini_dl.functions.conv import Im2col, _pad, _window_slices, pair
from mini_dl.functions.cpu import parallel_kernels
from mini_dl.functions.tensor import max, mean, reshape


# --- プーリング --------------------------------------------------------------------------------

def _pool_args(kernel_size, stride, pad):
    """プーリングの (kernel_size, stride, pad) をそろえます。``stride`` を省くと ``kernel_size`` です（PyTorch と同じ）。"""
    kernel_size = pair(kernel_size)
    return kernel_size, pair(kernel_size if stride is None else stride), pair(pad)


def _max_pooling_2x2(x):
    """重ならない 2×2 の最大プーリングの、最大値と位置 k（同点なら先の位置）を返します。

    窓の 4 つの値 a b / c d を、まず a と b、c と d で比べ、勝ったもの同士を比べます。
    順に 4 つを比べるより、位置の計算が少なくて済みます（NumPy の ``where`` は遅いので、bool の演算で選びます）。
    """
    xp = cuda.get_array_module(x)
    oh, ow = x.shape[2] // 2, x.shape[3] // 2  # 奇数の端は、どの窓にも入らない
    kernels = parallel_kernels(x)
    if kernels is not None:  # 並列のカーネルで、同じトーナメントを
        y, idx = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype), np.empty(x.shape[:2] + (oh, ow), dtype=np.int16)
        kernels.max_pooling_2x2_kernel(x, y, idx)
        return y, idx
    a, b = x[:, :, 0:2 * oh:2, 0:2 * ow:2], x[:, :, 0:2 * oh:2, 1:2 * ow:2]  # 窓の上の段 (N, C, OH, OW)
    c, d = x[:, :, 1:2 * oh:2, 0:2 * ow:2], x[:, :, 1:2 * oh:2, 1:2 * ow:2]  # 窓の下の段
    ab, cd = xp.maximum(a, b), xp.maximum(c, d)
    lower = cd > ab  # 下の段の勝者が真に大きいときだけ下の段（同点なら先の上の段）
    right = (lower & (d > c)) | (~lower & (b > a))  # 勝った段の中で、右が真に大きいか（where より速い）
    y = xp.empty(ab.shape, dtype=x.dtype)  # 結果は C の並びに（x が並べ替えたビューでも。逆伝播の読み書きがそろって速い）
    idx = xp.empty(ab.shape, dtype=np.int16)
    xp.maximum(ab, cd, out=y)
    xp.add(lower * np.int16(2), right, out=idx)  # 位置 k = 2*段 + 列 (N, C, OH, OW)
    return y, idx


class MaxPooling(Function):
    """最大プーリング: 窓ごとの最大値を取ります。パディングには ``-inf`` を詰めます（PyTorch と同じ）。

    窓を並べた配列（im2col）は作らず、窓の中の位置 (i, j) ごと（KH×KW 回）のスライスを順に比べて、
    最大値と、それが窓の中のどの位置か（``indexes``、同点なら先の位置）を求めます。
    逆伝播では、勾配をその位置にだけ戻します。

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW)
    """

    def __init__(self, kernel_size, stride=None, pad=0):
        self.args = _pool_args(kernel_size, stride, pad)

    def forward(self, x):
        xp = cuda.get_array_module(x)
        if self.args == ((2, 2), (2, 2), (0, 0)):  # いちばんよく使う 2×2 は、2 つずつの比べ合い（トーナメント）で速く
            y, self.indexes = _max_pooling_2x2(x)
            return y
        xpad = _pad(x, self.args[2], -np.inf)  # (N, C, H, W) -> (N, C, H+2PH, W+2PW)
        y = idx = None
        for k, (_, _, s) in enumerate(_window_slices(x.shape, *self.args)):
            v = xpad[s]  # 窓の (i, j) の位置の値 (N, C, OH, OW)
            if y is None:
                y, idx = v.copy(), xp.zeros(v.shape, dtype=np.int16)
            else:
                better = v > y  # 真に大きいときだけ更新する（同点なら先の位置のまま）
                xp.maximum(y, v, out=y)  # y と idx はここで作った配列なので、その場で書き換える
                idx += better * (idx.dtype.type(k) - idx)  # better なら k に、そうでなければそのまま（where より速い）
        self.indexes = idx  # (N, C, OH, OW): 窓の中の最大値の位置 k = i*KW + j
        return y

    def backward(self, gy):
        return _MaxPoolingGrad(self.args, self.inputs[0].shape, self.indexes)(gy)


class _MaxPoolingGrad(Function):
    """最大プーリングの逆伝播: ``gy`` を窓の最大値の位置に足し戻します（gy について線形）。"""

    def __init__(self, args, x_shape, indexes):
        self.args, self.x_shape, self.indexes = args, tuple(x_shape), indexes

    def forward(self, gy):
        xp = cuda.get_array_module(gy)
        N, C, H, W = self.x_shape
        ph, pw = self.args[2]
        img = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)  # パディングを含めた画像
        (kh, kw), (sh, sw), _ = self.args
        overlap = sh < kh or sw < kw  # 窓が重なるなら、同じ画素に何回も足す
        kernels = parallel_kernels(gy) if self.args == ((2, 2), (2, 2), (0, 0)) else None
        if kernels is not None:  # 2×2 は並列のカーネルで（奇数の端は 0 のまま）
            kernels.max_pooling_2x2_grad_kernel(gy, self.indexes, img)
            return img
        for k, (_, _, s) in enumerate(_window_slices(self.x_shape, *self.args)):
            if overlap:
                img[s] += gy * (self.indexes == k)  # 最大値が (i, j) にあった窓の gy だけ（bool を掛ける）
            else:  # 重ならなければ、どの画素も 1 回しか書かないので、掛け算の結果をその場所へ直接書く
                xp.multiply(gy, self.indexes == k, out=img[s])
        return img[:, :, ph:ph + H, pw:pw + W]  # パディングを落とす -> (N, C, H, W)

    def backward(self, ggx):
        return _MaxPoolingPick(self.args, self.x_shape, self.indexes)(ggx)


class _MaxPoolingPick(Function):
    """窓ごとに、覚えておいた位置 ``indexes`` の値を取り出します（``_MaxPoolingGrad`` の転置。2 階微分に使います）。"""

    def __init__(self, args, x_shape, indexes):
        self.args, self.x_shape, self.indexes = args, tuple(x_shape), indexes

    def forward(self, x):
        xp = cuda.get_array_module(x)
        xpad = _pad(x, self.args[2])  # (N, C, H, W) -> (N, C, H+2PH, W+2PW)
        y = xp.zeros(self.indexes.shape, dtype=x.dtype)  # (N, C, OH, OW)
        for k, (_, _, s) in enumerate(_window_slices(self.x_shape, *self.args)):
            y = xp.where(self.indexes == k, xpad[s], y)
        return y

    def backward(self, gy):
        return _MaxPoolingGrad(self.args, self.x_shape, self.indexes)(gy)


class AveragePooling(Function):
    """平均プーリング: 窓ごとの平均を取ります。パディングの 0 も数に入れます（PyTorch の既定と同じ）。

    最大プーリングと同じく、窓の中の位置 (i, j) ごとのスライスを足し合わせ、窓の大きさ KH*KW で割ります。

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW)
    """

    def __init__(self, kernel_size, stride=None, pad=0):
        self.args = _pool_args(kernel_size, stride, pad)

    def forward(self, x):
        (kh, kw), _, pad = self.args
        xpad = _pad(x, pad)  # (N, C, H, W) -> (N, C, H+2PH, W+2PW)
        y = None
        for _, _, s in _window_slices(x.shape, *self.args):
            y = xpad[s].copy() if y is None else y + xpad[s]  # (N, C, OH, OW)
        y /= x.dtype.type(kh * kw)
        return y

    def backward(self, gy):
        return _AveragePoolingGrad(self.args, self.inputs[0].shape)(gy)


class _AveragePoolingGrad(Function):
    """平均プーリングの逆伝播: ``gy / (KH*KW)`` を窓のすべての位置に足し戻します。"""

    def __init__(self, args, x_shape):
        self.args, self.x_shape = args, tuple(x_shape)

    def forward(self, gy):
        xp = cuda.get_array_module(gy)
        N, C, H, W = self.x_shape
        (kh, kw), _, (ph, pw) = self.args
        g = gy / gy.dtype.type(kh * kw)  # (N, C, OH, OW)
        img = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
        for _, _, s in _window_slices(self.x_shape, *self.args):
            img[s] += g
        return img[:, :, ph:ph + H, pw:pw + W]  # -> (N, C, H, W)

    def backward(self, ggx):
        return AveragePooling(*self.args)(ggx)  # 逆伝播は gy について線形で、その転置は平均プーリング


def max_pooling(x, kernel_size, stride=None, pad=0):
    """最大プーリング（PyTorch の ``F.max_pool2d`` と同じ）。

    Args:
        x: shape (N, C, H, W) の入力。
        kernel_size: 窓の大きさ（int か (KH, KW)）。
        stride: ストライド（int か組。省くと ``kernel_size``）。
        pad: パディング（int か組。``-inf`` を詰めます）。

    Returns:
        Variable: shape (N, C, OH, OW) の出力。
    """
    return MaxPooling(kernel_size, stride, pad)(x)


def max_pooling_simple(x, kernel_size, stride=None, pad=0):
    """``max_pooling`` の素朴な版: 微分できる ``im2col`` で窓を並べ、``max`` を取ります。"""
    kernel_size, stride, pad = _pool_args(kernel_size, stride, pad)
    col = Im2col(kernel_size, stride, pad, to_matrix=False, pad_value=-np.inf)(x)  # (N, C, OH, OW, KH, KW)
    col = reshape(col, col.shape[:4] + (-1,))  # -> (N, C, OH, OW, KH*KW)
    return max(col, axis=-1)  # -> (N, C, OH, OW)


def average_pooling(x, kernel_size, stride=None, pad=0):
    """平均プーリング（PyTorch の ``F.avg_pool2d`` と同じ。引数は ``max_pooling`` と同じで、パディングは 0）。"""
    return AveragePooling(kernel_size, stride, pad)(x)


def average_pooling_simple(x, kernel_size, stride=None, pad=0):
    """``average_pooling`` の素朴な版: 微分できる ``im2col`` で窓を並べ、``mean`` を取ります。"""
    kernel_size, stride, pad = _pool_args(kernel_size, stride, pad)
    col = Im2col(kernel_size, stride, pad, to_matrix=False)(x)  # (N, C, OH, OW, KH, KW)
    return mean(col, axis=(4, 5))  # -> (N, C, OH, OW)
