"""再帰の層（第17章）: ``RNN``・``LSTM``・``GRU``。

どの層も 1 回の呼び出しで 1 時刻だけ進め、隠れ状態を自分の中に覚えておきます。系列の始まりでは
``reset_state()`` で状態を消します。重みはゲートの分を横に並べた 1 つの行列にまとめ、1 時刻の
行列積を入力側と隠れ状態側の 2 回で済ませます（ゲートの並びは PyTorch と同じです）。
"""
import numpy as np

import mini_dl.functions as F
from mini_dl.core import Parameter
from mini_dl.layers.base import Layer


class _Recurrent(Layer):
    r"""``RNN``・``LSTM``・``GRU`` に共通の、パラメータの作り方と状態の扱いです。

    パラメータは PyTorch と同じく、一様分布 :math:`U(-1/\sqrt{H}, 1/\sqrt{H})` で初期化します。
    ``in_size`` を省くと、最初の入力の shape から :math:`D` を決め、入力と同じ装置（CPU か GPU）の上に作ります。
    """

    gates = 1  # ゲートの数（W の列は gates * H）

    def __init__(self, hidden_size, *, in_size=None, dtype=np.float32, seed=None):
        super().__init__()
        if not isinstance(hidden_size, (int, np.integer)) or hidden_size < 1:
            raise ValueError(f"hidden_size は 1 以上の整数にします（受け取った値: {hidden_size!r}）")
        self.hidden_size = hidden_size
        self.in_size = in_size
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        for name in self._shapes():
            setattr(self, name, Parameter(None, name=name))
        if in_size is not None:
            self._init_params()
        self.reset_state()

    def _shapes(self):
        """パラメータの名前と shape（この順番で ``params()`` に並びます）。"""
        D, H, G = self.in_size, self.hidden_size, self.gates
        return {"Wx": (D, G * H), "Wh": (H, G * H), "b": (G * H,)}

    def _init_params(self):
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, shape in self._shapes().items():
            getattr(self, name).data = self.rng.uniform(-bound, bound, shape).astype(self.dtype)

    def _check_input(self, x):
        if x.ndim != 2:
            raise ValueError(f"{type(self).__name__} の入力は 1 時刻分の (N, D) にします（受け取った shape: {x.shape}）")
        if self.Wx.data is None:  # 最初の入力から D を決めて、入力と同じ装置の上に作る
            self.in_size = x.shape[1]
            self._init_params()
            self._follow_device(x)
        elif x.shape[1] != self.in_size:
            raise ValueError(f"{type(self).__name__} の入力の大きさ D は {self.in_size} のはずです"
                             f"（受け取った shape: {x.shape}）")

    def reset_state(self):
        """隠れ状態を消します（次の呼び出しが、系列の最初の時刻になります）。"""
        self.h = None


class RNN(_Recurrent):
    r"""素朴な RNN（Elman 型）の層: :math:`h_t = \tanh(x_t W_x + h_{t-1} W_h + b)`。

    呼ぶたびに 1 時刻進め、新しい隠れ状態 :math:`h_t` を返して覚えます。最初の時刻（``reset_state()`` の直後）は
    :math:`h_0 = 0` として :math:`W_h` の項を省きます。PyTorch の ``nn.RNN`` とは違い、系列全体ではなく
    1 時刻ずつ呼びます（PyTorch の ``nn.RNNCell`` に、状態を覚える仕組みを足したものです）。

    Args:
        hidden_size (int): 隠れ状態の大きさ :math:`H`。
        in_size (int): 入力の大きさ :math:`D`（省略可。キーワード専用）。
        dtype: パラメータの dtype（既定は float32）。
        seed: 初期値の乱数の種（``None`` なら毎回ちがう値）。

    Shape:
        x: (N, D) -> h: (N, H)、Wx: (D, H)、Wh: (H, H)、b: (H,)
    """

    def forward(self, x):
        self._check_input(x)
        a = F.linear(x, self.Wx, self.b)
        if self.h is not None:
            a = a + F.matmul(self.h, self.Wh)
        self.h = F.tanh(a)
        return self.h


