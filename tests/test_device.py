"""GPU の代わりに CuPy の厳しい代役（``tests/strict_cupy.py``）で、公開の API を通して学習を動かすテスト。

代役は CPU の上で NumPy と同じ計算をするので、代役で学習した結果は NumPy で学習した結果と
ビットまで同じになるはずです。違えば、どこかでホストとデバイスの配列の扱いが分かれています。
ホストの配列とデバイスの配列を混ぜると、代役はその場で ``DeviceMixError`` を出します。
前半は代役そのものが、CuPy が拒むことを本当に拒むかのテストです（代役が甘ければ、後半は何も確かめません）。
"""
import numpy as np
import pytest

import mini_dl
import mini_dl.functions as F
import mini_dl.layers as L
import strict_cupy
from mini_dl import DataLoader, Variable, cuda, optimizers
from mini_dl.datasets import Digits
from mini_dl.models import MLP, Sequential


@pytest.fixture
def sc():
    with strict_cupy.install() as module:
        yield module


# --- 代役が CuPy と同じものを拒むこと ---------------------------------------------------------------

def test_stand_in_refuses_what_cupy_refuses(sc):
    d, h = sc.asarray(np.arange(6, dtype=np.float32)), np.ones(6, dtype=np.float32)
    refused = {
        "暗黙の変換 np.asarray": lambda: np.asarray(d),
        "暗黙の変換 np.array": lambda: np.array(d),
        "デバイス + ホスト": lambda: d + h,
        "ホスト + デバイス": lambda: h + d,
        "ufunc に混ぜる": lambda: np.add(d, h),
        "0 次元のホストの配列": lambda: d * np.array(2.0, dtype=np.float32),
        "xp の関数に混ぜる": lambda: sc.where(d > 2, d, h),
        "ホストの配列の添字": lambda: d[np.array([0, 1])],
        "ホストの配列の代入": lambda: d.__setitem__(slice(0, 6), h),
        "その場の演算に混ぜる": lambda: d.__iadd__(h),
        "NumPy の関数": lambda: np.sum(d),
        "matmul に混ぜる": lambda: sc.asarray(np.eye(2, dtype=np.float32)) @ np.eye(2, dtype=np.float32),
    }
    for what, f in refused.items():
        with pytest.raises(TypeError):
            f()
            pytest.fail(f"代役が「{what}」を拒みませんでした")


def test_stand_in_allows_what_cupy_allows(sc):
    d = sc.asarray(np.arange(6, dtype=np.float32))
    assert isinstance(d * 2 + np.float32(1.5) - 0.5, sc.ndarray)
    assert (np.float32(2) * d).dtype == np.float32
    assert isinstance(np.exp(d), sc.ndarray)  # 全部がデバイスの ufunc は CuPy の __array_ufunc__ と同じく動く
    assert float(d.sum()) == 15.0 and int(d[2]) == 2
    np.testing.assert_array_equal(d.get(), np.arange(6))
    np.testing.assert_array_equal(sc.asnumpy(d[sc.asarray(np.array([1, 3]))]), [1, 3])
    d[d > 3] = 0
    d[1:3] += sc.ones(2, dtype=np.float32)
    np.testing.assert_array_equal(cuda.as_numpy(d), [0, 2, 3, 3, 0, 0])
    sc.add.at(d, sc.asarray(np.array([0, 0])), 1)
    assert float(d[0]) == 2.0
    assert not isinstance(d.data, (np.ndarray, sc.ndarray))  # CuPy と同じく .data はメモリの場所
    assert cuda.get_array_module(d) is sc and cuda.get_array_module(Variable(d)) is sc


def test_install_restores_numpy_only_mode():
    before = cuda.cupy, cuda.array_types, cuda.is_available()
    with strict_cupy.install():
        assert cuda.is_available()
    assert (cuda.cupy, cuda.array_types, cuda.is_available()) == before


# --- 公開の API を通した学習: 代役と NumPy の結果がビットまで同じ ----------------------------------------

