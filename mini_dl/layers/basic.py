"""基本の層（第9章・第11章）: 全結合 ``Linear``、``Dropout``、``BatchNorm``。"""
import numpy as np

import mini_dl.functions as F
from mini_dl import cuda, initializers
from mini_dl.core import Parameter
from mini_dl.layers.base import Layer


class Linear(Layer):
    r"""全結合層 :math:`y = x W + b`。

    重み :math:`W` は ``initializer`` で初期化します（既定は平均 0・標準偏差 :math:`\sqrt{1/D}` の
    正規分布。ReLU には ``initializers.he_normal`` が向いています）。``in_size`` を省くと、
    最初に入力が来たときに、その shape から入力の大きさ :math:`D` を決めて初期化します。

    PyTorch の ``nn.Linear(in_features, out_features)`` とは引数の順番が違い、最初の引数は出力の大きさです。
    2 つ目からはキーワード専用なので、PyTorch の癖で ``L.Linear(784, 100)`` と書くと ``TypeError`` になります
    （``L.Linear(100, in_size=784)`` と書きます）。重みは ``(D, H)``、つまり ``(入力, 出力)`` の形で持ち、
    :math:`xW` と掛けます（PyTorch の ``weight`` は ``(出力, 入力)`` で :math:`xW^\top`）。

    Args:
        out_size (int): 出力の大きさ :math:`H`。
        nobias (bool): ``True`` ならバイアスを使いません。
        dtype: パラメータの dtype（既定は float32）。
        in_size (int): 入力の大きさ :math:`D`（省略可）。
        initializer: ``(shape, rng, dtype)`` から初期値の配列を作る関数。
        seed: 初期値の乱数の種（``None`` なら毎回ちがう値）。

    Shape:
        x: (..., D) -> y: (..., H)（前の軸はいくつでも）、W: (D, H)、b: (H,)
    """

    def __init__(self, out_size, *, nobias=False, dtype=np.float32, in_size=None,
                 initializer=initializers.lecun_normal, seed=None):
        super().__init__()
        self.in_size = in_size
        self.out_size = out_size
        self.dtype = dtype
        self.initializer = initializer
        self.rng = np.random.default_rng(seed)
        self.W = Parameter(None, name="W")
        self.b = None if nobias else Parameter(np.zeros(out_size, dtype=dtype), name="b")
        if in_size is not None:
            self._init_W()

    def _init_W(self):
        self.W.data = self.initializer((self.in_size, self.out_size), self.rng, self.dtype)  # (D, H)

    def forward(self, x):
        if self.W.data is None:  # 最初の入力から D を決めて W を作り、入力と同じ装置（CPU か GPU）へ
            self.in_size = x.shape[-1]
            self._init_W()
            self._follow_device(x)
        return F.linear(x, self.W, self.b)


class Dropout(Layer):
    """ドロップアウト層: 学習中（``training``）だけ、割合 ``ratio`` の要素を 0 にします。

    層ごとに ``seed`` から作った乱数生成器を 1 つ持ち、呼ぶたびにそこから新しいマスクを引きます
    （同じ ``seed`` で作った層は、同じ順番で同じマスクを出します）。マスクは入力と同じ装置
    （CPU か GPU）の上で作ります（``F.dropout``）。推論中（``eval()``）は入力をそのまま返します。

    Args:
        ratio (float): 0 にする割合（既定は PyTorch の ``nn.Dropout`` と同じ 0.5）。
        seed: マスクの乱数の種（``None`` なら毎回ちがう）。キーワード専用です。
    """

    def __init__(self, ratio=0.5, *, seed=None):
        super().__init__()
        self.ratio = ratio
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        return F.dropout(x, self.ratio, training=self.training, rng=self.rng)


class BatchNorm(Layer):
    r"""バッチ正規化層。チャンネル数 C は最初の入力の shape から決めます。

    学習中（``training``）はミニバッチの統計で正規化して移動平均を更新し、推論中は移動平均を使います。
    移動平均 ``running_mean``・``running_var`` は、重みと一緒に保存されます。

    ``momentum`` は DeZero・Chainer と同じく「古い値を残す割合」で、
    :math:`\text{running} \leftarrow m \cdot \text{running} + (1 - m) \cdot \text{batch}` です。
    PyTorch の ``momentum`` は「新しい値の割合」なので、mini_dl の ``momentum=0.9`` が PyTorch の
    ``momentum=0.1``（既定値）にあたります。引数はすべてキーワード専用で、PyTorch の癖で
    ``L.BatchNorm(100)`` とチャンネル数を渡すと ``TypeError`` になります（C は入力から決まります）。

    Shape:
        x: (N, C) または (N, C, H, W) -> y: x と同じ
    """

    def __init__(self, *, momentum=0.9, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.dtype = dtype
        self.gamma = Parameter(None, name="gamma")
        self.beta = Parameter(None, name="beta")
        self.register_buffer("running_mean", None)
        self.register_buffer("running_var", None)

    def forward(self, x):
        if self.gamma.data is None:
            xp = cuda.get_array_module(x)
            C = x.shape[1]
            self.gamma.data = xp.ones(C, dtype=self.dtype)
            self.beta.data = xp.zeros(C, dtype=self.dtype)
            self.register_buffer("running_mean", xp.zeros(C, dtype=self.dtype))
            self.register_buffer("running_var", xp.ones(C, dtype=self.dtype))
        return F.batch_norm(x, self.gamma, self.beta, self.running_mean, self.running_var,
                            training=self.training, momentum=self.momentum, eps=self.eps)
