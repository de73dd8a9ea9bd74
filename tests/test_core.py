"""Variable と Function の基本、Config と no_grad、メモリの解放（弱参照）、retain_grad のテスト。"""
import gc
import weakref

import numpy as np
import pytest

import mini_dl
from mini_dl import Config, Function, Variable, as_array, as_variable, cuda, no_grad, using_config
from mini_dl.functions import Exp, Square, exp, square

# --- Variable -------------------------------------------------------------------------------


def test_variable_keeps_array_and_dtype(xp):
    data = xp.arange(6, dtype=xp.float64).reshape(2, 3)
    v = Variable(data, name="x")
    assert v.data is data and v.data.dtype == xp.float64
    assert v.name == "x" and v.grad is None


@pytest.mark.parametrize("value", [0.5, 3, -2.0])
def test_python_numbers_become_float32(value):
    v = Variable(value)
    assert isinstance(v.data, np.ndarray) and v.data.shape == () and v.data.dtype == np.float32
    assert v.data == np.float32(value)


def test_numpy_scalar_keeps_its_dtype():
    v = Variable(np.float64(1.5))
    assert isinstance(v.data, np.ndarray) and v.data.dtype == np.float64


def test_variable_accepts_none():
    assert Variable(None).data is None
    assert repr(Variable(None)) == "variable(None)"


@pytest.mark.parametrize("bad", [[1.0, 2.0], "1.0", (1,), True, {"a": 1}])
def test_variable_rejects_other_types_with_japanese_message(bad):
    with pytest.raises(TypeError, match=f"受け取った型: {type(bad).__name__}"):
        Variable(bad)


def test_properties_len_and_repr():
    v = Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert (v.shape, v.ndim, v.size, v.dtype, len(v)) == ((2, 3), 2, 6, np.float32, 2)
    assert repr(v) == "variable([[0. 1. 2.]\n          [3. 4. 5.]])"
    assert repr(Variable(np.array(1.5, dtype=np.float32))) == "variable(1.5)"
    assert v.T.shape == (3, 2)


# --- Function -------------------------------------------------------------------------------

def test_function_accepts_arrays_and_numbers():
    y = Square()(np.array([1.0, 2.0], dtype=np.float32))
    assert isinstance(y, Variable) and y.data.dtype == np.float32
    np.testing.assert_array_equal(y.data, [1.0, 4.0])
    assert Square()(3.0).data == 9.0


@pytest.mark.parametrize("bad", [[1.0], "x", None, True])
def test_function_rejects_other_types_naming_function_and_type(bad):
    with pytest.raises(TypeError, match=f"Square には Variable か ndarray を渡してください（受け取った型: {type(bad).__name__}）"):
        Square()(bad)


def test_base_function_methods_are_abstract():
    f = Function()
    with pytest.raises(NotImplementedError, match="Function.forward"):
        f(Variable(np.array(1.0)))
    with pytest.raises(NotImplementedError, match="Function.backward"):
        f.backward(Variable(np.array(1.0)))


def test_function_remembers_input_and_weakly_references_output():
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    f = Square()
    y = f(x)
    assert f.inputs == [x] and f.outputs[0]() is y
    assert y.creator is f and y.generation == 1 and f.generation == 0


def test_as_array_and_as_variable():
    a = np.ones(3, dtype=np.float32)
    assert as_array(a) is a
    s = as_array(np.float32(2.0))
    assert isinstance(s, np.ndarray) and s.shape == () and s.dtype == np.float32
    v = Variable(a)
    assert as_variable(v) is v
    w = as_variable(a)
    assert isinstance(w, Variable) and w.data is a


def test_zero_dim_output_is_an_array():
    y = square(Variable(np.array(3.0, dtype=np.float32)))
    assert isinstance(y.data, np.ndarray) and y.data.dtype == np.float32 and y.data == 9.0


# --- Config と no_grad ----------------------------------------------------------------------

def test_no_grad_builds_no_graph_and_restores_the_mode():
    x = Variable(np.ones(3, dtype=np.float32))
    with no_grad():
        assert Config.enable_backprop is False
        y = square(exp(x))
    assert y.creator is None and y.generation == 0
    assert Config.enable_backprop is True
    np.testing.assert_allclose(y.data, np.exp(1.0) ** 2, rtol=1e-6)
    assert square(x).creator is not None


