r"""畳み込みとプーリング（第15章）: im2col・col2im、``conv2d``、``max_pooling``、``average_pooling``。

画像は (N, C, H, W)（バッチ・チャンネル・高さ・幅）、畳み込みの重みは (OC, C, KH, KW) です。
窓を並べた「列」（col）は 2 つの形で使います。

* ``to_matrix=False``: (N, C, OH, OW, KH, KW)。出力の位置 (OH, OW) ごとに、窓の中身 (KH, KW) を並べたもの。
* ``to_matrix=True``: (N*OH*OW, C*KH*KW)。1 行が出力の 1 か所ぶんの窓で、重みとの行列積 1 回で畳み込めます。

出力の大きさは :math:`O = \lfloor (H + 2P - K) / S \rfloor + 1` です（``get_conv_outsize``）。
"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Function, Variable
from mini_dl.functions.tensor import matmul, max, mean, reshape, sum, transpose


# --- 道具: 大きさの計算と im2col・col2im（配列の計算） -------------------------------------------

def pair(x):
    """int ならそれを 2 つ並べたタプルに、長さ 2 の組ならタプルにして返します（``stride=2`` と ``stride=(2, 1)``）。

    Raises:
        ValueError: int でも長さ 2 の組でもないとき。
    """
    if isinstance(x, (int, np.integer)):
        return int(x), int(x)
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return int(x[0]), int(x[1])
    raise ValueError(f"int か長さ 2 の組を渡してください（受け取った値: {x!r}）")


def get_conv_outsize(input_size, kernel_size, stride, pad):
    r"""畳み込み・プーリングの出力の大きさ :math:`O = \lfloor (H + 2P - K) / S \rfloor + 1` を返します。"""
    return (input_size + 2 * pad - kernel_size) // stride + 1


def get_deconv_outsize(size, k, s, p):
    r"""逆畳み込み（転置畳み込み）の出力の大きさ :math:`H = S (O - 1) + K - 2P` を返します（``get_conv_outsize`` の逆）。"""
    return s * (size - 1) + k - 2 * p


def _outsize(x_shape, kh, kw, sh, sw, ph, pw):
    """(OH, OW) を返します。窓が 1 つも入らないときは、受け取った大きさを挙げて知らせます。"""
    oh = get_conv_outsize(x_shape[2], kh, sh, ph)
    ow = get_conv_outsize(x_shape[3], kw, sw, pw)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"出力の大きさが 0 以下です: 入力 (H, W)={tuple(x_shape[2:])}、カーネル ({kh}, {kw})、"
                         f"ストライド ({sh}, {sw})、パディング ({ph}, {pw})。カーネルは H + 2P 以下にしてください")
    return oh, ow


def _window_slices(x_shape, kernel_size, stride, pad):
    """窓の中の位置 (i, j) ごとに、パディング後の画像から切り出すスライス (i, j, (:, :, 縦, 横)) を順に返します。

    スライス 1 つで、すべての窓の (i, j) の位置の値がまとめて取れます（shape (N, C, OH, OW)）。
    """
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(pad)
    oh, ow = _outsize(x_shape, kh, kw, sh, sw, ph, pw)
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


def _pad(x, pad, value=0):
    """(N, C, H, W) の上下左右に ``value`` を詰めます -> (N, C, H+2PH, W+2PW)。"""
    ph, pw = pair(pad)
    if not (ph or pw):
        return x
    xp = cuda.get_array_module(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=x.dtype.type(value))


def im2col_array(x, kernel_size, stride, pad, to_matrix=True, pad_value=0):
    r"""画像 ``x`` から、畳み込みの窓をすべて切り出して並べます（im2col、配列の計算）。

    NumPy では ``sliding_window_view`` で窓のビューを作り（コピーなし）、並べ替えで 1 回だけコピーします。
    GPU（CuPy）では、窓の中の位置 (i, j) ごと（KH×KW 回）にストライド付きのスライスを取って積み重ねます。
    どちらも画素についての Python のループはありません。

    ``to_matrix=True`` の行列は、記憶の上では (C*KH*KW, N*OH*OW) の順（1 行が窓の中の 1 か所 (c, i, j) の値を
    全出力ぶん並べたもの）に作り、その転置のビューを返します。行の内側に画像の横方向が連続して並ぶので、
    コピーが速く、行列積はこの並びのまま BLAS に渡せます（BLAS は転置された行列をそのまま扱えます）。

    Args:
        x: shape (N, C, H, W) の配列。
        kernel_size: 窓の大きさ（int か (KH, KW)）。
        stride: ストライド（int か (SH, SW)）。
        pad: パディング（int か (PH, PW)）。上下左右に ``pad_value`` を詰めます。
        to_matrix (bool): ``True`` なら (N*OH*OW, C*KH*KW) の行列に、``False`` なら (N, C, OH, OW, KH, KW) にします。
        pad_value: パディングに詰める値（最大プーリングでは ``-inf``）。

    Returns:
        ndarray: 窓を並べた配列（``x`` と同じ dtype）。

    Shape:
        x: (N, C, H, W) -> (N*OH*OW, C*KH*KW)（``to_matrix=False`` なら (N, C, OH, OW, KH, KW)）
    """
    xp = cuda.get_array_module(x)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(pad)
    oh, ow = _outsize(x.shape, kh, kw, sh, sw, ph, pw)
    xpad = _pad(x, pad, pad_value)  # (N, C, H, W) -> (N, C, H+2PH, W+2PW)
    if xp is np:
        win = np.lib.stride_tricks.sliding_window_view(xpad, (kh, kw), axis=(2, 3))  # -> (N, C, H', W', KH, KW) のビュー
        win = win[:, :, :sh * (oh - 1) + 1:sh, :sw * (ow - 1) + 1:sw]  # ストライドで間引く -> (N, C, OH, OW, KH, KW)
        if not to_matrix:
            return win.copy()  # ビューのままだと x と記憶を共有するのでコピーする
        # (N, C, OH, OW, KH, KW) -> (C, KH, KW, N, OH, OW) -> (C*KH*KW, N*OH*OW)（ここで 1 回だけコピー）
        return win.transpose(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, N * oh * ow).T  # -> (N*OH*OW, C*KH*KW) のビュー
    slices = [xpad[s] for _, _, s in _window_slices(x.shape, kernel_size, stride, pad)]  # KH*KW 個の (N, C, OH, OW)
    if not to_matrix:
        return xp.stack(slices, axis=-1).reshape(N, C, oh, ow, kh, kw)  # (N, C, OH, OW, KH*KW) -> (..., KH, KW)
    col = xp.stack([s.transpose(1, 0, 2, 3) for s in slices], axis=1)  # 各 (C, N, OH, OW) -> (C, KH*KW, N, OH, OW)
    return col.reshape(C * kh * kw, N * oh * ow).T  # -> (C*KH*KW, N*OH*OW) -> (N*OH*OW, C*KH*KW) のビュー


def col2im_array(col, x_shape, kernel_size, stride, pad, to_matrix=True):
    r"""``im2col_array`` の逆伝播: 窓ごとの値を、元の画像の位置に足し戻します（col2im、配列の計算）。

    窓は重なるので、同じ画素に何回も足します。窓の中の位置 (i, j) ごと（KH×KW 回）に、
    ストライド付きのスライスへまとめて足します（画素についてのループはありません）。

    Args:
        col: (N*OH*OW, C*KH*KW)（``to_matrix=True``）か (N, C, OH, OW, KH, KW) の配列。
        x_shape (tuple): 元の画像の shape (N, C, H, W)。
        kernel_size, stride, pad: ``im2col_array`` と同じ。
        to_matrix (bool): ``col`` の形（``im2col_array`` と同じ意味）。

    Returns:
        ndarray: shape ``x_shape`` の配列（``col`` と同じ dtype）。
    """
    xp = cuda.get_array_module(col)
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(pad)
    oh, ow = _outsize(x_shape, kh, kw, sh, sw, ph, pw)
    if to_matrix:
        # 行列の記憶の並び (C, KH, KW, N, OH, OW) に合わせて、画像も (C, N, H, W) の並びで作る（足し算が連続した読み書きになる）
        col = col.T.reshape(C, kh, kw, N, oh, ow)  # (N*OH*OW, C*KH*KW) -> (C*KH*KW, N*OH*OW) -> (C, KH, KW, N, OH, OW)
        img = xp.zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=col.dtype)  # パディングを含めた画像（C と N を入れ替えた並び）
        for i, j, s in _window_slices(x_shape, kernel_size, stride, pad):
            img[s] += col[:, i, j]  # (C, N, OH, OW) をストライド付きのスライスに足す
        return img[:, :, ph:ph + H, pw:pw + W].transpose(1, 0, 2, 3)  # パディングを落とす -> (C, N, H, W) -> (N, C, H, W)
    img = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=col.dtype)  # パディングを含めた画像
    for i, j, s in _window_slices(x_shape, kernel_size, stride, pad):
        img[s] += col[:, :, :, :, i, j]  # (N, C, OH, OW) をストライド付きのスライスに足す
    return img[:, :, ph:ph + H, pw:pw + W]  # パディングを落とす -> (N, C, H, W)


# --- im2col と col2im の関数（微分できる版） -----------------------------------------------------

class Im2col(Function):
    """im2col を微分できる関数にしたものです。逆伝播は col2im（``Col2im``）で、その逆伝播はまた im2col です。"""

    def __init__(self, kernel_size, stride, pad, to_matrix=True, pad_value=0):
        self.args = kernel_size, stride, pad
        self.to_matrix = to_matrix
        self.pad_value = pad_value

    def forward(self, x):
        self.x_shape = x.shape
        return im2col_array(x, *self.args, to_matrix=self.to_matrix, pad_value=self.pad_value)

    def backward(self, gcol):
        return Col2im(self.x_shape, *self.args, to_matrix=self.to_matrix)(gcol)


class Col2im(Function):
    """col2im を微分できる関数にしたものです（``Im2col`` の逆伝播。逆伝播は im2col）。"""

    def __init__(self, x_shape, kernel_size, stride, pad, to_matrix=True):
        self.x_shape = x_shape
        self.args = kernel_size, stride, pad
        self.to_matrix = to_matrix

    def forward(self, col):
        return col2im_array(col, self.x_shape, *self.args, to_matrix=self.to_matrix)

    def backward(self, gx):
        return Im2col(*self.args, to_matrix=self.to_matrix)(gx)


def im2col(x, kernel_size, stride=1, pad=0, to_matrix=True):
    """画像 ``x`` (N, C, H, W) の窓を並べます（微分できる im2col）。形は ``im2col_array`` と同じです。"""
    return Im2col(kernel_size, stride, pad, to_matrix)(x)


# --- 畳み込み ------------------------------------------------------------------------------------

def _check_conv(x, W, b):
    if W.ndim != 4 or x.ndim != 4 or x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d の shape が合いません: x {tuple(x.shape)} と W {tuple(W.shape)}"
                         f"（x は (N, C, H, W)、W は (OC, C, KH, KW) で、C をそろえます）")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"conv2d のバイアスの shape が合いません: b {tuple(b.shape)}（(OC,) = ({W.shape[0]},) にします）")


class Conv2d(Function):
    r"""2 次元の畳み込み :math:`y_{n,o} = b_o + \sum_{c,i,j} W_{o,c,i,j}\, x_{n,c,\,S h + i,\,S w + j}` を 1 つの関数で。

    im2col で窓を (N*OH*OW, C*KH*KW) の行列に並べ、重み (OC, C*KH*KW) との行列積 1 回で計算します。
    行列積は :math:`W \cdot col^\top`（(OC, N*OH*OW)）の向きに計算し、その並べ替えのビューを (N, OC, OH, OW) として返します。
    順伝播で作った行列 ``col`` は、重みの勾配のために逆伝播まで取っておきます。

    Args:
        stride: ストライド（int か (SH, SW)）。
        pad: パディング（int か (PH, PW)）。
        needs_gx (bool): ``False`` なら、入力 :math:`x` の勾配を計算しません（:math:`x` がデータのとき）。

    Shape:
        x: (N, C, H, W)、W: (OC, C, KH, KW)、b: (OC,) -> y: (N, OC, OH, OW)
    """

    def __init__(self, stride=1, pad=0, needs_gx=True):
        self.stride, self.pad = pair(stride), pair(pad)
        self.needs_gx = needs_gx

    def forward(self, x, W, b=None):
        OC, C, KH, KW = W.shape
        N = x.shape[0]
        col = im2col_array(x, (KH, KW), self.stride, self.pad)  # (N*OH*OW, C*KH*KW)
        oh, ow = _outsize(x.shape, KH, KW, *self.stride, *self.pad)
        y = W.reshape(OC, -1) @ col.T  # (OC, C*KH*KW) @ (C*KH*KW, N*OH*OW) -> (OC, N*OH*OW)
        if b is not None:
            y += b[:, None]  # (OC,) -> (OC, 1)
        self.col = col
        return y.reshape(OC, N, oh, ow).transpose(1, 0, 2, 3)  # -> (OC, N, OH, OW) -> (N, OC, OH, OW)（ビュー）

    def backward(self, gy):
        x, W = self.inputs[:2]
        gx = _Conv2dGradX(x.shape, self.stride, self.pad)(gy, W) if self.needs_gx else None
        gW = _Conv2dGradW(W.shape, self.stride, self.pad, self.col)(x, gy)
        if len(self.inputs) == 2:
            return gx, gW
        return gx, gW, sum(gy, axis=(0, 2, 3))  # (N, OC, OH, OW) -> (OC,)


class _Conv2dGradX(Function):
    """畳み込みの入力の勾配 ``gx = col2im(gy W)``（逆畳み込みと同じ計算）。入力は (gy, W) です。"""

    def __init__(self, x_shape, stride, pad):
        self.x_shape, self.stride, self.pad = tuple(x_shape), stride, pad

    def forward(self, gy, W):
        OC, C, KH, KW = W.shape
        gyT = gy.transpose(1, 0, 2, 3).reshape(OC, -1)  # (N, OC, OH, OW) -> (OC, N, OH, OW) -> (OC, N*OH*OW)
        gcolT = W.reshape(OC, -1).T @ gyT  # (C*KH*KW, OC) @ (OC, N*OH*OW) -> (C*KH*KW, N*OH*OW)
        return col2im_array(gcolT.T, self.x_shape, (KH, KW), self.stride, self.pad)  # -> (N, C, H, W)

    def backward(self, ggx):
        gy, W = self.inputs
        g_gy = conv2d(ggx, W, None, self.stride, self.pad)  # gx は gy について線形: その転置は畳み込み
        g_W = _Conv2dGradW(W.shape, self.stride, self.pad)(ggx, gy)
        return g_gy, g_W


class _Conv2dGradW(Function):
    """畳み込みの重みの勾配 ``gW = gy^T im2col(x)``。入力は (x, gy)。``col`` を渡せば im2col を省きます。"""

    def __init__(self, W_shape, stride, pad, col=None):
        self.W_shape, self.stride, self.pad, self.col = tuple(W_shape), stride, pad, col

    def forward(self, x, gy):
        OC, C, KH, KW = self.W_shape
        col = self.col if self.col is not None else im2col_array(x, (KH, KW), self.stride, self.pad)
        self.col = None  # 使い終わった行列を手放す
        gyT = gy.transpose(1, 0, 2, 3).reshape(OC, -1)  # (N, OC, OH, OW) -> (OC, N, OH, OW) -> (OC, N*OH*OW)
        return (gyT @ col).reshape(self.W_shape)  # (OC, N*OH*OW) @ (N*OH*OW, C*KH*KW) -> (OC, C, KH, KW)

    def backward(self, ggW):
        x, gy = self.inputs
        g_x = _Conv2dGradX(x.shape, self.stride, self.pad)(gy, ggW)
        g_gy = conv2d(x, ggW, None, self.stride, self.pad)
        return g_x, g_gy


def conv2d(x, W, b=None, stride=1, pad=0):
    r"""2 次元の畳み込み（im2col と行列積 1 回、PyTorch の ``F.conv2d`` と同じ相互相関）を計算します。

    Args:
        x: shape (N, C, H, W) の入力。
        W: shape (OC, C, KH, KW) の重み。
        b: shape (OC,) のバイアス、または ``None``。
        stride: ストライド（int か (SH, SW)）。
        pad: パディング（int か (PH, PW)、0 を詰めます）。

    Returns:
        Variable: shape (N, OC, OH, OW) の出力。:math:`OH = \lfloor (H + 2P - KH) / S \rfloor + 1`。

    Raises:
        ValueError: shape が合わないとき、出力の大きさが 0 以下になるとき。
    """
    _check_conv(x, W, b)
    f = Conv2d(stride, pad, needs_gx=isinstance(x, Variable))  # x が配列（データ）なら、x の勾配は要らない
    return f(x, W) if b is None else f(x, W, b)


def conv2d_simple(x, W, b=None, stride=1, pad=0):
    """``conv2d`` の素朴な版: 微分できる ``im2col`` と ``matmul`` を組み合わせて計算します。"""
    _check_conv(x, W, b)
    N, OC = x.shape[0], W.shape[0]
    KH, KW = W.shape[2:]
    oh, ow = _outsize(x.shape, KH, KW, *pair(stride), *pair(pad))
    col = im2col(x, (KH, KW), stride, pad)  # (N*OH*OW, C*KH*KW)
    Wm = transpose(reshape(W, (OC, -1)))  # (OC, C, KH, KW) -> (OC, C*KH*KW) -> (C*KH*KW, OC)
    y = matmul(col, Wm)  # -> (N*OH*OW, OC)
    if b is not None:
        y = y + b
    return transpose(reshape(y, (N, oh, ow, OC)), (0, 3, 1, 2))  # -> (N, OH, OW, OC) -> (N, OC, OH, OW)


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
