"""第8章: テンソルの形を扱う関数（reshape・transpose・sum・get_item・matmul・max・min・clip）のテスト。"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mini_dl.functions as F
from mini_dl import Variable, cuda, gradient_check


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _second_order(f):
    """``x -> d(sum f(x) * w)/dx`` をさらに微分できる形で返します（2 階の勾配チェック用）。"""
    def g(x):
        y = f(x)
        y.grad = Variable(np.linspace(0.5, 1.5, y.size).reshape(y.shape))
        x.cleargrad()
        y.backward(create_graph=True)
        return x.grad * x.grad  # 線形な演算でも 2 階がつながるように 2 乗する
    return g


# 名前 -> (mini_dl の計算, NumPy の参照, 入力の shape)
CASES = {
    "reshape": (lambda x: x.reshape(3, 4), lambda a: a.reshape(3, 4), (2, 6)),
    "reshape_tuple_-1": (lambda x: x.reshape((-1, 2)), lambda a: a.reshape(-1, 2), (2, 3, 2)),
    "transpose": (lambda x: x.transpose(), lambda a: a.transpose(), (2, 3, 4)),
    "transpose_axes": (lambda x: x.transpose(1, 2, 0), lambda a: a.transpose(1, 2, 0), (2, 3, 4)),
    "transpose_negative": (lambda x: F.transpose(x, (0, -1, -2)), lambda a: a.transpose(0, 2, 1), (2, 3, 4)),
    "T": (lambda x: x.T, lambda a: a.T, (3, 5)),
    "sum_all": (lambda x: x.sum(), lambda a: a.sum(), (2, 3, 4)),
    "sum_axis": (lambda x: x.sum(axis=1), lambda a: a.sum(axis=1), (2, 3, 4)),
    "sum_negative_axis": (lambda x: F.sum(x, axis=-1), lambda a: a.sum(axis=-1), (2, 3, 4)),
    "sum_axes_keepdims": (lambda x: x.sum(axis=(0, 2), keepdims=True), lambda a: a.sum(axis=(0, 2), keepdims=True),
                          (2, 3, 4)),
    "sum_0d": (lambda x: x.sum(), lambda a: a.sum(), ()),
    "getitem_int": (lambda x: x[1], lambda a: a[1], (3, 4)),
    "getitem_slice": (lambda x: x[:, 1:3], lambda a: a[:, 1:3], (3, 4)),
    "getitem_repeated": (lambda x: x[np.array([0, 2, 2, 0, 2])], lambda a: a[np.array([0, 2, 2, 0, 2])], (3, 4)),
    "getitem_pairs": (lambda x: x[np.arange(3), np.array([1, 1, 3])], lambda a: a[np.arange(3), np.array([1, 1, 3])],
                      (3, 4)),
    "broadcast_to": (lambda x: F.broadcast_to(x, (2, 3, 4)), lambda a: np.broadcast_to(a, (2, 3, 4)), (3, 1)),
    "sum_to": (lambda x: F.sum_to(x, (3, 1)), lambda a: a.sum(axis=(0, 2), keepdims=True)[0], (2, 3, 4)),
    "max_axis": (lambda x: F.max(x, axis=1), lambda a: a.max(axis=1), (3, 4)),
    "min_all": (lambda x: F.min(x), lambda a: a.min(), (3, 4)),
    "max_keepdims": (lambda x: F.max(x, axis=(0, 2), keepdims=True), lambda a: a.max(axis=(0, 2), keepdims=True),
                     (2, 3, 4)),
    "clip": (lambda x: F.clip(x, -0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7), (3, 4)),
}


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_numpy_and_keeps_float32(xp, name):
    f, ref, shape = CASES[name]
    a = _rand(shape, dtype=np.float32)
    y = f(Variable(xp.asarray(a)))
    assert y.dtype == np.float32, name
    np.testing.assert_allclose(cuda.as_numpy(y.data), ref(a), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", CASES)
def test_gradient_check(name):
    f, _, shape = CASES[name]
    gradient_check(f, _rand(shape, seed=1))


@pytest.mark.parametrize("name", ["reshape", "transpose_axes", "sum_axis", "getitem_repeated", "max_axis", "clip"])
def test_second_order_gradient_check(name):
    f, _, shape = CASES[name]
    gradient_check(_second_order(f), _rand(shape, seed=2))


def test_repeated_indices_add_their_gradients(xp):
    x = Variable(xp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4)))
    y = x[xp.asarray(np.array([0, 2, 2, 2]))]
    y.grad = Variable(xp.ones((4, 4), dtype=xp.float32))
    y.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), np.array([[1] * 4, [0] * 4, [3] * 4]))


def test_max_splits_the_gradient_between_ties():
    x = Variable(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], dtype=np.float32))
    y = F.max(x, axis=1)
    y.grad = Variable(np.array([2.0, 1.0], dtype=np.float32))
    y.backward()
    np.testing.assert_array_equal(x.grad.data, [[0, 1, 1], [1, 0, 0]])
    assert x.grad.dtype == np.float32


MATMUL_SHAPES = [((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)),
                 ((5, 1, 2, 3), (4, 3, 2)), ((4, 3), (3, 2))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES)
def test_matmul_follows_numpy_shapes_with_gradients(xp, shapes):
    a, b = _rand(shapes[0], 3, np.float32), _rand(shapes[1], 4, np.float32)
    y = Variable(xp.asarray(a)) @ Variable(xp.asarray(b))
    assert y.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(y.data), a @ b, rtol=1e-5, atol=1e-6)
    if xp is np:
        gradient_check(lambda p, q: p @ q, a.astype(np.float64), b.astype(np.float64))


def test_matmul_second_order():
    W = _rand((3, 2), 5)
    gradient_check(_second_order(lambda x: F.tanh(x @ W)), _rand((4, 3), 6))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_shape_ops_round_trip_gradients(data):
    a = data.draw(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=4, max_side=3),
                             elements=st.floats(-2, 2, width=32)))
    x = Variable(a)
    axes = data.draw(st.permutations(range(a.ndim)))
    y = x.transpose(axes).reshape(-1).sum()
    y.backward()
    assert y.dtype == np.float32 and x.grad.shape == a.shape and x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.data, np.ones_like(a))
    if a.ndim > 0:
        axis = data.draw(st.integers(-a.ndim, a.ndim - 1))
        keepdims = data.draw(st.booleans())
        x.cleargrad()
        z = F.max(x, axis=axis, keepdims=keepdims)
        assert z.shape == a.max(axis=axis, keepdims=keepdims).shape
        z.grad = np.ones_like(z.data)
        z.backward()
        # 各行の勾配の和は 1（同点なら等分される）
        np.testing.assert_allclose(x.grad.data.sum(axis=axis), np.ones(a.sum(axis=axis).shape), rtol=1e-6)
