r"""畳み込み（第15章）: im2col・col2im、``conv2d``（プーリングは ``pooling``）。

画像は (N, C, H, W)（バッチ・チャンネル・高さ・幅）、畳み込みの重みは (OC, C, KH, KW) です。
窓を並べた「列」（col）は 2 つの形で使います。

* ``to_matrix=False``: (N, C, OH, OW, KH, KW)。出力の位置 (OH, OW) ごとに、窓の中身 (KH, KW) を並べたもの。
* ``to_matrix=True``: (N*OH*OW, C*KH*KW)。1 行が出力の 1 か所ぶんの窓で、重みとの行列積 1 回で畳み込めます。

出力の大きさは :math:`O = \lfloor (H + 2P - K) / S \rfloor + 1` です（``get_conv_outsize``）。
"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Function, Variable
from mini_dl.functions.cpu import parallel_kernels, workspace
from mini_dl.functions.tensor import matmul, reshape, sum, transpose


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
    numba があれば、同じコピーを並列のカーネルで複数のコアに分けます（15.9 節、結果は同じ）。
    GPU（CuPy）では、窓の中の位置 (i, j) ごと（KH×KW 回）にストライド付きのスライスを取って積み重ねます。
    どれも画素についての Python のループはありません。NumPy の行列は、作業領域（``workspace``）から受け取ります。

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
    if xp is np and to_matrix:
        col = workspace.take((C * kh * kw, N * oh * ow), x.dtype)  # (C*KH*KW, N*OH*OW)
        kernels = parallel_kernels(x) if pad_value == 0 else None
        if kernels is not None:  # 並列のカーネル（パディングもカーネルの中で）
            kernels.im2col_kernel(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, col)
            return col.T  # -> (N*OH*OW, C*KH*KW) のビュー
    xpad = _pad(x, pad, pad_value)  # (N, C, H, W) -> (N, C, H+2PH, W+2PW)
    if xp is np:
        win = np.lib.stride_tricks.sliding_window_view(xpad, (kh, kw), axis=(2, 3))  # -> (N, C, H', W', KH, KW) のビュー
        win = win[:, :, :sh * (oh - 1) + 1:sh, :sw * (ow - 1) + 1:sw]  # ストライドで間引く -> (N, C, OH, OW, KH, KW)
        if not to_matrix:
            return win.copy()  # ビューのままだと x と記憶を共有するのでコピーする
        # (N, C, OH, OW, KH, KW) -> (C, KH, KW, N, OH, OW) の並びで col へ（ここで 1 回だけコピー）
        col.reshape(C, kh, kw, N, oh, ow)[...] = win.transpose(1, 4, 5, 0, 2, 3)
        return col.T  # -> (N*OH*OW, C*KH*KW) のビュー
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
    kernels = parallel_kernels(col) if to_matrix else None
    if kernels is not None:  # 並列のカーネルで (N, C, H, W) の並びに足し戻す（足す順は下と同じ）
        img = np.zeros(x_shape, dtype=col.dtype)
        kernels.col2im_kernel(np.ascontiguousarray(col.T), kh, kw, sh, sw, ph, pw, img)
        return img
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
    順伝播で作った行列 ``col`` は、重みの勾配のために逆伝播まで取っておき、使い終わったら作業領域（``workspace``）へ返します。

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

    def __del__(self):  # 逆伝播せずに捨てられるとき（no_grad の評価など）も、行列を作業領域へ返す
        if getattr(self, "col", None) is not None:
            workspace.give(self.col)

    def backward(self, gy):
        x, W = self.inputs[:2]
        gx = _Conv2dGradX(x.shape, self.stride, self.pad)(gy, W) if self.needs_gx else None
        col, self.col = self.col, None  # col は 1 回だけ使う（2 回目の逆伝播では im2col からやり直す）
        gW = _Conv2dGradW(W.shape, self.stride, self.pad, col)(x, gy)
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
        xp = cuda.get_array_module(gy)
        gcolT = workspace.take((C * KH * KW, gyT.shape[1]), gy.dtype, xp)  # 作業領域から (C*KH*KW, N*OH*OW)
        xp.matmul(W.reshape(OC, -1).T, gyT, out=gcolT)  # (C*KH*KW, OC) @ (OC, N*OH*OW) -> (C*KH*KW, N*OH*OW)
        gx = col2im_array(gcolT.T, self.x_shape, (KH, KW), self.stride, self.pad)  # -> (N, C, H, W)
        workspace.give(gcolT)  # col2im が読み終わったので返す
        return gx

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
        self.col = None
        gyT = gy.transpose(1, 0, 2, 3).reshape(OC, -1)  # (N, OC, OH, OW) -> (OC, N, OH, OW) -> (OC, N*OH*OW)
        gW = (gyT @ col).reshape(self.W_shape)  # (OC, N*OH*OW) @ (N*OH*OW, C*KH*KW) -> (OC, C, KH, KW)
        workspace.give(col)  # 使い終わった行列を作業領域へ返す
        return gW

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
