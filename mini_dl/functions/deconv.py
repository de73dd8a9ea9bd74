r"""転置畳み込み（第16章）: ``deconv2d`` と、その素朴な版 ``deconv2d_simple``。

転置畳み込み（transposed convolution、逆畳み込み deconvolution とも呼びます）は、畳み込み ``conv2d`` の
随伴（adjoint）です。畳み込みを行列 :math:`A` を掛ける線形写像 :math:`y = A x` とみなすと、転置畳み込みは
:math:`A^\top` を掛ける写像で、どんな :math:`x, y` でも :math:`\langle A x, y \rangle = \langle x, A^\top y \rangle` が成り立ちます。
入力の 1 画素ごとに「重み全体を、その画素の値倍して、出力の窓に足し込む」計算で、画像を大きくするのに使います。
"""
from mini_dl import cuda
from mini_dl.core import Function, as_variable
from mini_dl.functions.conv import col2im_array, conv2d, get_conv_outsize, get_deconv_outsize, im2col_array, pair
from mini_dl.functions.tensor import concat, get_item, reshape, sum, transpose


class Deconv2d(Function):
    r"""転置畳み込み :math:`y = A^\top x + b`（:math:`A` はストライド・パディングが同じ ``conv2d``）。

    入力の画素 :math:`x_{n,c,i,j}` ごとに、重み :math:`W_{c,:,:,:}` をその値倍して、出力の
    :math:`(i s_h - p_h,\ j s_w - p_w)` から始まる :math:`K_H \times K_W` の窓に足し込みます。

    .. math::

        y_{n,o,\,i s_h + k_h - p_h,\,j s_w + k_w - p_w} \mathrel{+}= \sum_c x_{n,c,i,j}\, W_{c,o,k_h,k_w}

    行列積 1 回で「足し込む量」を全部作り、``col2im_array`` で出力の場所に足し込みます（``conv2d`` の逆伝播の
    :math:`x` の勾配と同じ計算です）。
    逆伝播は、:math:`x` については ``conv2d``（随伴の随伴は元の写像）、:math:`W` については
    ``Deconv2dGradW`` で、どちらも ``Function`` なので何回でも微分できます。

    Args:
        stride: ストライド（int か (SH, SW)）。
        pad: パディング（int か (PH, PW)）。
        outsize: 出力の (OH, OW)。``deconv2d`` が決めて渡します。

    Shape:
        x: (N, C, H, W)、W: (C, OC, KH, KW)、b: (OC,) -> y: (N, OC, OH, OW)
    """

    def __init__(self, stride, pad, outsize):
        self.stride = pair(stride)
        self.pad = pair(pad)
        self.outsize = outsize

    def forward(self, x, W, b=None):
        N, C, H, W_ = x.shape
        _, OC, KH, KW = W.shape
        OH, OW = self.outsize
        Wm = W.transpose(2, 3, 1, 0).reshape(KH * KW * OC, C)  # (C, OC, KH, KW) -> (KH, KW, OC, C) -> (KH*KW*OC, C)
        x2 = x.transpose(1, 0, 2, 3).reshape(C, N * H * W_)  # (N, C, H, W) -> (C, N, H, W) -> (C, N*H*W)
        col = (Wm @ x2).reshape(KH, KW, OC, N, H, W_)  # (KH*KW*OC, N*H*W) -> (KH, KW, OC, N, H, W)
        # col2im_array が窓の中の位置 (i, j) ごとに読む col[..., i, j] が、メモリの上でひと続きになる並べ方
        col = col.transpose(3, 2, 4, 5, 0, 1)  # -> (N, OC, H, W, KH, KW)（ビュー）
        y = col2im_array(col, (N, OC, OH, OW), (KH, KW), self.stride, self.pad, to_matrix=False)
        if b is not None:
            y += b.reshape(1, OC, 1, 1)  # (OC,) -> (1, OC, 1, 1)
        return y

    def backward(self, gy):
        x, W = self.inputs[:2]
        gx = conv2d(gy, W, stride=self.stride, pad=self.pad)  # (N, OC, OH, OW) -> (N, C, H, W)
        gW = Deconv2dGradW(W.shape[2:], self.stride, self.pad)(gy, x)
        if len(self.inputs) == 2:
            return gx, gW
        gb = sum(gy, axis=(0, 2, 3))  # (N, OC, OH, OW) -> (OC,)
        return gx, gW, gb


