"""第9章: Parameter・Layer・Linear・Model・Sequential・MLP のテスト。"""
import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Parameter, Variable, initializers, optimizers
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
    expected = initializers.lecun_normal((3, 4), np.random.default_rng(1), np.float32)
    np.testing.assert_array_equal(layer.W.data, expected)  # 既定の初期化は lecun_normal、乱数は seed の生成器から
    assert not np.array_equal(L.Linear(4, seed=2, in_size=3).W.data, expected)
    assert [p.name for p in L.Linear(2, nobias=True, in_size=3).params()] == ["W"]


def test_linear_default_init_has_std_sqrt_1_over_d():
    W = L.Linear(500, in_size=1000, seed=0).W.data  # 50 万個: std の相対誤差はおよそ 0.1%
    np.testing.assert_allclose(W.std(), np.sqrt(1 / 1000), rtol=0.01)
    assert abs(W.mean()) < 5 * np.sqrt(1 / 1000) / np.sqrt(W.size)


def test_linear_accepts_inputs_with_leading_axes():
    layer = L.Linear(3, seed=0)
    x = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 5, 3) and layer.W.shape == (4, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.data, x @ layer.W.data + layer.b.data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: L.Linear(784, 100),  # PyTorch の nn.Linear(in, out) の癖
    lambda: L.Linear(10, True),  # nobias を位置で
    lambda: L.Dropout(0.5, 0),  # seed を位置で
    lambda: MLP((10, 1), F.relu),  # activation を位置で
])
def test_options_after_the_first_argument_are_keyword_only(make):
    with pytest.raises(TypeError, match="positional argument"):
        make()


def test_linear_with_keywords_builds_the_pytorch_shaped_layer():
    layer = L.Linear(100, in_size=784, seed=0)
    assert layer.W.shape == (784, 100) and layer.b.shape == (100,)  # W は (入力, 出力)


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
    assert model.eval() is model
    assert not model.training and all(not layer.training for layer in model.layers)
    assert model.train() is model and all(layer.training for layer in model.layers)
    model.train(False)
    assert not any(layer.training for layer in model.iter_layers())


class _Nested(Model):
    """Model → LayerList → Sequential → Dropout と、入れ子の奥に Dropout がある モデル。"""

    def __init__(self):
        super().__init__()
        self.blocks = L.LayerList([Sequential(L.Linear(4, in_size=4, seed=0), L.Dropout(0.5, seed=1))])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_eval_reaches_a_dropout_nested_in_models_and_layer_lists():
    model = _Nested()
    dropout = model.blocks[0].l1
    x = np.ones((8, 4), dtype=np.float32)
    plain = F.linear(x, model.blocks[0].l0.W, model.blocks[0].l0.b).data
    assert not np.allclose(model(x).data, plain)  # 学習モードでは要素が消える
    model.eval()
    assert dropout.training is False
    assert all(not layer.training for layer in model.iter_layers())
    np.testing.assert_array_equal(model(x).data, plain)  # 推論モードでは素通し
    model.train()
    assert dropout.training is True and not np.allclose(model(x).data, plain)


def test_train_and_eval_exist_on_every_layer():
    layer = L.Linear(2, in_size=2)
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    d = L.Dropout(0.5)
    d.eval()
    x = np.ones((3, 3), dtype=np.float32)
    np.testing.assert_array_equal(d(x).data, x)


# --- 共有したパラメータ ---------------------------------------------------------------------------

def test_tied_parameter_is_yielded_once_under_its_first_name():
    layer = L.Layer()
    w = Parameter(np.ones(2, dtype=np.float32))
    layer.a = w
    layer.other = Parameter(np.zeros(1, dtype=np.float32))
    layer.b = w  # 同じパラメータを 2 か所に（重みの共有）
    assert [id(p) for p in layer.params()] == [id(w), id(layer.other)]
    assert [n for n, _ in layer.named_params()] == ["a", "other"]


def test_the_same_layer_assigned_twice_counts_its_parameters_once():
    model = Model()
    shared = L.Linear(3, in_size=2, seed=0)
    model.enc = shared
    model.dec = shared
    model.head = L.Linear(1, in_size=3, seed=1)
    assert [n for n, _ in model.named_params()] == ["enc.W", "enc.b", "head.W", "head.b"]
    assert len(list(model.params())) == 4
    assert [type(layer).__name__ for layer in model.iter_layers()] == ["Model", "Linear", "Linear"]


