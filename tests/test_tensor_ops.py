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


_MASK = np.array([[True, False, True, True], [False, False, True, False], [True, True, False, False]])

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
    "getitem_bool_mask": (lambda x: x[_MASK], lambda a: a[_MASK], (3, 4)),
    "getitem_ellipsis_newaxis": (lambda x: x[None, ..., [2, 0, 2]], lambda a: a[None, ..., [2, 0, 2]], (3, 4)),
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


@pytest.mark.parametrize("name", ["reshape", "transpose_axes", "sum_axis", "getitem_repeated", "getitem_bool_mask",
                                  "max_axis", "clip"])
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
    # 辺の長さがすべて等しい shape（逆でない並べ替えでも shape が合ってしまう）も必ず混ぜる
    cubes = st.integers(2, 4).flatmap(lambda n: st.integers(2, 3).map(lambda side: (side,) * n))
    shapes = st.one_of(cubes, hnp.array_shapes(min_dims=0, max_dims=4, max_side=3))
    a = data.draw(hnp.arrays(np.float32, shapes, elements=st.floats(-2, 2, width=32)))
    x = Variable(a)
    axes = data.draw(st.permutations(range(a.ndim)))
    y = x.transpose(axes).reshape(-1)
    # 乱数の上流勾配: すべて 1 だと、逆の並べ替えを間違えても勾配が同じになってしまう
    g = np.random.default_rng(a.size).standard_normal(y.shape).astype(np.float32)
    y.grad = Variable(g)
    y.backward()
    assert y.dtype == np.float32 and x.grad.shape == a.shape and x.grad.dtype == np.float32
    transposed_shape = tuple(a.shape[i] for i in axes)
    np.testing.assert_array_equal(x.grad.data, np.transpose(g.reshape(transposed_shape), np.argsort(axes)))
    if a.ndim > 0:
        axis = data.draw(st.integers(-a.ndim, a.ndim - 1))
        keepdims = data.draw(st.booleans())
        x.cleargrad()
        z = F.max(x, axis=axis, keepdims=keepdims)
        assert z.shape == a.max(axis=axis, keepdims=keepdims).shape
        gz = np.random.default_rng(1).uniform(0.5, 1.5, z.shape).astype(np.float32)
        z.grad = Variable(gz)
        z.backward()
        # 最大値の要素にだけ、同点なら等分して流れる
        hit = a == a.max(axis=axis, keepdims=True)
        expected = hit / hit.sum(axis=axis, keepdims=True) * np.expand_dims(gz, axis) if not keepdims else \
            hit / hit.sum(axis=axis, keepdims=True) * gz
        np.testing.assert_allclose(x.grad.data, expected, rtol=1e-6)


def test_getitem_with_repeated_list_index_accumulates(xp):
    a = _rand((3, 2), 20, np.float32)
    g = _rand((3, 2), 21, np.float32)
    x = Variable(xp.asarray(a))
    y = x[[0, 0, 2]]
    np.testing.assert_array_equal(cuda.as_numpy(y.data), a[[0, 0, 2]])
    y.grad = Variable(xp.asarray(g))
    y.backward()
    expected = np.zeros((3, 2), dtype=np.float32)
    np.add.at(expected, [0, 0, 2], g)
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data), expected, rtol=1e-6)
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data)[0], g[0] + g[1], rtol=1e-6)  # 2 回分が足される


# --- astype -------------------------------------------------------------------------------------

@pytest.mark.parametrize("src, dst", [(np.float32, np.float64), (np.float64, np.float32), (np.float16, np.float32),
                                      (np.float32, np.float16), (np.float16, np.float64)])
def test_astype_forward_and_gradient_dtype(xp, src, dst):
    a = _rand((2, 3), 22, src)
    x = Variable(xp.asarray(a))
    for y in (F.astype(x, dst), x.astype(dst)):
        assert y.dtype == dst and y.creator is not None
        np.testing.assert_array_equal(cuda.as_numpy(y.data), a.astype(dst))
    g = _rand((2, 3), 23, dst)
    y = x.astype(dst)
    y.grad = Variable(xp.asarray(g))
    y.backward()
    assert x.grad.dtype == src, "勾配は元の dtype で戻ります"
    np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), g.astype(src))


def test_astype_to_the_same_dtype_returns_the_same_variable():
    x = Variable(np.ones(3, dtype=np.float32))
    assert F.astype(x, np.float32) is x and x.astype("float32") is x


