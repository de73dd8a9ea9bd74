r"""重みの初期値（``mini_dl.initializers``）。

どれも ``(shape, rng, dtype)`` を受け取り、その shape の配列を返します。``shape`` の
最初の軸を入力の大きさ :math:`D_{in}`、最後の軸を出力の大きさ :math:`D_{out}` とみなします。
"""
import math

import numpy as np


def _fans(shape):
    """(入力の大きさ, 出力の大きさ) を返します。"""
    return shape[0], shape[-1]


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