def test_tied_layers_share_weights_between_an_embedding_like_matrix_and_its_transpose():
    class Tied(Model):
        def __init__(self):
            super().__init__()
            self.W = Parameter(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
            self.inner = L.Layer()
            self.inner.W = self.W  # 入れ子の層から同じパラメータを参照

        def forward(self, x):
            return F.matmul(F.matmul(x, self.W), self.inner.W.T)

    model = Tied()
    assert [n for n, _ in model.named_params()] == ["W"]


@pytest.mark.parametrize("make_opt", [lambda: optimizers.SGD(lr=0.1), lambda: optimizers.Adam(lr=0.1)])
def test_an_optimizer_moves_a_tied_weight_once_per_step(make_opt):
    model = Model()
    shared = L.Linear(2, in_size=3, nobias=True, seed=0)
    model.first = shared
    model.second = shared
    x = np.ones((1, 3), dtype=np.float32)
    loss = F.sum(model.first(x)) + F.sum(model.second(x))  # W の勾配は 2 つの使い方の和 = 2
    before = shared.W.data.copy()
    opt = make_opt().setup(model)
    model.cleargrads()
    loss.backward()
    np.testing.assert_array_equal(shared.W.grad.data, np.full((3, 2), 2.0))
    opt.update()
    step = before - shared.W.data
    if isinstance(opt, optimizers.SGD):
        np.testing.assert_allclose(step, np.full((3, 2), 0.2), rtol=1e-6)  # 2 回動かせば 0.4
    else:
        np.testing.assert_allclose(step, np.full((3, 2), 0.1), rtol=1e-4)  # Adam の最初の 1 歩は lr
        assert list(opt.state) == ["first.W"]  # 状態も 1 つだけ
    assert shared.W.dtype == np.float32


# --- LayerList -------------------------------------------------------------------------------------

class _Stack(Model):
    def __init__(self, n):
        super().__init__()
        self.blocks = L.LayerList(L.Linear(3, in_size=3, seed=i) for i in range(n))
        self.head = L.Linear(1, in_size=3, seed=99)

    def forward(self, x):
        for block in self.blocks:
            x = F.relu(block(x))
        return self.head(x)


def test_layer_list_registers_its_layers():
    model = _Stack(3)
    assert [n for n, _ in model.named_params()] == [
        "blocks.0.W", "blocks.0.b", "blocks.1.W", "blocks.1.b", "blocks.2.W", "blocks.2.b", "head.W", "head.b"]
    assert len(model.blocks) == 3
    assert model.blocks[1] is model.blocks.__dict__["1"] and model.blocks[-1] is model.blocks[2]
    extra = L.Linear(3, in_size=3, seed=5)
    model.blocks.append(extra)
    assert len(model.blocks) == 4 and model.blocks[3] is extra
    assert [n for n, _ in model.named_params()][6:8] == ["blocks.3.W", "blocks.3.b"]
    y = model(np.ones((2, 3), dtype=np.float32))
    y.grad = Variable(np.ones((2, 1), dtype=np.float32))
    model.cleargrads()
    y.backward()
    assert all(p.grad is not None for p in model.params())


def test_a_plain_python_list_of_layers_is_not_registered():
    model = Model()
    model.blocks = [L.Linear(2, in_size=2)]  # ただのリスト: Layer からは見えない
    assert list(model.params()) == []


@pytest.mark.parametrize("bad", [F.relu, np.ones(2), Parameter(np.ones(2))])
def test_layer_list_append_rejects_non_layers(bad):
    layers = L.LayerList()
    with pytest.raises(TypeError, match="LayerList に入れられるのは Layer だけです"):
        layers.append(bad)
    assert len(layers) == 0


def test_layer_list_cannot_be_called():
    with pytest.raises(TypeError, match="LayerList"):
        L.LayerList([L.Linear(2)])(np.ones((1, 2), dtype=np.float32))


def test_layer_list_save_and_load_use_nested_keys(tmp_path):
    model = _Stack(2)
    path = tmp_path / "stack.npz"
    model.save_weights(path)
    with np.load(path) as npz:
        assert sorted(npz.files) == sorted(["blocks.0.W", "blocks.0.b", "blocks.1.W", "blocks.1.b", "head.W", "head.b"])
    other = _Stack(2)
    for p in other.params():
        p.data = np.zeros_like(p.data)
    other.load_weights(path)
    for (n1, p1), (n2, p2) in zip(model.named_params(), other.named_params()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)


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


def test_layer_call_passes_keyword_arguments_to_forward():
    """``layer(x, causal=True)`` のキーワード引数も ``forward`` に届く（位置引数で渡したときと同じ結果）。"""
    from mini_dl.layers import TransformerBlock

    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    block = TransformerBlock(8, 2, seed=0)
    np.testing.assert_array_equal(block(x, None, False).data, block(x, causal=False).data)
    assert not np.array_equal(block(x, causal=True).data, block(x, causal=False).data)