def test_using_config_restores_even_after_an_exception():
    with pytest.raises(RuntimeError):
        with using_config("enable_backprop", False):
            raise RuntimeError
    assert Config.enable_backprop is True


def test_using_config_rejects_unknown_names():
    with pytest.raises(AttributeError, match="Config に設定 'enable_backprob' はありません"):
        with using_config("enable_backprob", False):
            pass


def test_no_grad_is_exported():
    assert mini_dl.no_grad is no_grad and mini_dl.using_config is using_config


# --- メモリ: 循環参照がないので、出力を消せばグラフは参照カウントだけで消える ---------------

def _graph_refs(n=5):
    x = Variable(np.ones(1000, dtype=np.float32))
    y = x
    funcs = []
    for _ in range(n):
        y = square(y)
        funcs.append(weakref.ref(y.creator))
    return x, y, funcs


def test_graph_is_freed_by_reference_counting_after_del():
    gc.disable()
    try:
        x, y, funcs = _graph_refs()
        assert all(f() is not None for f in funcs)
        del y
        assert all(f() is None for f in funcs), "出力を消してもグラフが残っています（循環参照？）"
    finally:
        gc.enable()


def test_graph_is_freed_after_backward_and_del():
    gc.disable()
    try:
        x, y, funcs = _graph_refs()
        y.grad = np.ones_like(y.data)
        y.backward()
        del y
        assert all(f() is None for f in funcs)
        assert x.grad is not None
    finally:
        gc.enable()


def test_no_grad_keeps_no_intermediate_arrays_alive():
    gc.disable()
    try:
        x = Variable(np.ones(1000, dtype=np.float32))
        with no_grad():
            a = square(x)
            ref = weakref.ref(a)
            y = exp(a)
            del a
        assert ref() is None, "no_grad のもとでは、途中の変数はすぐに消えるはずです"
        assert y.creator is None
    finally:
        gc.enable()


# --- retain_grad ----------------------------------------------------------------------------

def test_intermediate_gradients_are_dropped_unless_retained():
    x = Variable(np.array(0.5, dtype=np.float32))
    a = square(x)
    y = exp(a)
    y.backward()
    assert a.grad is None and y.grad is None and x.grad is not None
    x.cleargrad()
    a = square(x)
    y = exp(a)
    y.backward(retain_grad=True)
    np.testing.assert_allclose(a.grad.data, np.exp(0.25), rtol=1e-6)
    assert y.grad.data == 1.0 and y.grad.dtype == np.float32


def test_grad_is_a_variable_and_seed_arrays_are_wrapped():
    y = Variable(np.array(2.0, dtype=np.float32))
    y.backward()
    assert isinstance(y.grad, Variable) and y.grad.data == 1.0 and y.grad.dtype == np.float32
    x = Variable(np.ones(3, dtype=np.float32))
    z = square(x)
    z.grad = np.full(3, 2.0, dtype=np.float32)  # 配列で入れた出発点の勾配も使える
    z.backward()
    np.testing.assert_array_equal(x.grad.data, [4.0, 4.0, 4.0])


def test_seed_gradient_with_a_wrong_shape_is_rejected():
    z = square(Variable(np.ones(3, dtype=np.float32)))
    z.grad = np.ones(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"grad の shape \(2,\) が data の shape \(3,\) と違います"):
        z.backward()


