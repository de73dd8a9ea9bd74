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
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # 0 への丸め（underflow）は正しい答え
        y = F.sigmoid(x)
    np.testing.assert_allclose(y.data, [0, 0, 0.5, 1, 1], atol=1e-7)
    assert y.dtype == np.float32


def test_sigmoid_keeps_float32_precision_in_the_tails(xp):
    a = np.array([-30.0, -10.0, -3.0, 0.0, 3.0, 10.0, 30.0], dtype=np.float32)
    y = F.sigmoid(Variable(xp.asarray(a)))
    assert y.dtype == np.float32
    ref = 1 / (1 + np.exp(-a.astype(np.float64)))  # float64 の参照値
    rel = np.abs(cuda.as_numpy(y.data).astype(np.float64) - ref) / ref
    assert rel.max() < 1e-6, f"sigmoid の float32 の相対誤差が大きすぎます: {dict(zip(a.tolist(), rel.tolist()))}"


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


def _second_order_all(f):
    """``(x_1, ...) -> sum_i sum(grad_i ** 2)``（``grad_i`` は ``create_graph=True`` で求めた 1 階の勾配）。

    これをさらに ``gradient_check`` にかけると、逆伝播がどの入力についても微分できること
    （途中の項を ``.data`` で切り離していないこと）を確かめられます。
    """
    def g(*xs):
        y = f(*xs)
        y.grad = Variable(np.linspace(0.5, 1.5, y.size).reshape(y.shape))
        for x in xs:
            x.cleargrad()
        y.backward(create_graph=True)
        total = 0
        for x in xs:
            total = total + F.sum(x.grad * x.grad)
        return total
    return g


@pytest.mark.parametrize("shape", [(5,), (5, 1), (4, 3), (2, 3, 4)])
def test_mean_squared_error_is_the_mean_over_all_elements(shape):
    a, b = _rand(shape, 7), _rand(shape, 8)
    ref = np.mean((a - b) ** 2)  # PyTorch の F.mse_loss(reduction="mean") と同じ定義
    for f in (F.mean_squared_error, F.mean_squared_error_simple):
        y = f(Variable(a), Variable(b))
        assert y.shape == () and y.dtype == np.float64, f.__name__
        np.testing.assert_allclose(y.data, ref, rtol=1e-12, err_msg=f"{f.__name__} の値が要素の平均と違います")
    x0 = Variable(a)
    F.mean_squared_error(x0, b).backward()
    np.testing.assert_allclose(x0.grad.data, 2 * (a - b) / a.size, rtol=1e-12,
                               err_msg="mean_squared_error の勾配は 2 (x0 - x1) / (要素の数) です")


def test_mean_squared_error_multi_output_differs_from_dividing_by_n():
    # 出力が H 個なら、最初の軸の長さ N で割る DeZero の定義の 1/H 倍
    a, b = _rand((6, 4), 9), _rand((6, 4), 10)
    y = F.mean_squared_error(Variable(a), Variable(b))
    np.testing.assert_allclose(float(y.data) * 4, np.sum((a - b) ** 2) / 6, rtol=1e-12)


@pytest.mark.parametrize("f", [F.mean_squared_error, F.mean_squared_error_simple])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)])
def test_mean_squared_error_first_and_second_order(f, shape):
    a, b = _rand(shape, 11), _rand(shape, 12)
    gradient_check(f, a, b)
    gradient_check(_second_order_all(f), a, b)


def test_mean_squared_error_second_order_is_not_detached():
    # d/dx0 sum(g0^2) = 8 (x0 - x1) / n^2（g0 = 2 (x0 - x1) / n、x1 の分も同じ大きさ）
    a, b = _rand((3, 2), 13), _rand((3, 2), 14)
    x0, x1 = Variable(a), Variable(b)
    loss = F.mean_squared_error(x0, x1)
    loss.backward(create_graph=True)
    gx0 = x0.grad
    x0.cleargrad()
    x1.cleargrad()
    F.sum(gx0 * gx0).backward()
    np.testing.assert_allclose(x0.grad.data, 8 * (a - b) / a.size ** 2, rtol=1e-12,
                               err_msg="MeanSquaredError の逆伝播が diff を定数として扱っています")
    np.testing.assert_allclose(x1.grad.data, -8 * (a - b) / a.size ** 2, rtol=1e-12)


def test_mean_squared_error_keeps_float32():
    a, b = _rand((5, 2), 15, np.float32), _rand((5, 2), 16, np.float32)
    x0 = Variable(a)
    for f in (F.mean_squared_error, F.mean_squared_error_simple):
        x0.cleargrad()
        y = f(x0, b)
        y.backward()
        assert y.dtype == np.float32 and x0.grad.dtype == np.float32, f.__name__