def _train(device, optimizer, steps=12):
    """digits の小さな MLP（バッチ正規化入り）を学習し、損失の列・正解率・重みを返します。

    ドロップアウトは入れません。GPU ではマスクを GPU の乱数で作るので、CPU とは別の列になるからです。

    ``device`` が真なら、2 ステップ目のあとでモデルを GPU（代役）に移します。オプティマイザの状態
    （モーメンタムなど）は CPU で作られたあと、パラメータについて GPU へ移るはずです。
    """
    train = Digits()
    model = Sequential(L.Linear(32, seed=0), L.BatchNorm(), F.relu, L.Linear(10, seed=2))
    opt = optimizer.setup(model)
    opt.add_hook(optimizers.ClipGrad(5.0))
    losses = []
    loader = DataLoader(train, batch_size=64, seed=0)
    for step, (x, t) in enumerate(loader):
        if device and step == 2:
            model.to_gpu()
            loader.gpu = True  # 次のバッチから GPU に載せて渡す
            x, t = cuda.as_cupy(x), cuda.as_cupy(t)
        if device and step >= 3:
            assert cuda.get_array_module(x) is cuda.cupy and cuda.get_array_module(t) is cuda.cupy
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()
        losses.append(cuda.as_numpy(loss.data))
        if step + 1 == steps:
            break
    model.eval()
    test = Digits(train=False)
    x, t = test.data[:200], test.label[:200]
    if device:
        x, t = cuda.as_cupy(x), cuda.as_cupy(t)
    with mini_dl.no_grad():
        y = model(x)
    acc = F.accuracy(y, t)
    weights = [cuda.as_numpy(p.data) for p in model.params()]
    buffers = [cuda.as_numpy(model.layers[1].running_mean), cuda.as_numpy(model.layers[1].running_var)] \
        if hasattr(model, "layers") else []
    return np.array(losses), float(acc.data), weights, buffers, model, opt


