"""演算ごとのテスト: 順伝播の参照値、float32 の維持、勾配チェック（要素ごとの演算は 2 階も）、
ブロードキャスト、演算子（数値や ndarray が左でも）、shape のプロパティテスト。"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mini_dl.functions as F
from mini_dl import Variable, cuda, gradient_check
from mini_dl.functions import broadcast_to, matmul, sum_to, sum_to_array, transpose

# 名前 -> (mini_dl の関数, NumPy の参照, 導関数, 入力の範囲)
UNARY = {
    "square": (F.square, np.square, lambda x: 2 * x, (-2, 2)),
    "exp": (F.exp, np.exp, np.exp, (-2, 2)),
    "log": (F.log, np.log, lambda x: 1 / x, (0.5, 3)),
    "sin": (F.sin, np.sin, np.cos, (-3, 3)),
    "cos": (F.cos, np.cos, lambda x: -np.sin(x), (-3, 3)),
    "tanh": (F.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2, (-2, 2)),
    "neg": (lambda x: -x, np.negative, lambda x: -np.ones_like(x), (-2, 2)),
    "pow3": (lambda x: x ** 3, lambda x: x ** 3, lambda x: 3 * x ** 2, (-2, 2)),
    "pow_half": (lambda x: x ** 0.5, np.sqrt, lambda x: 0.5 / np.sqrt(x), (0.5, 3)),
}
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}
SHAPES = [(), (1,), (3,), (2, 3)]
BROADCAST_PAIRS = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 3), ()), ((), (2, 1)), ((2, 1), (1, 3)), ((3, 1, 2), (4, 1))]


def _uniform(shape, low, high, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)


def _grad_of(f):
    """``x -> df/dx`` を計算する関数（create_graph=True の逆伝播で作るので、さらに微分できる）。"""
    def df(x):
        y = f(x)
        y.grad = Variable(np.ones_like(y.data))
        x.cleargrad()
        y.backward(create_graph=True)
        return x.grad
    df.__name__ = f"d{getattr(f, '__name__', 'f')}"
    return df


# --- 要素ごとの演算 ------------------------------------------------------------------------

@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("shape", SHAPES)
def test_unary_forward_matches_numpy_and_keeps_float32(xp, name, shape):
    f, ref, _, (lo, hi) = UNARY[name]
    x = _uniform(shape, lo, hi, np.float32)
    y = f(Variable(xp.asarray(x)))
    assert y.dtype == np.float32 and y.shape == shape, name
    np.testing.assert_allclose(cuda.as_numpy(y.data), ref(x), rtol=1e-5, err_msg=f"{name} の順伝播")


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("shape", SHAPES)
def test_unary_gradient_check(name, shape):
    f, _, _, (lo, hi) = UNARY[name]
    gradient_check(f, _uniform(shape, lo, hi, seed=1))


@pytest.mark.parametrize("name", UNARY)
def test_unary_second_order_gradient_check(name):
    f, _, _, (lo, hi) = UNARY[name]
    gradient_check(_grad_of(f), _uniform((2, 3), lo, hi, seed=2))


@pytest.mark.parametrize("name", UNARY)
def test_unary_backward_keeps_float32(xp, name):
    f, _, deriv, (lo, hi) = UNARY[name]
    x = Variable(xp.asarray(_uniform((2, 3), lo, hi, np.float32, seed=3)))
    y = f(x)
    y.grad = Variable(xp.ones((2, 3), dtype=xp.float32))
    y.backward(create_graph=True)
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data), deriv(cuda.as_numpy(x.data).astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    g = x.grad
    x.cleargrad()
    g.grad = Variable(xp.ones((2, 3), dtype=xp.float32))
    g.backward()
    assert x.grad is None or x.grad.dtype == np.float32  # neg の 2 階微分は 0（グラフがつながらない）


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), elements=st.floats(0.5, 2.0, width=32)))
def test_property_unary_shapes_dtypes_and_derivatives(x):
    for name, (f, ref, deriv, _) in UNARY.items():
        v = Variable(x.copy())
        y = f(v)
        assert y.shape == x.shape and y.dtype == np.float32, name
        y.grad = np.ones_like(y.data)
        y.backward()
        assert v.grad.shape == x.shape and v.grad.dtype == np.float32, name
        np.testing.assert_allclose(v.grad.data, deriv(x.astype(np.float64)), rtol=1e-4, atol=1e-5, err_msg=name)


# --- 2 項演算とブロードキャスト --------------------------------------------------------------

@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS)
def test_binary_forward_and_gradient_check_with_broadcasting(xp, name, shapes):
    f, ref = BINARY[name]
    a = _uniform(shapes[0], 0.5, 2.0, np.float32, seed=4)
    b = _uniform(shapes[1], 0.5, 2.0, np.float32, seed=5)
    y = f(Variable(xp.asarray(a)), Variable(xp.asarray(b)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(y.data), ref(a, b), rtol=1e-6, err_msg=f"{name} の順伝播")
    if xp is np:
        gradient_check(f, a, b)


@pytest.mark.parametrize("name", BINARY)
def test_binary_second_order_gradient_check(name):
    f, _ = BINARY[name]

    def g(a, b):  # 2 入力の関数の勾配をさらに微分する: d/da (df/da + df/db)
        y = f(a, b)
        y.grad = Variable(np.ones_like(y.data))
        a.cleargrad()
        b.cleargrad()
        y.backward(create_graph=True)
        return a.grad * a.grad + b.grad
    gradient_check(g, _uniform((2, 3), 0.5, 2.0, seed=6), _uniform((3,), 0.5, 2.0, seed=7))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_broadcast_gradients_have_input_shapes(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))
    other = data.draw(hnp.broadcastable_shapes(shape, min_dims=0, max_dims=3, max_side=3))
    rng = np.random.default_rng(len(shape) * 10 + len(other))
    a_data = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    b_data = rng.uniform(0.5, 1.5, other).astype(np.float32)
    a, b = Variable(a_data), Variable(b_data)
    y = a * b + b
    g = rng.uniform(-1, 1, y.shape).astype(np.float32)  # 乱数の上流勾配: どの要素に何回足されたかまで比べる
    y.grad = g
    y.backward()
    assert a.grad.shape == shape and b.grad.shape == other
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float32
    a64, b64, g64 = (np.broadcast_to(v.astype(np.float64), y.shape) for v in (a_data, b_data, g))
    np.testing.assert_allclose(a.grad.data, sum_to_array(g64 * b64, shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.grad.data, sum_to_array(g64 * (a64 + 1), other), rtol=1e-5, atol=1e-6)


def test_incompatible_shapes_are_rejected_in_japanese():
    with pytest.raises(ValueError, match=r"shape \(3,\) と \(4,\) はブロードキャストできません"):
        Variable(np.ones(3)) + Variable(np.ones(4))


# --- 演算子: 数値や ndarray が左右どちらにあっても ------------------------------------------

@pytest.mark.parametrize("left", [2.0, 2, np.array(2.0, dtype=np.float32), np.full((2, 3), 2.0, dtype=np.float32)])
def test_operators_with_scalars_and_arrays_on_the_left(left):
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    x = Variable(a.copy())
    results = {
        "+": (left + x, left + a), "-": (left - x, left - a), "*": (left * x, left * a),
        "/": (left / x, left / a),
    }
    for op, (y, expected) in results.items():
        assert isinstance(y, Variable), f"{type(left).__name__} {op} Variable が Variable になりません"
        assert y.dtype == np.float32, f"{type(left).__name__} {op} Variable の dtype が {y.dtype}"
        np.testing.assert_allclose(y.data, expected, rtol=1e-6)
    y = left / x
    y.grad = np.ones_like(y.data)
    y.backward()
    np.testing.assert_allclose(x.grad.data, -np.broadcast_to(left, a.shape) / a ** 2, rtol=1e-6)


@pytest.mark.parametrize("right", [3.0, 3, np.array(3.0, dtype=np.float32)])
def test_operators_with_scalars_on_the_right(right):
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    for y, expected in [(x + right, [4, 5]), (x - right, [-2, -1]), (x * right, [3, 6]), (x / right, [1 / 3, 2 / 3]),
                        (x ** 2, [1, 4]), (-x, [-1, -2])]:
        assert isinstance(y, Variable) and y.dtype == np.float32
        np.testing.assert_allclose(y.data, expected, rtol=1e-6)


def test_float64_variables_stay_float64_with_python_scalars():
    x = Variable(np.array([1.0, 2.0]))
    assert (2.0 * x + 1).dtype == np.float64 and (x ** 2).dtype == np.float64


def test_pow_rejects_variable_exponent():
    x = Variable(np.array(2.0, dtype=np.float32))
    with pytest.raises(TypeError, match="\\*\\* の指数には Python の数値を渡してください（受け取った型: Variable）"):
        x ** x


def test_operators_reject_unknown_types():
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(TypeError, match="受け取った型: list"):
        x + [1.0, 2.0]


# --- 行列積・転置・sum_to / broadcast_to --------------------------------------------------

@pytest.mark.parametrize("shapes", [((3, 2), (2, 4)), ((1, 1), (1, 5)), ((4, 3), (3, 1))])
def test_matmul_forward_and_gradients(xp, shapes):
    a = _uniform(shapes[0], -1, 1, np.float32, seed=8)
    b = _uniform(shapes[1], -1, 1, np.float32, seed=9)
    x, W = Variable(xp.asarray(a)), Variable(xp.asarray(b))
    y = x @ W
    assert y.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(y.data), a @ b, rtol=1e-5, atol=1e-6)
    g = _uniform(y.shape, -1, 1, np.float32, seed=12)  # 乱数の上流勾配（すべて 1 だと転置の間違いを見逃す）
    y.grad = Variable(xp.asarray(g))
    y.backward()
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data), g @ b.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cuda.as_numpy(W.grad.data), a.T @ g, rtol=1e-5, atol=1e-6)
    if xp is np:
        gradient_check(lambda p, q: p @ q, a, b)
        gradient_check(_grad_of(lambda p: (p @ b.astype(np.float64)) ** 2), a)


def test_matmul_with_an_ndarray_on_the_left():
    a = np.eye(2, dtype=np.float32) * 3
    W = Variable(np.ones((2, 3), dtype=np.float32))
    y = a @ W
    assert isinstance(y, Variable) and y.dtype == np.float32
    y.grad = np.ones_like(y.data)
    y.backward()
    np.testing.assert_allclose(W.grad.data, np.full((2, 3), 3.0))


def test_matmul_shape_errors_are_japanese():
    with pytest.raises(ValueError, match=r"matmul の shape が合いません: \(2, 3\) @ \(2, 3\)"):
        matmul(Variable(np.ones((2, 3))), Variable(np.ones((2, 3))))
    with pytest.raises(ValueError, match="0 次元の配列は使えません"):
        matmul(Variable(np.ones(3)), Variable(np.array(2.0)))


def test_transpose_sum_to_broadcast_to():
    a = _uniform((2, 3), -1, 1, seed=10)
    np.testing.assert_array_equal(transpose(Variable(a)).data, a.T)
    gradient_check(transpose, a)
    gradient_check(lambda v: sum_to(v, (3,)), a)
    gradient_check(lambda v: sum_to(v, (2, 1)), a)
    gradient_check(lambda v: broadcast_to(v, (4, 2, 3)), a)
    np.testing.assert_allclose(sum_to_array(np.ones((2, 3, 4)), (3, 1)), np.full((3, 1), 8.0))
    assert sum_to_array(np.ones((2, 3)), ()).shape == ()


# --- float32 を保つ境界: NumPy のスカラーも Python の数と同じに扱う -------------------------

# 名前 -> (mini_dl の計算, float64 の参照, 導関数)
SCALAR_BOUNDARY = {
    "x * np.sqrt(2.0)": (lambda x: x * np.sqrt(2.0), lambda a: a * np.sqrt(2.0), lambda a: np.full_like(a, np.sqrt(2))),
    "x / np.float64(8)": (lambda x: x / np.float64(8), lambda a: a / 8, lambda a: np.full_like(a, 1 / 8)),
    "x ** np.float64(2)": (lambda x: x ** np.float64(2), lambda a: a ** 2, lambda a: 2 * a),
    "x ** np.int64(3)": (lambda x: x ** np.int64(3), lambda a: a ** 3, lambda a: 3 * a ** 2),
    "x * np.int64(2)": (lambda x: x * np.int64(2), lambda a: a * 2, lambda a: np.full_like(a, 2.0)),
    "np.float64(3) - x": (lambda x: np.float64(3) - x, lambda a: 3 - a, lambda a: np.full_like(a, -1.0)),
    "np.float64(2) / x": (lambda x: np.float64(2) / x, lambda a: 2 / a, lambda a: -2 / a ** 2),
    "np.float64(0.5) * x": (lambda x: np.float64(0.5) * x, lambda a: 0.5 * a, lambda a: np.full_like(a, 0.5)),
    "x + np.float32(1)": (lambda x: x + np.float32(1), lambda a: a + 1, lambda a: np.ones_like(a)),
    "x - np.int32(1)": (lambda x: x - np.int32(1), lambda a: a - 1, lambda a: np.ones_like(a)),
    "x * 2.5": (lambda x: x * 2.5, lambda a: a * 2.5, lambda a: np.full_like(a, 2.5)),
    "1 / x": (lambda x: 1 / x, lambda a: 1 / a, lambda a: -1 / a ** 2),
}


@pytest.mark.parametrize("name", SCALAR_BOUNDARY)
def test_numpy_scalars_keep_float32_forward_and_backward(xp, name):
    f, ref, deriv = SCALAR_BOUNDARY[name]
    a = _uniform((2, 3), 0.5, 2.0, np.float32, seed=11)
    x = Variable(xp.asarray(a))
    y = f(x)
    assert isinstance(y, Variable) and y.dtype == np.float32, f"{name} の dtype が {y.dtype} になりました"
    assert cuda.get_array_module(y.data) is xp
    np.testing.assert_allclose(cuda.as_numpy(y.data), ref(a.astype(np.float64)), rtol=1e-6, err_msg=name)
    y.grad = 1.0 if y.size == 1 else xp.ones(y.shape, dtype=xp.float64)  # float64 の seed も float32 にそろう
    y.backward()
    assert x.grad.dtype == np.float32, f"{name} の勾配の dtype が {x.grad.dtype} になりました"
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data), deriv(a.astype(np.float64)), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("op, expected", [
    (lambda x: x * 2.5, [0.0, 2.5, 5.0, -7.5]),
    (lambda x: 2.5 * x, [0.0, 2.5, 5.0, -7.5]),
    (lambda x: x + 0.5, [0.5, 1.5, 2.5, -2.5]),
    (lambda x: x - np.float64(0.25), [-0.25, 0.75, 1.75, -3.25]),
    (lambda x: x / 2, [0.0, 0.5, 1.0, -1.5]),
    (lambda x: x * np.float64(1.5), [0.0, 1.5, 3.0, -4.5]),
], ids=["x*2.5", "2.5*x", "x+0.5", "x-np.float64(0.25)", "x/2", "x*np.float64(1.5)"])
def test_int_variable_with_a_float_is_exact_not_truncated(op, expected):
    # 変異「int の Variable と 2.5 の積が切り捨てられる」を捕まえる
    y = op(Variable(np.array([0, 1, 2, -3], dtype=np.int64)))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y.data, expected)


def test_int_variable_with_an_int_stays_int():
    y = Variable(np.array([1, 2], dtype=np.int32)) * 3
    assert y.dtype == np.int32 and y.data.tolist() == [3, 6]


def test_float16_stays_float16_with_python_and_numpy_scalars():
    x = Variable(np.array([1.0, 2.0], dtype=np.float16))
    for y in (x * 2.0, 2.0 * x, x / np.float64(4), x ** 2, x + np.sqrt(2.0), np.float64(1) - x):
        assert y.dtype == np.float16, y.dtype
    y = (x * np.sqrt(2.0)).sum()
    y.backward()
    assert x.grad.dtype == np.float16
    np.testing.assert_allclose(x.grad.data.astype(np.float64), np.sqrt(2.0), rtol=1e-3)
