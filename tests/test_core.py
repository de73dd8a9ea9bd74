"""Variable と Function の基本、Square・Exp・Add の順伝播と逆伝播のテスト。"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mini_dl import Add, Exp, Function, Square, Variable, add, as_array, cuda, exp, numerical_diff, square

SHAPES = [(), (1,), (3,), (2, 3), (2, 1, 4)]
ELEMENTWISE = {
    "Square": (Square, lambda x: x ** 2, lambda x: 2 * x),
    "Exp": (Exp, np.exp, np.exp),
}


def _random(xp, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return xp.asarray(rng.uniform(-2, 2, size=shape).astype(dtype))


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


@pytest.mark.parametrize("bad", [[1.0, 2.0], "1.0", (1,), True, {"a": 1}])
def test_variable_rejects_other_types_with_japanese_message(bad):
    with pytest.raises(TypeError, match=f"受け取った型: {type(bad).__name__}"):
        Variable(bad)


# --- Function -------------------------------------------------------------------------------

def test_function_requires_variable():
    with pytest.raises(TypeError, match="Square には Variable を渡してください（受け取った型: ndarray）"):
        Square()(np.array(1.0))


def test_base_function_methods_are_abstract():
    f = Function()
    with pytest.raises(NotImplementedError, match="Function.forward"):
        f(Variable(np.array(1.0)))
    with pytest.raises(NotImplementedError, match="Function.backward"):
        f.backward(np.array(1.0))


def test_function_remembers_input_and_wraps_output():
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    f = Square()
    y = f(x)
    assert isinstance(y, Variable) and f.inputs == (x,) and f.outputs == [y]
    assert y.creator is f and y.generation == 1 and f.generation == 0


def test_as_array():
    a = np.ones(3, dtype=np.float32)
    assert as_array(a) is a
    s = as_array(np.float32(2.0))
    assert isinstance(s, np.ndarray) and s.shape == () and s.dtype == np.float32
    assert isinstance(as_array(3.0), np.ndarray)


def test_zero_dim_output_is_an_array():
    y = square(Variable(np.array(3.0, dtype=np.float32)))
    assert isinstance(y.data, np.ndarray) and y.data.dtype == np.float32 and y.data == 9.0


# --- Square / Exp: 順伝播の参照値・float32・勾配 -------------------------------------------

@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_numpy_and_keeps_float32(xp, name, shape):
    cls, ref, _ = ELEMENTWISE[name]
    x = _random(xp, shape, np.float32)
    y = cls()(Variable(x))
    assert y.data.dtype == xp.float32 and y.data.shape == shape
    np.testing.assert_allclose(cuda.as_numpy(y.data), ref(cuda.as_numpy(x)), rtol=1e-6,
                               err_msg=f"{name} の順伝播")


def test_forward_hand_computed_values():
    assert square(Variable(np.array(3.0))).data == 9.0
    np.testing.assert_allclose(exp(Variable(np.array([0.0, 1.0]))).data, [1.0, np.e])


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_central_difference(xp, name, shape):
    cls, _, _ = ELEMENTWISE[name]
    x = _random(xp, shape, np.float64, seed=1)
    f = cls()
    f(Variable(x))
    gy = xp.ones_like(x)
    analytic = cuda.as_numpy(f.backward(gy))
    numeric = numerical_diff(lambda v: cuda.as_numpy(cls()(Variable(xp.asarray(v))).data), cuda.as_numpy(x))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=f"{name} の勾配")


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_backward_scales_with_upstream_gradient_and_keeps_float32(xp, name):
    cls, _, deriv = ELEMENTWISE[name]
    x = _random(xp, (2, 3), np.float32, seed=2)
    gy = _random(xp, (2, 3), np.float32, seed=3)
    f = cls()
    f(Variable(x))
    gx = f.backward(gy)
    assert gx.dtype == xp.float32
    np.testing.assert_allclose(cuda.as_numpy(gx), cuda.as_numpy(deriv(x) * gy), rtol=1e-6)


def test_manual_backprop_through_a_composite():
    # y = (exp(x^2))^2 の dy/dx = 4x exp(2x^2)
    x = Variable(np.array(0.5))
    A, B, C = Square(), Exp(), Square()
    a = A(x)
    b = B(a)
    y = C(b)
    y.grad = np.array(1.0)
    b.grad = C.backward(y.grad)
    a.grad = B.backward(b.grad)
    x.grad = A.backward(a.grad)
    np.testing.assert_allclose(x.grad, 4 * 0.5 * np.exp(2 * 0.25), rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
                  elements=st.floats(-3, 3)))
def test_property_shapes_and_derivatives(x):
    for name, (cls, ref, deriv) in ELEMENTWISE.items():
        f = cls()
        y = f(Variable(x))
        assert y.data.shape == x.shape and y.data.dtype == x.dtype, name
        np.testing.assert_allclose(f.backward(np.ones_like(x)), deriv(x), rtol=1e-12, err_msg=name)
