"""数値微分など、mini_dl を作り・確かめるための道具。"""
import numpy as np


def numerical_diff(f, x, eps=1e-4):
    r"""中心差分で関数 ``f`` の微分を近似します。

    .. math::

        f'(x) \approx \frac{f(x + h) - f(x - h)}{2h}

    丸め誤差を小さくするため、``x`` を ``float64`` に変換してから計算します。
    ``x`` が配列なら要素ごとの微分（``f`` が要素ごとの関数の場合）を返します。

    Args:
        f: 数値または配列を受け取り、同じ shape の値を返す関数。
        x: 微分する点（数値または配列）。
        eps: 差分の幅 :math:`h`。

    Returns:
        float64 の数値または配列: :math:`f'(x)` の近似値。
    """
    x = np.asarray(x, dtype=np.float64)
    return (f(x + eps) - f(x - eps)) / (2 * eps)
