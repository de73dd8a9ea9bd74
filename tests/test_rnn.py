"""第17章: 再帰の層 ``RNN``・``LSTM``・``GRU``、``SineWave``・``SeqDataLoader``・``book_text`` のテスト。

層の式は、mini_dl を使わずに NumPy（float64）で手書きした式と比べます。
"""
import json

import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Variable, cuda, datasets, no_grad, optimizers
from mini_dl.models import Model
from mini_dl.utils import gradient_check

CELLS = [L.RNN, L.LSTM, L.GRU]


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def reference(cls, params, xs, H):
    """手書きの NumPy の式で、系列 ``xs`` の各時刻の (h, c) を返します（c は LSTM だけ）。"""
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    h = np.zeros((xs[0].shape[0], H))
    c = np.zeros_like(h)
    out = []
    for x in xs:
        if cls is L.RNN:
            h = np.tanh(x @ Wx + h @ Wh + b)
        elif cls is L.LSTM:
            a = x @ Wx + h @ Wh + b
            i, f, g, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
        else:  # PyTorch の nn.GRU の式
            gx, gh = x @ Wx + b, h @ Wh + params["bh"]
            r = sigmoid(gx[:, :H] + gh[:, :H])
            z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
        out.append((h, c))
    return out


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_cells_match_hand_written_numpy_equations(cls, xp):
    rng = np.random.default_rng(0)
    N, D, H = 2, 4, 3
    layer = cls(H, dtype=np.float64, seed=1)
    xs = [rng.standard_normal((N, D)) for _ in range(4)]
    hs = [layer(xp.asarray(x)) for x in xs]
    params = {name: cuda.as_numpy(p.data) for name, p in layer.named_params()}
    expected = reference(cls, params, xs, H)
    for t, (h, (h_ref, c_ref)) in enumerate(zip(hs, expected)):
        np.testing.assert_allclose(cuda.as_numpy(h.data), h_ref, rtol=1e-12, atol=1e-12,
                                   err_msg=f"{cls.__name__} の時刻 {t} の h が手書きの式と違います")
    if cls is L.LSTM:
        np.testing.assert_allclose(cuda.as_numpy(layer.c.data), expected[-1][1], rtol=1e-12, atol=1e-12)


def test_parameter_shapes_order_and_pytorch_init():
    H, D = 5, 3
    for cls, G in ((L.RNN, 1), (L.LSTM, 4), (L.GRU, 3)):
        layer = cls(H, in_size=D, seed=0)
        shapes = {name: p.shape for name, p in layer.named_params()}
        expected = {"Wx": (D, G * H), "Wh": (H, G * H), "b": (G * H,)}
        if cls is L.GRU:
            expected["bh"] = (G * H,)
        assert shapes == expected and list(shapes) == list(expected)
        for p in layer.params():  # PyTorch と同じ U(-1/√H, 1/√H)
            assert p.dtype == np.float32 and np.abs(p.data).max() <= 1 / np.sqrt(H)
    big = L.LSTM(100, in_size=50, seed=0).Wh.data
    np.testing.assert_allclose(big.std(), 0.1 / np.sqrt(3), rtol=0.02)  # 一様分布 U(-a, a) の標準偏差は a/√3


