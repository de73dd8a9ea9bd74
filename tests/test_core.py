"""Variable と Function の基本、Config と no_grad、メモリの解放（弱参照）、retain_grad のテスト。"""
import gc
import weakref

import numpy as np
import pytest

import mini_dl
from mini_dl import Config, Function, Variable, as_array, as_variable, no_grad, using_config
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
