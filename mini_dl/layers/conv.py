"""畳み込みの層（第15章）: ``Conv2d``（と、第16章の ``Deconv2d`` と共通の土台 ``_ConvLayer``）。"""
import numpy as np

import mini_dl.functions as F
from mini_dl import initializers
from mini_dl.core import Parameter
from mini_dl.layers.base import Layer


class _ConvLayer(Layer):
    """``Conv2d`` と ``Deconv2d`` の共通の部分: 引数を覚え、重み W を最初の入力から作ります。

    サブクラスは、重みの shape を返す ``_weight_shape`` と、計算をする ``forward`` を書きます。
    ``in_channels`` を省くと、最初の入力の shape から入力のチャンネル数を決め、入力と同じ装置（CPU か GPU）に置きます。
    """

    def __init__(self, out_channels, kernel_size, stride, pad, nobias, in_channels, dtype, initializer, seed):
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size = F.pair(kernel_size)
        self.stride, self.pad = stride, pad
        self.in_channels = in_channels
        self.dtype = dtype
        self.initializer = initializer
        self.rng = np.random.default_rng(seed)
        self.W = Parameter(None, name="W")
        self.b = None if nobias else Parameter(np.zeros(out_channels, dtype=dtype), name="b")
        if in_channels is not None:
            self._init_W()

    def _init_W(self):
        self.W.data = self.initializer(self._weight_shape(), self.rng, self.dtype)

    def _prepare(self, x):
        if self.W.data is None:  # 最初の入力から C を決めて W を作り、入力と同じ装置（CPU か GPU）へ
            self.in_channels = x.shape[1]
            self._init_W()
            self._follow_device(x)


class Conv2d(_ConvLayer):
    r"""2 次元の畳み込み層 :math:`y = W * x + b`（``F.conv2d``）。

    重み :math:`W` (OC, C, KH, KW) は ``initializer`` で初期化します。既定は He の初期値
    （標準偏差 :math:`\sqrt{2 / (C \cdot KH \cdot KW)}`、ReLU 向け）です。``in_channels`` を省くと、
    最初に入力が来たときに、その shape から :math:`C` を決めて初期化します。最初の入力が GPU の上なら、
    パラメータも GPU の上に作ります。

    PyTorch の ``nn.Conv2d(in_channels, out_channels, kernel_size)`` とは違い、最初の引数は出力のチャンネル数で、
    入力のチャンネル数はキーワード ``in_channels`` です（``L.Linear`` と同じ決まり）。

    Args:
        out_channels (int): 出力のチャンネル数 OC。
        kernel_size: カーネルの大きさ（int か (KH, KW)）。
        stride: ストライド（int か組）。
        pad: パディング（int か組）。
        nobias (bool): ``True`` ならバイアスを使いません。
        in_channels (int): 入力のチャンネル数 C（省略可）。
        dtype: パラメータの dtype（既定は float32）。
        initializer: ``(shape, rng, dtype)`` から初期値の配列を作る関数。
        seed: 初期値の乱数の種（``None`` なら毎回ちがう値）。

    Shape:
        x: (N, C, H, W) -> y: (N, OC, OH, OW)、W: (OC, C, KH, KW)、b: (OC,)
    """

    def __init__(self, out_channels, kernel_size, *, stride=1, pad=0, nobias=False, in_channels=None,
                 dtype=np.float32, initializer=initializers.he_normal, seed=None):
        super().__init__(out_channels, kernel_size, stride, pad, nobias, in_channels, dtype, initializer, seed)

    def _weight_shape(self):
        return (self.out_channels, self.in_channels) + self.kernel_size  # (OC, C, KH, KW)

    def forward(self, x):
        self._prepare(x)
        return F.conv2d(x, self.W, self.b, self.stride, self.pad)
