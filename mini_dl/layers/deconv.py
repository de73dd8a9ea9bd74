"""転置畳み込みの層 ``Deconv2d``（第16章）。"""
import numpy as np

import mini_dl.functions as F
from mini_dl import initializers
from mini_dl.core import Parameter
from mini_dl.functions.conv import pair
from mini_dl.layers.base import Layer


class Deconv2d(Layer):
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
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size)
        self.stride = stride
        self.pad = pad
        self.outsize = outsize
        self.in_channels = in_channels
        self.dtype = dtype
        self.initializer = initializer
        self.rng = np.random.default_rng(seed)
        self.W = Parameter(None, name="W")
        self.b = None if nobias else Parameter(np.zeros(out_channels, dtype=dtype), name="b")
        if in_channels is not None:
            self._init_W()

    def _init_W(self):
        shape = (self.in_channels, self.out_channels) + self.kernel_size  # (C, OC, KH, KW)
        self.W.data = self.initializer(shape, self.rng, self.dtype)

    def forward(self, x):
        if self.W.data is None:  # 最初の入力から C を決めて W を作り、入力と同じ装置（CPU か GPU）へ
            self.in_channels = x.shape[1]
            self._init_W()
            self._follow_device(x)
        return F.deconv2d(x, self.W, self.b, stride=self.stride, pad=self.pad, outsize=self.outsize)