class LSTM(_Recurrent):
    r"""LSTM（long short-term memory）の層。

    4 つのゲートの前活性 :math:`a = x_t W_x + h_{t-1} W_h + b` を 4 つに分け（並びは PyTorch と同じ i, f, g, o）、

    .. math::
        i = \sigma(a_i),\ f = \sigma(a_f),\ g = \tanh(a_g),\ o = \sigma(a_o), \quad
        c_t = f \odot c_{t-1} + i \odot g, \quad h_t = o \odot \tanh(c_t)

    とします。記憶セル :math:`c_t` は足し算でつながるので、勾配が長い時刻を越えて届きます。
    状態 ``h`` と ``c`` は ``reset_state()`` で消え、最初の時刻は :math:`h_0 = c_0 = 0` です。

    Args:
        hidden_size (int): 隠れ状態の大きさ :math:`H`。
        in_size (int): 入力の大きさ :math:`D`（省略可。キーワード専用）。
        dtype: パラメータの dtype（既定は float32）。
        seed: 初期値の乱数の種（``None`` なら毎回ちがう値）。

    Shape:
        x: (N, D) -> h: (N, H)、Wx: (D, 4H)、Wh: (H, 4H)、b: (4H,)
    """

    gates = 4

    def reset_state(self):
        """隠れ状態 ``h`` と記憶セル ``c`` を消します。"""
        self.h = None
        self.c = None

    def forward(self, x):
        self._check_input(x)
        H = self.hidden_size
        a = F.linear(x, self.Wx, self.b)  # (N, 4H)
        if self.h is not None:
            a = a + F.matmul(self.h, self.Wh)
        i = F.sigmoid(a[:, :H])
        f = F.sigmoid(a[:, H:2 * H])
        g = F.tanh(a[:, 2 * H:3 * H])
        o = F.sigmoid(a[:, 3 * H:])
        self.c = i * g if self.c is None else f * self.c + i * g
        self.h = o * F.tanh(self.c)
        return self.h


class GRU(_Recurrent):
    r"""GRU（gated recurrent unit）の層。式は PyTorch の ``nn.GRU`` と同じです。

    .. math::
        r = \sigma(x W_{xr} + b_{r} + h W_{hr} + b_{hr}),\quad
        z = \sigma(x W_{xz} + b_{z} + h W_{hz} + b_{hz}),

        n = \tanh(x W_{xn} + b_{n} + r \odot (h W_{hn} + b_{hn})),\quad
        h_t = (1 - z) \odot n + z \odot h_{t-1}

    ゲートの並びは r, z, n です。候補 :math:`n` ではリセットゲート :math:`r` を、隠れ状態側の
    行列積のあとに掛けるので、隠れ状態側にも自分のバイアス ``bh`` を持ちます。

    Args:
        hidden_size (int): 隠れ状態の大きさ :math:`H`。
        in_size (int): 入力の大きさ :math:`D`（省略可。キーワード専用）。
        dtype: パラメータの dtype（既定は float32）。
        seed: 初期値の乱数の種（``None`` なら毎回ちがう値）。

    Shape:
        x: (N, D) -> h: (N, H)、Wx: (D, 3H)、Wh: (H, 3H)、b: (3H,)、bh: (3H,)
    """

    gates = 3

    def _shapes(self):
        return {**super()._shapes(), "bh": (3 * self.hidden_size,)}

    def forward(self, x):
        self._check_input(x)
        H = self.hidden_size
        ax = F.linear(x, self.Wx, self.b)  # (N, 3H)
        if self.h is None:  # h_0 = 0 なら、隠れ状態側はバイアスだけ
            ah = F.broadcast_to(self.bh, ax.shape)
        else:
            ah = F.linear(self.h, self.Wh, self.bh)
        r = F.sigmoid(ax[:, :H] + ah[:, :H])
        z = F.sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
        n = F.tanh(ax[:, 2 * H:] + r * ah[:, 2 * H:])
        self.h = (1 - z) * n if self.h is None else (1 - z) * n + z * self.h
        return self.h
