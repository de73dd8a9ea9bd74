"""高階微分のテスト: create_graph=True の逆伝播を繰り返して、2 階・4 階の微分やニュートン法を確かめる。"""
import numpy as np
import pytest

import mini_dl.functions as F
from mini_dl import Variable


def nth_derivative(f, x0, n):
    """``f`` の ``n`` 階微分を ``x0``（スカラー）で、逆伝播を繰り返して求めます。"""
    x = Variable(np.array(x0, dtype=np.float64))
    y = f(x)
    for _ in range(n):
        x.cleargrad()
        y.backward(create_graph=True)
        y = x.grad
    return float(y.data)


@pytest.mark.parametrize("x0", [-1.5, -0.3, 0.0, 0.4, 2.0])
def test_fourth_derivative_of_tanh(x0):
    t = np.tanh(x0)
    s = 1 - t ** 2
    # d/dx tanh = s, d2 = -2ts, d3 = -2s(s - 2t^2) = -2s^2 + 4t^2 s, d4 = 16 t s^2 - 8 t^3 s
    expected = 16 * t * s ** 2 - 8 * t ** 3 * s
    assert nth_derivative(F.tanh, x0, 4) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_fourth_derivative_of_tanh_on_a_vector_in_float32():
    xs = np.linspace(-2, 2, 9).astype(np.float32)
    x = Variable(xs.copy())
    y = F.tanh(x)
    for _ in range(4):
        x.cleargrad()
        y.grad = Variable(np.ones_like(y.data))  # 要素が複数なので、出発点の勾配を入れる
        y.backward(create_graph=True)
        y = x.grad
    assert y.dtype == np.float32
    t = np.tanh(xs.astype(np.float64))
    s = 1 - t ** 2
    np.testing.assert_allclose(y.data, 16 * t * s ** 2 - 8 * t ** 3 * s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", range(6))
def test_derivatives_of_sin_cycle(n):
    expected = [np.sin, np.cos, lambda v: -np.sin(v), lambda v: -np.cos(v)][n % 4](0.7)
    assert nth_derivative(F.sin, 0.7, n) == pytest.approx(expected, rel=1e-12)


def test_newton_method_on_quartic_converges_from_two():
    # f(x) = x^4 - 2x^2、最小値は x = 1（2.0 から始めると 1 に向かう）
    x = Variable(np.array(2.0, dtype=np.float32))
    for i in range(10):
        y = x ** 4 - 2 * x ** 2
        x.cleargrad()
        y.backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        gx.backward()
        gx2 = x.grad
        x.data = x.data - gx.data / gx2.data
        assert x.dtype == np.float32
        if abs(float(x.data) - 1.0) < 1e-6:
            break
    assert i < 9 and abs(float(x.data) - 1.0) < 1e-6


def test_double_backprop_gradient_penalty():
    # z = (dy/dx)^2 + y、y = x^3: dz/dx = 2 (3x^2)(6x) + 3x^2 = 36 x^3 + 3 x^2
    x = Variable(np.array(0.5))
    y = x ** 3
    y.backward(create_graph=True)
    gx = x.grad
    x.cleargrad()
    z = gx ** 2 + y
    z.backward()
    assert float(x.grad.data) == pytest.approx(36 * 0.125 + 3 * 0.25)


def test_without_create_graph_the_gradient_has_no_graph():
    x = Variable(np.array(2.0))
    y = x ** 3
    y.backward()
    assert x.grad.creator is None
    x.cleargrad()
    y = x ** 3
    y.backward(create_graph=True)
    assert x.grad.creator is not None


def test_gradient_descent_on_rosenbrock_approaches_the_minimum():
    x0 = Variable(np.array(0.0, dtype=np.float32))
    x1 = Variable(np.array(2.0, dtype=np.float32))
    for _ in range(20000):
        y = 100 * (x1 - x0 ** 2) ** 2 + (x0 - 1) ** 2
        x0.cleargrad()
        x1.cleargrad()
        y.backward()
        x0.data = x0.data - 0.001 * x0.grad.data
        x1.data = x1.data - 0.001 * x1.grad.data
    assert x0.dtype == np.float32
    assert abs(float(x0.data) - 1) < 1e-2 and abs(float(x1.data) - 1) < 2e-2


def test_module_level_backward_with_create_graph_gives_second_derivatives():
    # mini_dl.backward でも create_graph=True なら、勾配をさらに微分できる
    import mini_dl

    x = Variable(np.array([0.3, -0.8], dtype=np.float64))
    y1 = F.sum(x ** 3)
    y2 = F.sum(F.sin(x))
    mini_dl.backward([y1, y2], [2.0, 1.0], create_graph=True)
    gx = x.grad  # 6 x^2 + cos x
    np.testing.assert_allclose(gx.data, 6 * x.data ** 2 + np.cos(x.data), rtol=1e-12)
    x.cleargrad()
    mini_dl.backward(F.sum(gx))
    np.testing.assert_allclose(x.grad.data, 12 * x.data - np.sin(x.data), rtol=1e-12)


def test_second_derivative_through_detach_is_cut():
    # detach した値は定数: d/dx (x.detach() * x^2) = 2 x * x0、2 階は 2 x0
    x = Variable(np.array(1.5))
    y = x.detach() * x ** 2
    y.backward(create_graph=True)
    gx = x.grad
    assert float(gx.data) == pytest.approx(2 * 1.5 * 1.5)
    x.cleargrad()
    gx.backward()
    assert float(x.grad.data) == pytest.approx(2 * 1.5)