class Deconv2dGradW(Function):
    r"""``Deconv2d`` の重みの勾配 :math:`G_{c,o,k_h,k_w} = \sum_{n,i,j} x_{n,c,i,j}\, g_{n,o,\,i s_h + k_h - p_h,\,j s_w + k_w - p_w}`。

    :math:`g`（出力側の勾配）を ``im2col_array`` で窓ごとに並べ、:math:`x` と行列積をとります。
    どちらの入力についても線形なので、逆伝播は :math:`g` について ``deconv2d``、:math:`x` について
    ``conv2d`` です。

    Shape:
        gy: (N, OC, OH, OW)、x: (N, C, H, W) -> gW: (C, OC, KH, KW)
    """

    def __init__(self, kernel_size, stride, pad):
        self.kernel_size = tuple(kernel_size)
        self.stride = stride
        self.pad = pad

    def forward(self, gy, x):
        N, C, H, W = x.shape
        OC = gy.shape[1]
        KH, KW = self.kernel_size
        col = im2col_array(gy, self.kernel_size, self.stride, self.pad, to_matrix=True)  # (N*H*W, OC*KH*KW)
        x2 = x.transpose(1, 0, 2, 3).reshape(C, N * H * W)  # (N, C, H, W) -> (C, N, H, W) -> (C, N*H*W)
        return (x2 @ col).reshape(C, OC, KH, KW)  # (C, N*H*W) @ (N*H*W, OC*KH*KW) -> (C, OC, KH, KW)

    def backward(self, ggW):
        gy, x = self.inputs
        g_gy = deconv2d(x, ggW, stride=self.stride, pad=self.pad, outsize=gy.shape[2:])
        g_x = conv2d(gy, ggW, stride=self.stride, pad=self.pad)
        return g_gy, g_x


def _deconv_outsize(x_shape, W_shape, stride, pad, outsize):
    """``deconv2d`` の引数を確かめ、出力の (OH, OW) を返します（``outsize`` を省けば最小の大きさ）。"""
    if len(x_shape) != 4 or len(W_shape) != 4 or x_shape[1] != W_shape[0]:
        raise ValueError(f"deconv2d の shape が合いません: x {tuple(x_shape)} と W {tuple(W_shape)}"
                         "（x は (N, C, H, W)、W は (C, OC, KH, KW) で、x の C と W の最初の軸を同じにします）")
    sizes = []
    for size, k, s, p, want in zip(x_shape[2:], W_shape[2:], pair(stride), pair(pad),
                                   (None, None) if outsize is None else pair(outsize)):
        smallest = get_deconv_outsize(size, k, s, p)
        out = smallest if want is None else int(want)
        if out < 1 or get_conv_outsize(out, k, s, p) != size:
            raise ValueError(f"deconv2d の出力の大きさ {out} が入力の大きさ {size} に合いません"
                             f"（カーネル {k}・ストライド {s}・パディング {p} なら、{smallest}〜{smallest + s - 1} の"
                             "どれかで、1 以上にします）")
        sizes.append(out)
    return tuple(sizes)


def deconv2d(x, W, b=None, stride=1, pad=0, outsize=None):
    r"""転置畳み込み（``conv2d`` の随伴）を計算します。画像を大きくするのに使います。

    出力の大きさは、省けば :math:`O = s (H - 1) + K - 2p` です。ストライド :math:`s > 1` のときは、
    同じ ``conv2d`` で大きさ :math:`H` に縮む大きさが :math:`O` から :math:`O + s - 1` まで :math:`s` 個あるので、
    ``outsize`` でその中から選べます（PyTorch の ``output_padding`` にあたります）。

    Args:
        x: shape (N, C, H, W) の入力（``Variable`` か配列）。
        W: shape (C, OC, KH, KW) の重み（``conv2d`` と最初の 2 軸が逆で、PyTorch の ``conv_transpose2d`` と同じ）。
        b: shape (OC,) のバイアス、または ``None``。
        stride: ストライド（int か (SH, SW)）。
        pad: パディング（int か (PH, PW)）。出力の縁を ``pad`` だけ切り落とします。
        outsize: 出力の (OH, OW)（int か組、省略可）。

    Returns:
        Variable: shape (N, OC, OH, OW) の出力。

    Shape:
        x: (N, C, H, W)、W: (C, OC, KH, KW)、b: (OC,) -> y: (N, OC, OH, OW)

    Raises:
        ValueError: shape が合わないとき、``outsize`` が入力の大きさに合わないとき。
    """
    size = _deconv_outsize(x.shape, W.shape, stride, pad, outsize)
    if b is not None and tuple(b.shape) != (W.shape[1],):
        raise ValueError(f"deconv2d のバイアスの shape が合いません: b {tuple(b.shape)}（期待は ({W.shape[1]},)）")
    f = Deconv2d(stride, pad, size)
    return f(x, W) if b is None else f(x, W, b)


