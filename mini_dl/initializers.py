r"""重みの初期値（``mini_dl.initializers``）。

どれも ``(shape, rng, dtype)`` を受け取り、その shape の配列を返します。標準偏差は、1 つの出力に
つながる入力の数 :math:`D_{in}`（fan_in）と、1 つの入力がつながる出力の数 :math:`D_{out}`（fan_out）で決めます。

* 2 次元の ``(in, out)``（``Linear`` の重み ``W``）: :math:`D_{in}` = ``in``、:math:`D_{out}` = ``out``。
* 3 次元以上の ``(OC, C, KH, KW)``（``F.conv2d`` の重み）: 出力 1 つは入力の ``C`` チャンネルの
  ``KH × KW`` の窓から作られるので :math:`D_{in} = C \cdot KH \cdot KW`、入力 1 つは ``OC`` チャンネルの
  ``KH × KW`` 個の出力に使われるので :math:`D_{out} = OC \cdot KH \cdot KW` です（PyTorch の
  ``torch.nn.init`` と同じ規則です。``F.deconv2d`` の重み ``(C, OC, KH, KW)`` にも PyTorch と同じく
  この規則を当てはめます）。
"""
import math

import numpy as np


def _fans(shape):
    """重みの shape から (fan_in, fan_out) を返します。

    ``(in, out)`` なら ``(in, out)``、``(OC, C, KH, KW)`` なら ``(C*KH*KW, OC*KH*KW)`` です。

    Raises:
        ValueError: ``shape`` が 2 次元より少ないとき（バイアスのような 1 次元の配列は 0 で初期化します）。
    """
    if len(shape) < 2:
        raise ValueError(f"初期値の shape は 2 次元以上にしてください（受け取った shape: {tuple(shape)}）。"
                         f"Linear の重みは (in, out)、畳み込みの重みは (OC, C, KH, KW) です")
    if len(shape) == 2:
        return shape[0], shape[1]  # Linear の W: (in, out)
    receptive = math.prod(shape[2:])  # 窓の大きさ KH*KW
    return shape[1] * receptive, shape[0] * receptive  # 畳み込みの W: (OC, C, KH, KW)


def lecun_normal(shape, rng, dtype=np.float32):
    r"""平均 0・標準偏差 :math:`\sqrt{1/D_{in}}` の正規分布（``Linear`` の既定）。"""
    fan_in, _ = _fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(1 / fan_in)).astype(dtype)


def xavier_normal(shape, rng, dtype=np.float32):
    r"""Xavier（Glorot）の初期値: 標準偏差 :math:`\sqrt{2/(D_{in} + D_{out})}` の正規分布（sigmoid・tanh 向け）。"""
    fan_in, fan_out = _fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(2 / (fan_in + fan_out))).astype(dtype)


def xavier_uniform(shape, rng, dtype=np.float32):
    r"""Xavier（Glorot）の一様分布版: :math:`\pm\sqrt{6/(D_{in} + D_{out})}` の範囲の一様分布。"""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(shape, rng, dtype=np.float32):
    r"""He（Kaiming）の初期値: 標準偏差 :math:`\sqrt{2/D_{in}}` の正規分布（ReLU 向け）。"""
    fan_in, _ = _fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(2 / fan_in)).astype(dtype)


def he_uniform(shape, rng, dtype=np.float32):
    r"""He（Kaiming）の一様分布版: :math:`\pm\sqrt{6/D_{in}}` の範囲の一様分布。"""
    fan_in, _ = _fans(shape)
    limit = math.sqrt(6 / fan_in)
    return rng.uniform(-limit, limit, size=shape).astype(dtype)