def _bind(layer, arrays):
    """層のパラメータを、gradient_check が渡す Variable に差し替えます（名前は _shapes() の順）。"""
    for name, v in zip(layer._shapes(), arrays):
        setattr(layer, name, v)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_gradient_of_one_step_with_a_given_state(cls, xp):
    rng = np.random.default_rng(2)
    N, D, H = 2, 3, 4
    layer = cls(H, in_size=D, dtype=np.float64, seed=3)
    params = [xp.asarray(p.data) for p in layer.params()]
    x = xp.asarray(rng.standard_normal((N, D)))
    h0 = xp.asarray(rng.standard_normal((N, H)) * 0.5)
    c0 = xp.asarray(rng.standard_normal((N, H)) * 0.5)

    if cls is L.LSTM:
        def step(x, h, c, *ps):
            _bind(layer, ps)
            layer.h, layer.c = h, c
            return layer(x) + layer.c  # h と c の両方の勾配を確かめる

        gradient_check(step, x, h0, c0, *params)
    else:
        def step(x, h, *ps):
            _bind(layer, ps)
            layer.h = h
            return layer(x)

        gradient_check(step, x, h0, *params)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_gradient_of_an_unrolled_sequence(cls, xp):
    rng = np.random.default_rng(4)
    N, D, H, T = 2, 3, 3, 4
    layer = cls(H, in_size=D, dtype=np.float64, seed=5)
    params = [xp.asarray(p.data) for p in layer.params()]
    xs = xp.asarray(rng.standard_normal((T, N, D)))

    def unrolled(xs, *ps):
        _bind(layer, ps)
        layer.reset_state()
        hs = [layer(xs[t]) for t in range(T)]
        return F.stack(hs)  # (T, N, H): どの時刻の h の勾配も、過去のすべての時刻へ流れる

    gradient_check(unrolled, xs, *params)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_float32_end_to_end_and_params_on_the_input_device(cls, xp):
    rng = np.random.default_rng(6)
    layer = cls(8, seed=0)  # in_size を省く: 最初の入力と同じ装置の上にパラメータを作る
    x = xp.asarray(rng.standard_normal((5, 3)).astype(np.float32))
    loss = 0
    for _ in range(3):
        loss = loss + F.sum(layer(x) * 0.5)
    assert loss.dtype == np.float32
    layer.cleargrads()
    loss.backward()
    for name, p in layer.named_params():
        assert type(p.data) is type(x), f"{cls.__name__}.{name} が入力と別の装置の上にあります"
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32, (name, p.grad.dtype)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_reset_state_restarts_the_sequence(cls):
    rng = np.random.default_rng(7)
    layer = cls(4, in_size=2, seed=0)
    x1, x2 = (rng.standard_normal((3, 2)).astype(np.float32) for _ in range(2))
    first = layer(x1).data.copy()
    second = layer(x1).data  # 同じ入力でも、状態があるので違う
    assert not np.allclose(first, second)
    layer(x2)
    layer.reset_state()
    assert layer.h is None and getattr(layer, "c", None) is None
    np.testing.assert_array_equal(layer(x1).data, first)


def test_unchain_backward_cuts_the_graph_of_past_steps():
    rng = np.random.default_rng(8)
    layer = L.LSTM(4, in_size=2, seed=0)
    xs = [Variable(rng.standard_normal((3, 2)).astype(np.float32)) for _ in range(5)]
    for x in xs[:3]:
        layer(x)
    layer.h.unchain_backward()
    layer.c.unchain_backward()
    assert layer.h.creator is None and layer.c.creator is None
    loss = 0
    for x in xs[3:]:
        loss = loss + F.sum(layer(x))
    loss.backward()
    assert all(x.grad is None for x in xs[:3]), "切った過去の時刻の入力に勾配が流れています"
    assert all(x.grad is not None for x in xs[3:])
    funcs, stack = set(), [loss.creator]  # 損失からたどれる関数は、切ったあとの 2 時刻分だけ
    while stack:
        f = stack.pop()
        if f is not None and f not in funcs:
            funcs.add(f)
            stack.extend(x.creator for x in f.inputs)
    one_step = L.LSTM(4, in_size=2, seed=0)
    one_step(xs[0])
    probe = F.sum(one_step(xs[1]))
    per_step, stack = set(), [probe.creator]
    while stack:
        f = stack.pop()
        if f is not None and f not in per_step:
            per_step.add(f)
            stack.extend(x.creator for x in f.inputs)
    assert len(funcs) < 2 * len(per_step) + 2, (len(funcs), len(per_step))


def test_gradient_after_unchain_equals_a_fresh_start_from_a_constant_state():
    rng = np.random.default_rng(9)
    a, b = L.GRU(3, in_size=2, seed=0), L.GRU(3, in_size=2, seed=0)
    xs = [rng.standard_normal((2, 2)).astype(np.float32) for _ in range(4)]
    for x in xs[:2]:
        a(x)
    a.h.unchain_backward()
    b.h = Variable(a.h.data.copy())  # 勾配の流れない定数の状態
    for layer in (a, b):
        loss = F.sum(layer(xs[2]) * layer(xs[3]))
        layer.cleargrads()
        loss.backward()
    for (name, pa), pb in zip(a.named_params(), b.params()):
        np.testing.assert_allclose(pa.grad.data, pb.grad.data, rtol=1e-6, err_msg=name)


