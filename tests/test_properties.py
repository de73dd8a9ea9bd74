"""第19章: hypothesis による性質のテスト（どんな shape・値でも成り立つはずのこと）。"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mini_dl.functions as F
from mini_dl import Variable

FINITE = st.floats(-50, 50, width=32)
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(hnp.arrays(np.float32, SHAPES, elements=FINITE))
def test_softmax_is_a_distribution_along_the_last_axis(x):
    p = F.softmax(Variable(x), axis=-1).data
    assert p.shape == x.shape and p.dtype == np.float32
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)
    # 行ごとに同じ数を足しても変わらない
    np.testing.assert_allclose(F.softmax(Variable(x + np.float32(7)), axis=-1).data, p, atol=1e-5)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(hnp.arrays(np.float32, SHAPES, elements=FINITE))
def test_gradient_of_sum_is_ones(x):
    v = Variable(x)
    F.sum(v).backward()
    assert v.grad.shape == x.shape and v.grad.dtype == np.float32
    assert np.all(v.grad.data == 1)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.data())
def test_reshape_round_trip_is_identity_for_values_and_gradients(data):
    x = data.draw(hnp.arrays(np.float32, SHAPES, elements=FINITE))
    v = Variable(x)
    y = F.reshape(F.reshape(v, (-1,)), x.shape)
    assert np.array_equal(y.data, x)
    g = data.draw(hnp.arrays(np.float32, x.shape, elements=FINITE))
    y.grad = Variable(g)
    y.backward()
    assert np.array_equal(v.grad.data, g)