def test_astype_gradient_check_and_mixed_precision_chain():
    gradient_check(lambda v: F.astype(v, np.float32).astype(np.float64) * v, _rand((3, 5), 24),
                   eps=1e-2, rtol=1e-4, atol=1e-4)
    x = Variable(np.array([0.5, -1.0], dtype=np.float32))
    y = (F.exp(x.astype(np.float16)).astype(np.float32)).sum()  # float16 で計算して float32 に戻す
    y.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.data, np.exp([0.5, -1.0]), rtol=2e-3)


# --- mean ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis, keepdims", [(None, False), (None, True), (0, False), (1, True), (-1, False),
                                            ((0, 2), False), ((0, -1), True)])
def test_mean_forward_and_gradient(xp, axis, keepdims):
    a = _rand((3, 4, 5), 25, np.float32)
    x = Variable(xp.asarray(a))
    y = F.mean(x, axis=axis, keepdims=keepdims)
    expected = a.astype(np.float64).mean(axis=axis, keepdims=keepdims)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(cuda.as_numpy(y.data), expected, rtol=1e-5)
    g = _rand(expected.shape, 26, np.float32)
    y.grad = Variable(xp.asarray(g))
    y.backward()
    n = a.size // max(expected.size, 1)
    g_full = np.broadcast_to(g.reshape(a.mean(axis=axis, keepdims=True).shape), a.shape) / n
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data), g_full, rtol=1e-6)
    if xp is np:
        gradient_check(lambda v: F.mean(v, axis=axis, keepdims=keepdims), _rand((3, 4, 5), 27))
        gradient_check(_second_order(lambda v: F.mean(v, axis=axis, keepdims=keepdims) ** 2), _rand((3, 4, 5), 28))


def test_mean_of_an_int_array_is_not_truncated():
    # int の平均を int の dtype にそろえると 1.5 が 1 に切り捨てられる（NumPy は float64、PyTorch はエラー）
    x = Variable(np.array([1, 2], dtype=np.int64))
    try:
        y = F.mean(x)
    except TypeError as e:
        assert "mean" in str(e)  # PyTorch のように、はっきりしたエラーにするのでもよい
        return
    assert np.issubdtype(y.dtype, np.floating) and float(y.data) == 1.5, f"int の平均が {y.data!r}（{y.dtype}）です"


# --- concat と stack -----------------------------------------------------------------------------

@pytest.mark.parametrize("axis, shapes", [(0, [(2, 3), (1, 3), (4, 3)]), (1, [(2, 1), (2, 3), (2, 2)]),
                                          (-1, [(2, 2, 1), (2, 2, 3), (2, 2, 2)])])
def test_concat_forward_and_gradients(xp, axis, shapes):
    arrays = [_rand(s, 30 + i, np.float32) for i, s in enumerate(shapes)]
    xs = [Variable(xp.asarray(a)) for a in arrays]
    y = F.concat(xs, axis=axis)
    expected = np.concatenate(arrays, axis=axis)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(cuda.as_numpy(y.data), expected)
    g = _rand(expected.shape, 33, np.float32)
    y.grad = Variable(xp.asarray(g))
    y.backward()
    bounds = np.cumsum([a.shape[axis] for a in arrays])[:-1]
    for x, part in zip(xs, np.split(g, bounds, axis=axis)):
        assert x.grad.dtype == np.float32
        np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), part)
    if xp is np:
        f = lambda *vs: F.concat(list(vs), axis=axis)  # noqa: E731
        gradient_check(f, *[a.astype(np.float64) for a in arrays])
        gradient_check(lambda *vs: F.concat(list(vs), axis=axis) ** 2, *[a.astype(np.float64) for a in arrays])


def test_concat_errors_are_japanese():
    with pytest.raises(ValueError, match=r"concat の入力は、axis=0 以外の軸の長さをそろえてください.*\(2, 3\), \(2, 4\)"):
        F.concat([Variable(np.ones((2, 3))), Variable(np.ones((2, 4)))], axis=0)
    with pytest.raises(ValueError, match="concat"):
        F.concat([Variable(np.ones((2, 3))), Variable(np.ones(3))])
    with pytest.raises(ValueError, match="1 個以上"):
        F.concat([])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stack_forward_and_gradients(xp, axis):
    arrays = [_rand((2, 3), 40 + i, np.float32) for i in range(3)]
    xs = [Variable(xp.asarray(a)) for a in arrays]
    y = F.stack(xs, axis=axis)
    expected = np.stack(arrays, axis=axis)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_array_equal(cuda.as_numpy(y.data), expected)
    g = _rand(expected.shape, 44, np.float32)
    y.grad = Variable(xp.asarray(g))
    y.backward()
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), np.take(g, i, axis=axis))
    if xp is np:
        gradient_check(lambda a, b: F.stack([a, b], axis=axis) ** 2, _rand((2, 3), 45), _rand((2, 3), 46))


