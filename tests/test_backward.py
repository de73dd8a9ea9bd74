"""第4章: 逆伝播の自動化（creator のリンク、世代、勾配の合流、複数の入出力）のテスト。"""
import numpy as np
import pytest

from mini_dl import Function, Variable, add, cuda, numerical_diff
from mini_dl.functions import Add
from mini_dl.functions import Exp, Square, exp, square


def test_creator_links_and_generations():
    x = Variable(np.array(1.0))
    a = square(x)
    b = exp(a)
    y = add(b, a)
    assert x.creator is None and x.generation == 0
    assert isinstance(a.creator, Square) and a.generation == 1
    assert isinstance(b.creator, Exp) and b.generation == 2
    assert isinstance(y.creator, Add) and y.creator.generation == 2 and y.generation == 3
    assert y.creator.inputs == [b, a]


def test_backward_of_a_chain_matches_the_formula(xp):
    # y = (e^{x^2})^2, dy/dx = 4x e^{2x^2}
    x = Variable(xp.asarray(np.array(0.5, dtype=np.float32)))
    y = square(exp(square(x)))
    y.backward()
    assert x.grad.dtype == xp.float32
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data), 4 * 0.5 * np.exp(0.5), rtol=1e-6)


def test_seed_gradient_is_one_with_the_same_dtype():
    y = Variable(np.array(2.0, dtype=np.float32))
    y.backward()
    assert y.grad.data == 1.0 and y.grad.dtype == np.float32


def test_reused_variable_accumulates_gradient():
    x = Variable(np.array(3.0))
    y = add(x, x)
    y.backward()
    assert x.grad.data == 2.0
    y = add(add(x, x), x)  # grad を消さずに続けると、前の勾配に足されてしまう
    y.backward()
    assert x.grad.data == 5.0
    x.cleargrad()
    y = add(add(x, x), x)
    y.backward()
    assert x.grad.data == 3.0


def test_diamond_graph_calls_each_function_once_in_generation_order():
    calls = []

    class Recorded(Square):
        def backward(self, gy):
            calls.append(self.name)
            return super().backward(gy)

    def rec(name, v):
        f = Recorded()
        f.name = name
        return f(v)

    x = Variable(np.array(2.0))
    a = rec("a", x)
    y = add(rec("b", a), rec("c", a))  # y = 2 x^4
    y.backward()
    assert sorted(calls[:2]) == ["b", "c"] and calls[2] == "a" and len(calls) == 3
    assert x.grad.data == 8 * 2.0 ** 3


def test_priority_queue_handles_deep_unbalanced_graphs():
    # 長い枝と短い枝が合流するグラフ: 世代順でないと a の勾配が足りないまま先へ進んでしまう
    x = Variable(np.array(0.3))
    a = square(x)
    long = a
    for _ in range(20):
        long = add(long, Variable(np.array(0.0)))
    y = add(long, exp(a))
    y.backward()
    expected = numerical_diff(lambda v: v ** 2 + np.exp(v ** 2), 0.3)
    np.testing.assert_allclose(x.grad.data, expected, rtol=1e-7)


def test_complex_graph_matches_numerical_difference():
    def f(v):
        a = square(v)
        b = exp(a)
        c = add(square(b), add(a, v))
        return add(exp(c), square(add(c, a)))

    x0 = np.array([0.1, -0.4, 0.7])
    x = Variable(x0.copy())
    y = f(x)
    y.grad = np.ones_like(y.data)  # 要素が 3 個なので、出発点の勾配を自分で入れる
    y.backward()
    numeric = numerical_diff(lambda v: f(Variable(v)).data, x0)
    np.testing.assert_allclose(x.grad.data, numeric, rtol=1e-6, err_msg="複雑なグラフの逆伝播")


def test_backward_on_non_scalar_without_seed_is_rejected_in_japanese():
    y = square(Variable(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"要素が 1 個の変数だけです（この変数の shape: \(2, 3\)）"):
        y.backward()


def test_add_forward_and_backward(xp):
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((2, 3)).astype(np.float32))
    b = xp.asarray(rng.standard_normal((2, 3)).astype(np.float32))
    x0, x1 = Variable(a), Variable(b)
    y = add(x0, x1)
    np.testing.assert_allclose(cuda.as_numpy(y.data), cuda.as_numpy(a + b))
    g = rng.standard_normal((2, 3)).astype(np.float32)
    y.grad = xp.asarray(g)
    y.backward()
    for x in (x0, x1):
        assert x.grad.dtype == xp.float32
        np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), g)


class Split(Function):
    """テスト用: 1 つの入力を 2 つの出力 (2x, x^2) に分ける関数。"""

    def forward(self, x):
        return 2 * x, x ** 2

    def backward(self, gy0, gy1):
        return 2 * gy0 + 2 * self.inputs[0].data * gy1


def test_multiple_outputs_and_unused_output_gets_zero_gradient():
    x = Variable(np.array(3.0))
    p, q = Split()(x)
    y = add(p, q)  # 2x + x^2
    y.backward()
    assert x.grad.data == 2 + 2 * 3.0
    x.cleargrad()
    p, q = Split()(x)
    p.backward()  # q は使われないので、q からの勾配は 0
    assert x.grad.data == 2.0


def test_backward_must_return_one_gradient_per_input():
    class Bad(Function):
        def forward(self, x0, x1):
            return x0 + x1

        def backward(self, gy):
            return gy

    x = Variable(np.array(1.0))
    y = Bad()(x, Variable(np.array(2.0)))
    with pytest.raises(ValueError, match="Bad.backward は入力の数（2 個）だけ勾配を返します"):
        y.backward()


def test_shared_gradients_are_never_accumulated_in_place(xp):
    # Add の逆伝播は同じ勾配を両方の入力に渡す。あとから足すときに、その配列を書き換えてはいけない
    g = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    p = Variable(xp.ones(3, dtype=xp.float32))
    q = Variable(xp.ones(3, dtype=xp.float32))
    s = add(p, q)
    y = add(s, p)  # p には 2 本の道から勾配が届く
    seed = xp.asarray(g.copy())
    y.grad = seed
    y.backward()
    np.testing.assert_array_equal(cuda.as_numpy(seed), g)  # 出発点の配列もそのまま
    np.testing.assert_array_equal(cuda.as_numpy(q.grad.data), g)
    np.testing.assert_array_equal(cuda.as_numpy(p.grad.data), 2 * g)