def test_user_mistakes_raise_clear_errors():
    with pytest.raises(TypeError, match="positional argument"):
        L.LSTM(10, 3)  # PyTorch の nn.LSTM(input_size, hidden_size) の癖
    with pytest.raises(ValueError, match="hidden_size"):
        L.GRU(0)
    layer = L.RNN(4, in_size=3)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        layer(np.zeros((2, 5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="D は 3"):
        layer(np.zeros((2, 5), dtype=np.float32))


def test_sine_wave_and_seq_data_loader():
    train, test = datasets.SineWave(), datasets.SineWave(train=False)
    assert train.data.shape == (999, 1) and train.data.dtype == np.float32
    np.testing.assert_array_equal(train.data[1:], train.label[:-1])  # 正解は 1 つ先の値
    assert not np.allclose(train.data[:50], test.data[:50])
    loader = datasets.SeqDataLoader(train, batch_size=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 333
    x0, t0 = batches[0]
    np.testing.assert_array_equal(x0[:, 0], train.data[[0, 333, 666], 0])  # 3 本の流れの最初の時刻
    np.testing.assert_array_equal(batches[1][0][:, 0], train.data[[1, 334, 667], 0])
    np.testing.assert_array_equal(t0, train.label[[0, 333, 666]])
    with pytest.raises(ValueError, match="batch_size"):
        datasets.SeqDataLoader(train, batch_size=0)


def test_seq_data_loader_moves_batches_to_the_device(xp):
    if xp is np:
        pytest.skip("NumPy では移さない")
    x, t = next(iter(datasets.SeqDataLoader(datasets.SineWave(num_data=11), 2, gpu=True)))
    assert cuda.get_array_module(x) is xp and cuda.get_array_module(t) is xp


def test_book_text_reads_markdown_cells_offline(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": ["# 見出し\n", "本文です。"]},
                    {"cell_type": "code", "source": ["print('コード')"]}]}
    (tmp_path / "ch01_a.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (tmp_path / "notes.ipynb").write_text(json.dumps(nb), encoding="utf-8")  # ch で始まらないものは読まない
    assert datasets.book_text(tmp_path) == "# 見出し\n本文です。\n"
    fallback = datasets.book_text(tmp_path / "nothing")
    assert len(fallback) > 100 and "LSTM" in fallback
    assert len(datasets.book_text()) > 10_000  # リポジトリの中では本の章を読む


def test_lstm_learns_the_sine_wave_well_below_the_naive_baseline():
    class Net(Model):
        def __init__(self):
            super().__init__()
            self.rnn = L.LSTM(16, seed=0)
            self.fc = L.Linear(1, seed=1)

        def forward(self, x):
            return self.fc(self.rnn(x))

    train, test = datasets.SineWave(), datasets.SineWave(train=False)
    model = Net()
    opt = optimizers.Adam(lr=0.01).setup(model)
    opt.add_hook(optimizers.ClipGrad(1.0))
    loader = datasets.SeqDataLoader(train, batch_size=8)
    bptt = 15
    for epoch in range(20):
        model.rnn.reset_state()
        loss, count = 0, 0
        for x, t in loader:
            loss = loss + F.mean_squared_error(model(x), t)
            count += 1
            if count % bptt == 0 or count == len(loader):
                model.cleargrads()
                loss.backward()
                loss.unchain_backward()
                opt.update()
                loss = 0
    model.rnn.reset_state()
    preds = []
    with no_grad():
        for x in test.data:
            preds.append(float(model(x[None]).data[0, 0]))
    mse = float(np.mean((np.array(preds) - test.label[:, 0]) ** 2))
    naive = float(np.mean((test.data - test.label) ** 2))
    assert mse < 0.25 * naive, (mse, naive)  # 手元では約 0.12 倍
    assert mse > 0.5 * 0.05 ** 2  # 雑音（σ = 0.05）より良くはなれない
