"""第9章: 活性化関数・全結合・平均二乗誤差のテスト（素朴な版と速い版の一致も確かめる）。"""
import numpy as np
import pytest

import mini_dl.functions as F
from mini_dl import Variable, cuda, gradient_check


def _rand(shape, seed=0, dtype=np.float64, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


ACTIVATIONS = {
    "sigmoid": (F.sigmoid, lambda a: 1 / (1 + np.exp(-a))),
    "relu": (F.relu, lambda a: np.maximum(a, 0)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda a: np.where(a > 0, a, 0.1 * a)),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_activation_forward_gradient_and_float32(xp, name, shape):
    f, ref = ACTIVATIONS[name]
    a = _rand(shape, 1, np.float32)
    y = f(Variable(xp.asarray(a)))
    assert y.dtype == np.float32 and y.shape == shape
    np.testing.assert_allclose(cuda.as_numpy(y.data), ref(a.astype(np.float64)), rtol=1e-6, atol=1e-7)
    if xp is np:
        b = _rand(shape, 2) + 0.05  # 0 ちょうど（微分できない点）を避ける
        gradient_check(f, b)


@pytest.mark.parametrize("name", ["sigmoid", "leaky_relu"])
def test_activation_second_order(name):
    f, _ = ACTIVATIONS[name]

    def g(x):
        y = f(x)
        y.grad = Variable(np.ones_like(y.data))
        x.cleargrad()
        y.backward(create_graph=True)
        return x.grad * x.grad
    gradient_check(g, _rand((3, 4), 3) + 0.05)


def test_sigmoid_is_stable_for_huge_inputs():
    x = Variable(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=np.float32))
    with np.errstate(all="raise"):
        y = F.sigmoid(x)
    np.testing.assert_allclose(y.data, [0, 0, 0.5, 1, 1], atol=1e-7)
    assert y.dtype == np.float32


@pytest.mark.parametrize("nobias", [False, True])
def test_linear_matches_linear_simple_and_gradients(xp, nobias):
    x, W, b = _rand((4, 3), 4, np.float32), _rand((3, 2), 5, np.float32), _rand((2,), 6, np.float32)
    args = [Variable(xp.asarray(v)) for v in ((x, W) if nobias else (x, W, b))]
    fast = F.linear(*args)
    fast.grad = Variable(xp.ones(fast.shape, dtype=xp.float32))
    fast.backward()
    grads_fast = [cuda.as_numpy(v.grad.data) for v in args]
    for v in args:
        v.cleargrad()
    simple = F.linear_simple(*args)
    simple.grad = Variable(xp.ones(simple.shape, dtype=xp.float32))
    simple.backward()
    assert fast.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(fast.data), cuda.as_numpy(simple.data), rtol=1e-6)
    for g_fast, v in zip(grads_fast, args):
        assert g_fast.dtype == np.float32
        np.testing.assert_allclose(g_fast, cuda.as_numpy(v.grad.data), rtol=1e-6)
    if xp is np:
        gradient_check(F.linear, x.astype(np.float64), W.astype(np.float64),
                       *([] if nobias else [b.astype(np.float64)]))


def test_linear_shape_error_is_japanese():
    with pytest.raises(ValueError, match=r"linear の shape が合いません: x \(4, 3\) と W \(2, 2\)"):
        F.linear(Variable(np.ones((4, 3))), Variable(np.ones((2, 2))))


def test_mean_squared_error_matches_simple_and_formula():
    a, b = _rand((5, 2), 7), _rand((5, 2), 8)
    fast = F.mean_squared_error(Variable(a), Variable(b))
    simple = F.mean_squared_error_simple(Variable(a), Variable(b))
    np.testing.assert_allclose(fast.data, np.sum((a - b) ** 2) / 5)
    np.testing.assert_allclose(fast.data, simple.data)
    gradient_check(F.mean_squared_error, a, b)
    gradient_check(F.mean_squared_error_simple, a, b)
    y = F.mean_squared_error(Variable(a.astype(np.float32)), Variable(b.astype(np.float32)))
    assert y.dtype == np.float32 and y.shape == ()


def test_mean_squared_error_rejects_different_shapes():
    with pytest.raises(ValueError, match="同じ shape"):
        F.mean_squared_error(Variable(np.ones((3, 1))), Variable(np.ones(3)))


def test_linear_skips_the_input_gradient_for_data_arrays():
    x = np.ones((4, 3), dtype=np.float32)  # データ（配列）
    W, b = Variable(np.ones((3, 2), dtype=np.float32)), Variable(np.zeros(2, dtype=np.float32))
    y = F.linear(x, W, b)
    assert y.creator.needs_gx is False
    y.grad = Variable(np.ones((4, 2), dtype=np.float32))
    y.backward()
    np.testing.assert_array_equal(W.grad.data, np.full((3, 2), 4.0))
    np.testing.assert_array_equal(b.grad.data, np.full(2, 4.0))
    assert F.linear(Variable(x), W, b).creator.needs_gx is True