def test_backward_returning_a_wrong_shape_is_rejected():
    class Bad(Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            return np.ones(5)

    y = Bad()(Variable(np.ones(3)))
    y.grad = np.ones(3)
    with pytest.raises(ValueError, match=r"Bad.backward が返した勾配の shape \(5,\) が、入力の shape \(3,\) と違います"):
        y.backward()


def test_exp_class_is_the_one_from_functions():
    assert isinstance(exp(Variable(np.array(0.0))).creator, Exp)


def test_python_numbers_passed_to_functions_become_float32():
    assert exp(2.0).dtype == np.float32
    assert mini_dl.add(2.0, 3).dtype == np.float32
    assert as_variable(1.5).dtype == np.float32


def test_unused_output_of_a_single_output_function_gets_zero_gradient():
    class Twice(Function):
        def forward(self, x):
            return 2 * x

        def backward(self, gy):
            return 2 * gy

    x = Variable(np.ones(2, dtype=np.float32))
    y = Twice()(x)
    f = y.creator
    f.backward  # noqa: B018
    # 出力の grad が None のまま関数の逆伝播が呼ばれても、0 が流れてきたとみなす
    from mini_dl.core import _output_grad
    g = _output_grad(f, 0, y)
    assert g.dtype == np.float32 and not g.data.any()


# --- detach と unchain_backward -------------------------------------------------------------

def test_detach_shares_the_array_and_cuts_the_graph(xp):
    x = Variable(xp.asarray(np.array([1.0, 2.0, 3.0], dtype=np.float32)))
    y = x * 2
    d = y.detach()
    assert d is not y and d.data is y.data and d.creator is None and d.grad is None
    z = (d * 3 + y).sum()  # d の側からは x に勾配が流れない: dz/dx = 2
    z.backward()
    assert d.grad is not None and x.grad.dtype == np.float32
    np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), [2.0, 2.0, 2.0])
    assert y.creator is not None  # 元の変数のグラフはそのまま


def test_detach_of_a_leaf_is_a_new_root():
    x = Variable(np.ones(2, dtype=np.float32))
    d = x.detach()
    (d * 5).sum().backward()
    assert x.grad is None and d.grad is not None


def _chain():
    x = Variable(np.full(1000, 0.5, dtype=np.float32))
    a = square(x)
    b = exp(a)
    y = square(b)
    return x, a, b, y


def test_unchain_backward_removes_every_creator_upstream():
    x, a, b, y = _chain()
    y.unchain_backward()
    assert y.creator is None and b.creator is None and a.creator is None and x.creator is None
    y.grad = np.ones_like(y.data)
    y.backward()  # y はグラフの根になったので、上流には何も流れない
    assert x.grad is None and a.grad is None and b.grad is None


def test_unchain_backward_in_the_middle_keeps_the_downstream_graph():
    x, a, b, y = _chain()
    b.unchain_backward()
    assert y.creator is not None and b.creator is None and a.creator is None
    y.grad = np.ones_like(y.data)
    y.backward()
    np.testing.assert_allclose(b.grad.data, 2 * b.data, rtol=1e-6)  # b は根になったので勾配が残る
    assert x.grad is None and a.grad is None


def test_unchain_backward_frees_the_functions():
    gc.disable()
    try:
        x, a, b, y = _chain()
        funcs = [weakref.ref(v.creator) for v in (a, b, y)]
        y.unchain_backward()
        assert all(f() is None for f in funcs), "unchain_backward の後も関数が残っています"
        assert x.data is not None and a.data is not None  # 変数そのものは消さない
    finally:
        gc.enable()


def test_unchain_backward_on_a_diamond_graph_visits_each_function_once():
    x = Variable(np.array(2.0))
    a = square(x)
    y = a * a + exp(a)  # a が 2 本の道で使われる
    y.unchain_backward()
    assert a.creator is None and y.creator is None


# --- mini_dl.backward（複数の出力から 1 回で逆伝播する） -----------------------------------

def _two_outputs(xp):
    x = Variable(xp.asarray(np.array([0.3, -1.2, 2.0], dtype=np.float32)))
    return x, x * x, mini_dl.sin(x)


def test_backward_of_two_outputs_equals_backward_of_their_weighted_sum(xp):
    g1 = xp.asarray(np.array([1.0, 2.0, -1.0], dtype=np.float32))
    g2 = xp.asarray(np.array([0.5, -3.0, 4.0], dtype=np.float32))
    x, y1, y2 = _two_outputs(xp)
    mini_dl.backward([y1, y2], [g1, g2])
    got = cuda.as_numpy(x.grad.data)
    x, y1, y2 = _two_outputs(xp)
    (y1 * g1 + y2 * g2).sum().backward()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, cuda.as_numpy(x.grad.data), rtol=1e-6)
    xd = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(got, 2 * xd * cuda.as_numpy(g1) + np.cos(xd) * cuda.as_numpy(g2), rtol=1e-5)