@pytest.mark.parametrize("axis", [3, -4])
def test_stack_rejects_an_axis_out_of_range(axis):
    # numpy.stack は AxisError（ValueError の一種）。(2, 3) を axis=3 で積むと、黙って (2, 2, 3) になってはいけない
    a = Variable(np.ones((2, 3)))
    with pytest.raises(ValueError):
        F.stack([a, a], axis=axis)


def test_concat_rejects_an_axis_out_of_range():
    a = Variable(np.ones((2, 3)))
    for axis in (2, -3):
        with pytest.raises(ValueError):
            F.concat([a, a], axis=axis)


def test_stack_errors_are_japanese():
    with pytest.raises(ValueError, match=r"stack には同じ shape の入力.*\(2, 3\), \(3, 2\)"):
        F.stack([Variable(np.ones((2, 3))), Variable(np.ones((3, 2)))])
    with pytest.raises(ValueError, match="stack"):
        F.stack([])


# --- where --------------------------------------------------------------------------------------

def test_where_forward_gradients_and_broadcasting(xp):
    cond = np.array([[True], [False], [True]])  # (3, 1)
    a0 = _rand((3, 4), 50, np.float32)
    a1 = _rand((4,), 51, np.float32)
    for c in (xp.asarray(cond), Variable(xp.asarray(cond))):
        x0, x1 = Variable(xp.asarray(a0)), Variable(xp.asarray(a1))
        y = F.where(c, x0, x1)
        assert y.dtype == np.float32 and y.shape == (3, 4)
        np.testing.assert_array_equal(cuda.as_numpy(y.data), np.where(cond, a0, a1))
        g = _rand((3, 4), 52, np.float32)
        y.grad = Variable(xp.asarray(g))
        y.backward()
        np.testing.assert_array_equal(cuda.as_numpy(x0.grad.data), np.where(cond, g, 0))
        np.testing.assert_allclose(cuda.as_numpy(x1.grad.data), np.where(cond, 0, g).sum(axis=0), rtol=1e-6)
        assert x0.grad.dtype == np.float32 and x1.grad.dtype == np.float32
    if xp is np:
        gradient_check(lambda p, q: F.where(cond, p, q), _rand((3, 4), 53), _rand((4,), 54))
        gradient_check(_second_order(lambda p: F.where(cond, p * p, -p)), _rand((3, 4), 55))


@pytest.mark.parametrize("other", [0.5, 2, np.float64(0.5), np.int64(3)])
def test_where_with_a_number_takes_the_variable_dtype(other):
    x = Variable(np.array([1.0, -2.0, 3.0], dtype=np.float32))
    cond = np.array([True, False, True])
    for y, expected in ((F.where(cond, x, other), [1.0, other, 3.0]), (F.where(cond, other, x), [other, -2.0, other])):
        assert y.dtype == np.float32, f"where に {type(other).__name__} を渡すと dtype が {y.dtype} になりました"
        np.testing.assert_allclose(y.data, expected)
    y = F.where(cond, x, other)
    y.grad = np.ones(3, dtype=np.float32)
    y.backward()
    np.testing.assert_array_equal(x.grad.data, [1.0, 0.0, 1.0])


def test_where_rejects_a_non_bool_condition():
    x = Variable(np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="where の condition には真偽値の配列を渡してください（受け取った dtype: int64）"):
        F.where(np.array([1, 0, 1]), x, x)
    with pytest.raises(ValueError):
        F.where(np.array([True, False]), x, x)


@pytest.mark.parametrize("shape, axes", [((3, 3, 3), (1, 2, 0)), ((2, 2, 2, 2), (3, 0, 1, 2)), ((4, 4), (1, 0)),
                                         ((2, 3, 3), (0, 2, 1))])
def test_transpose_gradient_uses_the_inverse_permutation(xp, shape, axes):
    # 辺の長さが等しいと、逆でない並べ替えでも shape は合ってしまう。乱数の勾配で値まで比べる
    a = _rand(shape, 60, np.float32)
    g = _rand(tuple(shape[i] for i in axes), 61, np.float32)
    x = Variable(xp.asarray(a))
    y = x.transpose(axes)
    np.testing.assert_array_equal(cuda.as_numpy(y.data), np.transpose(a, axes))
    y.grad = Variable(xp.asarray(g))
    y.backward()
    np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), np.transpose(g, np.argsort(axes)))
