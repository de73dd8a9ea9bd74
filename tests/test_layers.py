"""第9章: Parameter・Layer・Linear・Model・Sequential・MLP のテスト。"""
import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Parameter, Variable
from mini_dl.models import MLP, Model, Sequential


def test_parameter_is_a_variable():
    p = Parameter(np.ones(3, dtype=np.float32))
    assert isinstance(p, Variable) and p.dtype == np.float32


def test_params_are_collected_in_assignment_order_and_nested():
    class Net(Model):
        def __init__(self):
            super().__init__()
            self.z = Parameter(np.zeros(1), name="z")
            self.inner = L.Linear(2, in_size=3, seed=0)
            self.a = Parameter(np.zeros(2), name="a")
            self.not_param = Variable(np.zeros(1))

    net = Net()
    names = [name for name, _ in net.named_params()]
    assert names == ["z", "inner.W", "inner.b", "a"]
    assert [id(p) for p in net.params()] == [id(p) for p in net.params()]  # 何度呼んでも同じ順番
    net.z = Parameter(np.ones(1))  # 同じ名前に代入し直しても順番は変わらない
    assert [name for name, _ in net.named_params()] == names


def test_linear_lazy_initialisation_shapes_dtype_and_seed():
    layer = L.Linear(4, seed=1)
    assert layer.W.data is None
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    y = layer(x)
    assert y.shape == (5, 4) and y.dtype == np.float32
    assert layer.W.shape == (3, 4) and layer.W.dtype == np.float32 and layer.b.shape == (4,)
    same = L.Linear(4, seed=1)
    same(x)
    np.testing.assert_array_equal(layer.W.data, same.W.data)
    assert 0.3 < layer.W.data.std() * np.sqrt(3) < 2.0  # 標準偏差はおよそ sqrt(1/D)
    assert [p.name for p in L.Linear(2, nobias=True, in_size=3).params()] == ["W"]


def test_cleargrads_and_gradients_of_a_linear_layer():
    layer = L.Linear(2, in_size=3, seed=0)
    x = Variable(np.ones((4, 3), dtype=np.float32))
    y = F.sum(layer(x))
    y.backward()
    np.testing.assert_allclose(layer.W.grad.data, np.full((3, 2), 4.0))
    np.testing.assert_allclose(layer.b.grad.data, np.full(2, 4.0))
    layer.cleargrads()
    assert all(p.grad is None for p in layer.params())


def test_sequential_with_layers_and_functions():
    model = Sequential(L.Linear(5, seed=0), F.relu, L.Linear(2, seed=1))
    y = model(np.ones((3, 4), dtype=np.float32))
    assert y.shape == (3, 2) and y.dtype == np.float32
    assert [n for n, _ in model.named_params()] == ["l0.W", "l0.b", "l2.W", "l2.b"]


def test_mlp_train_eval_switches_every_layer():
    model = MLP((8, 3), seed=0)
    assert model.training
    model.eval()
    assert not model.training and all(not layer.training for layer in model.layers)
    assert model.train() is model and all(layer.training for layer in model.layers)


def test_mlp_learns_a_noisy_sine_in_float32():
    rng = np.random.default_rng(0)
    x = rng.random((100, 1)).astype(np.float32)
    y = (np.sin(2 * np.pi * x) + 0.1 * rng.standard_normal((100, 1))).astype(np.float32)
    model = MLP((10, 1), seed=0)
    first = None
    for i in range(3000):
        loss = F.mean_squared_error(model(x), y)
        first = first if first is not None else float(loss.data)
        model.cleargrads()
        loss.backward()
        for p in model.params():
            p.data -= 0.2 * p.grad.data
    assert loss.dtype == np.float32 and all(p.dtype == np.float32 for p in model.params())
    assert float(loss.data) < 0.5 * first


def test_layer_forward_is_abstract():
    with pytest.raises(NotImplementedError, match="Layer.forward"):
        L.Layer()(np.ones(1))


def test_placeholders_and_removed_parameters():
    layer = L.Layer()
    layer.W = None  # あとで作るための置き場所
    layer.W = Parameter(np.ones(2, dtype=np.float32))
    assert [n for n, _ in layer.named_params()] == ["W"]
    layer.W = None  # 取り除いたパラメータは集めない
    assert list(layer.params()) == []
    layer.cleargrads()
