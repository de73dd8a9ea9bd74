"""転置畳み込みの層 ``Deconv2d``（第16章）。"""
import numpy as np

import mini_dl.functions as F
from mini_dl import initializers
from mini_dl.layers.conv import _ConvLayer


class Deconv2d(_ConvLayer):
    r"""転置畳み込みの層 :math:`y = \mathrm{deconv2d}(x, W) + b`。画像を縦横 ``stride`` 倍ほどに大きくします。

    重み :math:`W` は ``(C, OC, KH, KW)`` の形で持ちます（``Conv2d`` の ``(OC, C, KH, KW)`` と最初の 2 軸が逆で、
    PyTorch の ``nn.ConvTranspose2d`` の ``weight`` と同じ並びです）。``in_channels`` を省くと、最初に入力が
    来たときに、その shape から入力のチャンネル数 :math:`C` を決め、入力と同じ装置（CPU か GPU）の上に作ります。

    PyTorch の ``nn.ConvTranspose2d(in_channels, out_channels, kernel_size)`` とは引数の順番が違い、
    最初の引数は出力のチャンネル数です。3 つ目からはキーワード専用です。

    Args:
        out_channels (int): 出力のチャンネル数 :math:`OC`。
        kernel_size: カーネルの大きさ（int か (KH, KW)）。
        stride: ストライド（int か (SH, SW)）。
        pad: パディング（int か (PH, PW)）。
        outsize: 出力の (OH, OW)（省略可。``F.deconv2d`` の ``outsize``）。
        nobias (bool): ``True`` ならバイアスを使いません。
        in_channels (int): 入力のチャンネル数 :math:`C`（省略可）。
        dtype: パラメータの dtype（既定は float32）。
        initializer: ``(shape, rng, dtype)`` から初期値の配列を作る関数。
        seed: 初期値の乱数の種（``None`` なら毎回ちがう値）。

    Shape:
        x: (N, C, H, W) -> y: (N, OC, OH, OW)、W: (C, OC, KH, KW)、b: (OC,)
    """

    def __init__(self, out_channels, kernel_size, *, stride=1, pad=0, outsize=None, nobias=False,
                 in_channels=None, dtype=np.float32, initializer=initializers.lecun_normal, seed=None):
        super().__init__(out_channels, kernel_size, stride, pad, nobias, in_channels, dtype, initializer, seed)
        self.outsize = outsize

    def _weight_shape(self):
        return (self.in_channels, self.out_channels) + self.kernel_size  # (C, OC, KH, KW)

    def forward(self, x):
        self._prepare(x)
        return F.deconv2d(x, self.W, self.b, stride=self.stride, pad=self.pad, outsize=self.outsize)