OPTIMIZERS = {
    "SGD": lambda: optimizers.SGD(lr=0.1),
    "MomentumSGD": lambda: optimizers.MomentumSGD(lr=0.05, nesterov=True),
    "AdaGrad": lambda: optimizers.AdaGrad(lr=0.05),
    "RMSprop": lambda: optimizers.RMSprop(lr=0.005),
    "Adam": lambda: optimizers.Adam(lr=0.01),
    "AdamW": lambda: optimizers.AdamW(lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_training_on_the_stand_in_equals_numpy_bit_for_bit(sc, name):
    with strict_cupy.install():
        pass  # install は入れ子にしても戻せる
    losses_d, acc_d, weights_d, buffers_d, model, opt = _train(True, OPTIMIZERS[name]())
    assert all(cuda.get_array_module(p.data) is sc for p in model.params())
    assert all(cuda.get_array_module(v) is sc for state in opt.state.values() for v in state.values()
               if hasattr(v, "shape")), "オプティマイザの状態が GPU に移っていません"
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.params())
    cuda.is_available = lambda: False  # 比べる側は NumPy だけで
    try:
        losses_h, acc_h, weights_h, buffers_h, _, _ = _train(False, OPTIMIZERS[name]())
    finally:
        cuda.is_available = lambda: True
    np.testing.assert_array_equal(losses_d, losses_h, err_msg=f"{name}: 代役と NumPy で損失が違います")
    assert losses_d[-1] < losses_d[0], f"{name}: 損失が下がっていません: {losses_d}"
    assert acc_d == acc_h
    for a, b in zip(weights_d + buffers_d, weights_h + buffers_h):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: 代役と NumPy で重みが違います")


def test_model_moves_back_and_forth_and_saves_from_the_device(sc, tmp_path):
    model = MLP((16, 3), seed=0)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y_host = model(x).data
    model.to_gpu()
    y_dev = model(cuda.as_cupy(x))
    assert cuda.get_array_module(y_dev) is sc and y_dev.dtype == np.float32
    np.testing.assert_array_equal(cuda.as_numpy(y_dev.data), y_host)
    model.save_weights(tmp_path / "w.npz")  # GPU の上の重みも npz に書ける
    other = MLP((16, 3), seed=1)
    other(x)
    other.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(other(x).data, y_host)
    model.to_cpu()
    assert all(isinstance(p.data, np.ndarray) for p in model.params())


def test_mixing_a_host_input_with_a_device_model_fails_loudly(sc):
    model = MLP((4, 2), seed=0)
    model(np.zeros((1, 3), dtype=np.float32))
    model.to_gpu()
    with pytest.raises(TypeError):
        model(np.zeros((1, 3), dtype=np.float32))


def test_dropout_draws_its_mask_on_the_device(sc):
    x = cuda.as_cupy(np.ones((200, 50), dtype=np.float32))
    masks = []
    for _ in range(2):
        layer = L.Dropout(0.3, seed=7)
        y = layer(x)
        assert cuda.get_array_module(y) is sc and y.dtype == np.float32
        masks.append(cuda.as_numpy(y.data))
    np.testing.assert_array_equal(masks[0], masks[1])  # 同じ種なら同じマスク
    assert abs((masks[0] == 0).mean() - 0.3) < 0.02
    np.testing.assert_allclose(masks[0][masks[0] != 0], 1 / 0.7, rtol=1e-6)
    layer.eval()
    assert layer(x).data is x


def test_gradient_check_runs_on_the_device(sc):
    x = sc.asarray(np.random.default_rng(0).standard_normal((3, 4)))
    mini_dl.gradient_check(lambda v: F.sum(F.tanh(v) * v), x)
    mini_dl.gradient_check(lambda v: F.softmax_cross_entropy(v, sc.asarray(np.array([0, 3, 1]))), x)


def test_layers_initialise_lazily_on_the_device_and_match_numpy(sc):
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    results = []
    for to_device in (True, False):
        model = Sequential(L.Linear(7, seed=0), L.BatchNorm(), F.tanh, L.Linear(3, nobias=True, seed=1))
        xin = cuda.as_cupy(x) if to_device else x
        y = model(xin)
        F.sum(y * y).backward()
        expected = sc if to_device else np
        assert all(cuda.get_array_module(p.data) is expected for p in model.params())
        assert all(cuda.get_array_module(b) is expected for b in (model.layers[1].running_mean,))
        results.append([cuda.as_numpy(y.data)] + [cuda.as_numpy(p.grad.data) for p in model.params()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_higher_order_derivatives_on_the_device(sc):
    x = Variable(cuda.as_cupy(np.array([0.5, -1.0, 2.0], dtype=np.float32)))
    y = F.sum(F.tanh(x) * x ** 3)
    y.backward(create_graph=True)
    for _ in range(3):  # 4 階まで
        gx = x.grad
        x.cleargrad()
        F.sum(gx).backward(create_graph=True)
    assert cuda.get_array_module(x.grad) is sc and x.grad.dtype == np.float32
    xh = Variable(np.array([0.5, -1.0, 2.0], dtype=np.float32))
    yh = F.sum(F.tanh(xh) * xh ** 3)
    yh.backward(create_graph=True)
    for _ in range(3):
        gx = xh.grad
        xh.cleargrad()
        F.sum(gx).backward(create_graph=True)
    np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), xh.grad.data)


def test_resuming_from_a_checkpoint_on_the_device_continues_the_same_run(sc, tmp_path):
    x = cuda.as_cupy(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    t = cuda.as_cupy(np.array([0, 1, 2, 0, 1, 2, 0, 1]))

    def step(model, opt):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()
        return cuda.as_numpy(loss.data)

    model = MLP((8, 3), seed=0)
    model(x)
    model.to_gpu()
    opt = optimizers.Adam(lr=0.05).setup(model)
    for _ in range(3):
        step(model, opt)
    model.save_weights(tmp_path / "ckpt.npz", optimizer=opt)
    rest = [step(model, opt) for _ in range(3)]

    again = MLP((8, 3), seed=5)
    again(x)
    again.to_gpu()
    opt2 = optimizers.Adam(lr=0.05).setup(again)
    again.load_weights(tmp_path / "ckpt.npz", optimizer=opt2)
    assert all(cuda.get_array_module(v) is sc for s in opt2.state.values() for v in s.values())
    np.testing.assert_array_equal([step(again, opt2) for _ in range(3)], rest)