@pytest.mark.parametrize("dtypes", [(np.float32, np.float64), (np.float64, np.float32), (np.float32, np.int64)])
@pytest.mark.parametrize("wrap", ["first", "second", "both", "none"])
def test_mean_squared_error_rejects_mixed_dtypes(dtypes, wrap):
    a, b = np.ones((4, 1), dtype=dtypes[0]), np.ones((4, 1), dtype=dtypes[1])
    x0 = Variable(a) if wrap in ("first", "both") else a
    x1 = Variable(b) if wrap in ("second", "both") else b
    with pytest.raises(TypeError, match=r"mean_squared_error の 2 つの入力の dtype が違います.*astype\(np\.float"):
        F.mean_squared_error(x0, x1)


def test_mean_squared_error_dtype_message_names_the_prediction_dtype():
    pred = Variable(np.ones((3, 1), dtype=np.float32))
    with pytest.raises(TypeError, match=r"float32 と float64.*t\.astype\(np\.float32\)"):
        F.mean_squared_error(pred, np.ones((3, 1)))
    with pytest.raises(TypeError, match=r"float64 と float32.*t\.astype\(np\.float32\)"):
        F.mean_squared_error(np.ones((3, 1)), pred)


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


@pytest.mark.parametrize("nobias", [False, True])
@pytest.mark.parametrize("xshape", [(2, 3, 4), (2, 1, 3, 4), (4,)])
def test_linear_nd_matches_numpy_and_linear_simple(xp, nobias, xshape):
    x, W, b = _rand(xshape, 20, np.float32), _rand((4, 5), 21, np.float32), _rand((5,), 22, np.float32)
    args = [Variable(xp.asarray(v)) for v in ((x, W) if nobias else (x, W, b))]
    y = F.linear(*args)
    ref = x.astype(np.float64) @ W.astype(np.float64) + (0 if nobias else b)
    assert y.shape == xshape[:-1] + (5,) and y.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(y.data), ref, rtol=1e-5, atol=1e-6)
    g = _rand(y.shape, 23, np.float32)
    y.grad = Variable(xp.asarray(g))
    y.backward()
    x2, g2 = x.reshape(-1, 4).astype(np.float64), g.reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(cuda.as_numpy(args[0].grad.data), (g2 @ W.T).reshape(xshape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cuda.as_numpy(args[1].grad.data), x2.T @ g2, rtol=1e-5, atol=1e-6)
    assert args[0].grad.shape == xshape and args[1].grad.shape == (4, 5)
    if not nobias:
        np.testing.assert_allclose(cuda.as_numpy(args[2].grad.data), g2.sum(axis=0), rtol=1e-5, atol=1e-6)
    assert all(v.grad.dtype == np.float32 for v in args)
    simple = F.linear_simple(*[Variable(v.data) for v in args])
    np.testing.assert_allclose(cuda.as_numpy(simple.data), cuda.as_numpy(y.data), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nobias", [False, True])
@pytest.mark.parametrize("xshape", [(4, 3), (2, 3, 3), (3,)])
def test_linear_nd_first_and_second_order(nobias, xshape):
    inputs = [_rand(xshape, 30), _rand((3, 2), 31)] + ([] if nobias else [_rand((2,), 32)])
    gradient_check(F.linear, *inputs)
    gradient_check(_second_order_all(F.linear), *inputs)
    # x * x を挟むと、gW = x^T gy の x への依存（2 階）も確かめられる
    gradient_check(_second_order_all(lambda x, *wb: F.linear(x * x, *wb)), *inputs)


def test_linear_nd_with_a_data_array_skips_the_input_gradient():
    x = _rand((2, 3, 4), 40, np.float32)  # データ（配列）
    W, b = Variable(_rand((4, 2), 41, np.float32)), Variable(_rand((2,), 42, np.float32))
    y = F.linear(x, W, b)
    assert y.creator.needs_gx is False and y.shape == (2, 3, 2)
    y.grad = Variable(np.ones((2, 3, 2), dtype=np.float32))
    y.backward()
    np.testing.assert_allclose(W.grad.data, x.reshape(-1, 4).sum(axis=0)[:, None] * np.ones((1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(b.grad.data, np.full(2, 6.0))


def test_linear_rejects_a_weight_that_is_not_2d():
    with pytest.raises(ValueError, match=r"linear の shape が合いません: x \(2, 3\) と W \(3,\)"):
        F.linear(Variable(np.ones((2, 3))), Variable(np.ones(3)))
    with pytest.raises(ValueError, match=r"linear の shape が合いません: x \(2, 5, 3\) と W \(4, 2\)"):
        F.linear(Variable(np.ones((2, 5, 3))), Variable(np.ones((4, 2))))


def test_leaky_relu_default_slope_is_dezero_s_0_2():
    # PyTorch の既定値（0.01）とは違う（docstring と第9章がそう説明している）
    y = F.leaky_relu(Variable(np.array([-1.0, 2.0])))
    np.testing.assert_allclose(y.data, [-0.2, 2.0], rtol=1e-15)
    y32 = F.LeakyReLU()(Variable(np.array([-1.0], dtype=np.float32)))
    np.testing.assert_allclose(y32.data, [-0.2], rtol=1e-7)