def _zeros_like_axis(x, axis, n):
    """``x`` と同じ装置・dtype で、軸 ``axis`` の長さだけ ``n`` にした 0 の配列。"""
    xp = cuda.get_array_module(x.data)
    shape = list(x.shape)
    shape[axis] = n
    return xp.zeros(tuple(shape), dtype=x.dtype)


def _dilate_pad(x, axis, s, before, after):
    """軸 ``axis`` の画素の間に 0 を ``s - 1`` 個ずつ入れ、前に ``before``・後ろに ``after`` 個の 0 を足します。

    ``before``・``after`` が負なら、その数だけ切り落とします。どれも微分できる関数の組み合わせです。
    """
    n = x.shape[axis]
    if s > 1:  # (..., n, ...) -> (..., n, s, ...) -> (..., n*s, ...) -> 最後の s-1 個の 0 を落とす
        shape = x.shape[:axis + 1] + (1,) + x.shape[axis + 1:]
        x = reshape(x, shape)
        x = concat([x, _zeros_like_axis(x, axis + 1, s - 1)], axis=axis + 1)
        x = reshape(x, x.shape[:axis] + (n * s,) + x.shape[axis + 2:])
        x = get_item(x, (slice(None),) * axis + (slice(0, (n - 1) * s + 1),))
    parts = [x]
    if before > 0:
        parts.insert(0, _zeros_like_axis(x, axis, before))
    if after > 0:
        parts.append(_zeros_like_axis(x, axis, after))
    if len(parts) > 1:
        x = concat(parts, axis=axis)
    if before < 0 or after < 0:
        stop = x.shape[axis] + min(after, 0)
        x = get_item(x, (slice(None),) * axis + (slice(max(-before, 0), stop),))
    return x


def deconv2d_simple(x, W, b=None, stride=1, pad=0, outsize=None):
    r"""転置畳み込みを、「0 を挟む → 縁に 0 を足す → 上下左右を反転したカーネルで ``conv2d``」で計算します（素朴な版）。

    画素の間に 0 を :math:`s - 1` 個ずつ入れて（ストライドの分だけ広げて）、縁に :math:`K - 1 - p` 個の 0 を足し、
    ``W`` を上下左右に反転して最初の 2 軸を入れ替えたカーネルで、ストライド 1 の ``conv2d`` をかけると、
    ``deconv2d`` と同じ結果になります。0 を掛ける無駄な計算が多いので遅いですが、図に描きやすい形です。

    Args:
        x, W, b, stride, pad, outsize: ``deconv2d`` と同じです。

    Returns:
        Variable: shape (N, OC, OH, OW) の出力。
    """
    x, W = as_variable(x), as_variable(W)
    OH, OW = _deconv_outsize(x.shape, W.shape, stride, pad, outsize)
    (SH, SW), (PH, PW) = pair(stride), pair(pad)
    _, _, H, W_ = x.shape
    _, _, KH, KW = W.shape
    z = _dilate_pad(x, 2, SH, KH - 1 - PH, OH + KH - 1 - (KH - 1 - PH) - ((H - 1) * SH + 1))
    z = _dilate_pad(z, 3, SW, KW - 1 - PW, OW + KW - 1 - (KW - 1 - PW) - ((W_ - 1) * SW + 1))
    flipped = get_item(W, (slice(None), slice(None), slice(None, None, -1), slice(None, None, -1)))
    kernel = transpose(flipped, (1, 0, 2, 3))  # (C, OC, KH, KW) -> (OC, C, KH, KW)
    return conv2d(z, kernel, b, stride=1, pad=0)