def test_backward_with_none_uses_the_existing_grad_or_one():
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    y1 = x * 3  # 要素 2 個: grad を先に入れておく
    y2 = (x * x).sum()  # 要素 1 個: 1 から始める
    y1.grad = Variable(np.array([1.0, 10.0], dtype=np.float32))
    mini_dl.backward([y1, y2])
    np.testing.assert_array_equal(x.grad.data, [3 + 2, 30 + 4])
    x.cleargrad()
    y1, y2 = x * 3, (x * x).sum()
    y1.grad = Variable(np.array([1.0, 10.0], dtype=np.float32))
    mini_dl.backward([y1, y2], [None, 2.0])
    np.testing.assert_array_equal(x.grad.data, [3 + 4, 30 + 8])


def test_backward_accepts_a_single_variable_and_a_single_grad():
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    mini_dl.backward(x * 3, np.array([2.0, 1.0], dtype=np.float32))
    np.testing.assert_array_equal(x.grad.data, [6.0, 3.0])
    x.cleargrad()
    mini_dl.backward([(x * 3).sum()])
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0])


def test_backward_with_the_same_output_twice_adds_the_seeds():
    x = Variable(np.array([1.0, 2.0]))
    y = x * 3
    mini_dl.backward([y, y], [np.array([1.0, 1.0]), np.array([10.0, 10.0])])
    np.testing.assert_array_equal(x.grad.data, [33.0, 33.0])  # torch.autograd.backward([y, y], [g1, g2]) と同じ


def test_backward_rejects_wrong_number_and_shape_of_grads_in_japanese():
    x = Variable(np.ones(3, dtype=np.float32))
    y1, y2 = x * 2, x * 3
    with pytest.raises(ValueError, match="grads の数（1 個）を outputs の数（2 個）と同じに"):
        mini_dl.backward([y1, y2], [np.ones(3, dtype=np.float32)])
    with pytest.raises(ValueError, match=r"grad の shape \(2,\) が data の shape \(3,\) と違います"):
        mini_dl.backward([y1], [np.ones(2, dtype=np.float32)])
    with pytest.raises(ValueError, match=r"要素が 1 個の変数だけです（この変数の shape: \(3,\)）"):
        mini_dl.backward([y1])


@pytest.mark.parametrize("seed", [2.0, np.float64(2.0), np.full(3, 2.0), Variable(np.full(3, 2.0, dtype=np.float32))],
                         ids=["python_float", "np_float64", "float64_array", "float32_variable"])
def test_backward_seed_takes_the_dtype_of_the_output(xp, seed):
    x = Variable(xp.asarray(np.array([1.0, 2.0, 3.0], dtype=np.float32)))
    y = x * x
    if isinstance(seed, np.ndarray):
        seed = xp.asarray(seed)
    elif isinstance(seed, Variable):
        seed = Variable(xp.asarray(seed.data))
    if (seed.data if isinstance(seed, Variable) else xp.asarray(seed)).ndim == 0:  # CuPy の配列にも .data がある
        y = y.sum()  # 数の seed は要素 1 個の出力に
    mini_dl.backward([y], [seed], retain_grad=True)
    assert y.grad.dtype == np.float32 and x.grad.dtype == np.float32
    assert cuda.get_array_module(y.grad.data) is xp
    np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), [4.0, 8.0, 12.0])


def test_python_float_seed_in_grad_keeps_float32():
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    y = (x * x).sum()
    y.grad = 1.0
    y.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.data, [2.0, 4.0])


class _Checkpointed(Function):
    """テスト用: 順伝播では途中の値を捨て、逆伝播で計算し直して ``mini_dl.backward`` を呼ぶ（勾配チェックポイント）。"""

    def __init__(self, f):
        self.f = f

    def forward(self, x):
        with no_grad():
            return self.f(Variable(x)).data

    def backward(self, gy):
        x = Variable(self.inputs[0].data)
        with using_config("enable_backprop", True):
            y = self.f(x)
        mini_dl.backward([y], [gy])  # 外側の逆伝播の途中で、もう 1 回逆伝播する
        return x.grad


def test_backward_can_be_called_inside_a_function_backward():
    def block(v):
        return mini_dl.tanh(v * v) * 3

    a = np.array([0.2, -0.7, 1.1], dtype=np.float32)
    x = Variable(a.copy())
    y = (_Checkpointed(block)(x) * x).sum()
    y.backward()
    ref = Variable(a.copy())
    (block(ref) * ref).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.data, ref.grad.data, rtol=1e-6)
    assert Config.enable_backprop is True
