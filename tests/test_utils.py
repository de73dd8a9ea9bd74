"""mini_dl.utils.numerical_diff のテスト。"""
import numpy as np
import pytest

from mini_dl.utils import numerical_diff


@pytest.mark.parametrize("f, df, x", [
    (np.sin, np.cos, 0.3),
    (np.exp, np.exp, np.array([-1.0, 0.0, 2.0])),
    (lambda x: x ** 3, lambda x: 3 * x ** 2, np.linspace(-2, 2, 7)),
])
def test_central_difference_is_accurate(f, df, x):
    np.testing.assert_allclose(numerical_diff(f, x), df(x), rtol=1e-7, atol=1e-7)


def test_error_is_second_order_in_eps():
    # 中心差分の打ち切り誤差は h^2 に比例: h を 1/10 にすると誤差はほぼ 1/100
    x = 1.0
    e1 = abs(numerical_diff(np.exp, x, eps=1e-2) - np.exp(x))
    e2 = abs(numerical_diff(np.exp, x, eps=1e-3) - np.exp(x))
    assert 80 < e1 / e2 < 120


def test_computes_in_float64_even_for_float32_input():
    x = np.float32(1.0)
    d = numerical_diff(lambda v: v ** 2, x)
    assert d.dtype == np.float64
    assert abs(d - 2.0) < 1e-8
