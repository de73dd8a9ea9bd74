"""第11章: ソフトマックス・交差エントロピー・正解率・ドロップアウト・バッチ正規化と、float32 のままの学習のテスト。"""
import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Variable, cuda, gradient_check, optimizers
from mini_dl.models import MLP, Sequential


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _ref_log_softmax(x, axis=1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _grad_of(f, loss=lambda y: F.sum(y * y)):
    """``x -> dL/dx``（L = loss(f(x))）。create_graph=True の逆伝播で作るので、さらに微分できる（2 階の検査用）。"""
    def g(x):
        x.cleargrad()
        loss(f(x)).backward(create_graph=True)
        return x.grad
    g.__name__ = f"d({getattr(f, '__name__', 'f')})/dx"
    return g


def test_softmax_and_log_softmax(xp):
    a = _rand((4, 5), 0, np.float32)
    for f, ref in [(F.softmax, lambda v: np.exp(_ref_log_softmax(v))), (F.log_softmax, _ref_log_softmax)]:
        y = f(Variable(xp.asarray(a)))
        assert y.dtype == np.float32
        np.testing.assert_allclose(cuda.as_numpy(y.data), ref(a.astype(np.float64)), rtol=1e-5, atol=1e-6)
    gradient_check(F.softmax, _rand((3, 4), 1))
    gradient_check(F.log_softmax, _rand((3, 4), 2))
    gradient_check(lambda v: F.softmax(v, axis=0), _rand((3, 4), 3))


def test_softmax_cross_entropy_matches_reference_simple_and_gradients():
    x, t = _rand((6, 4), 4), np.array([0, 3, 1, 1, 2, 0])
    expected = -_ref_log_softmax(x)[np.arange(6), t].mean()
    np.testing.assert_allclose(F.softmax_cross_entropy(Variable(x), t).data, expected, rtol=1e-12)
    np.testing.assert_allclose(F.softmax_cross_entropy_simple(Variable(x), t).data, expected, rtol=1e-10)
    gradient_check(lambda v: F.softmax_cross_entropy(v, t), x)

    def second(v):  # 2 階の勾配チェック
        loss = F.softmax_cross_entropy(v, t)
        v.cleargrad()
        loss.backward(create_graph=True)
        return v.grad * v.grad
    gradient_check(second, x)


def test_softmax_cross_entropy_is_stable_for_huge_logits_and_keeps_float32():
    x = Variable(np.array([[1000.0, 0.0, -1000.0], [0.0, 5000.0, 1.0]], dtype=np.float32))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp の下位桁あふれ（0 になる）は無害
        good = F.softmax_cross_entropy(x, np.array([0, 1]))
        bad = F.softmax_cross_entropy(x, np.array([2, 0]))
        bad.backward()
    assert good.dtype == np.float32 and float(good.data) == 0.0
    np.testing.assert_allclose(bad.data, (2000 + 5000) / 2)
    assert x.grad.dtype == np.float32 and np.isfinite(x.grad.data).all()


@pytest.mark.parametrize("t", [np.array([0.0, 1.0]), np.array([0, 1, 2])])
def test_softmax_cross_entropy_rejects_bad_labels(t):
    with pytest.raises((TypeError, ValueError), match="softmax_cross_entropy"):
        F.softmax_cross_entropy(Variable(np.zeros((2, 3))), t)


def test_accuracy():
    y = Variable(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32))
    acc = F.accuracy(y, np.array([1, 0, 0]))
    assert acc.dtype == np.float32 and acc.creator is None
    np.testing.assert_allclose(acc.data, 2 / 3, rtol=1e-6)


def test_dropout_training_and_inference():
    x = Variable(np.ones((20000,), dtype=np.float32))
    y = F.dropout(x, 0.3, training=True, rng=np.random.default_rng(0))
    assert y.dtype == np.float32
    kept = y.data != 0
    assert abs(kept.mean() - 0.7) < 0.013  # 標準偏差 0.0032 の 4 倍
    np.testing.assert_allclose(y.data[kept], 1 / 0.7, rtol=1e-6)
    y.grad = np.ones_like(y.data)
    y.backward()
    np.testing.assert_array_equal(x.grad.data, y.data)  # 勾配も同じマスクを通る
    assert F.dropout(x, 0.3, training=False) is x
    with pytest.raises(ValueError, match="ratio"):
        F.dropout(x, 1.0)


def test_dropout_layer_follows_train_and_eval():
    model = Sequential(L.Linear(50, in_size=10, seed=0), L.Dropout(0.5, seed=0))
    x = np.ones((4, 10), dtype=np.float32)
    assert (model(x).data == 0).any()
    model.eval()
    a, b = model(x).data, model(x).data
    np.testing.assert_array_equal(a, b)
    assert not (a == 0).all()


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2)])
def test_batch_norm_gradients_and_statistics(shape):
    g, b = _rand(3, 5) + 1.5, _rand(3, 6)
    gradient_check(lambda v, gg, bb: F.batch_norm(v, gg, bb, np.zeros(3), np.ones(3)), _rand(shape, 7), g, b)
    gradient_check(lambda v, gg, bb: F.batch_norm(v, gg, bb, np.full(3, 0.2), np.full(3, 2.0), training=False),
                   _rand(shape, 8), g, b)
    x = _rand(shape, 9, np.float32) * 3 + 1
    mean, var = np.zeros(3, dtype=np.float32), np.ones(3, dtype=np.float32)
    y = F.batch_norm(Variable(x), Variable(np.ones(3, np.float32)), Variable(np.zeros(3, np.float32)), mean, var)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    assert y.dtype == np.float32 and mean.dtype == np.float32 and var.dtype == np.float32
    np.testing.assert_allclose(y.data.mean(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(y.data.std(axis=axes), 1, atol=1e-3)
    n = x.size // 3
    np.testing.assert_allclose(mean, 0.1 * x.mean(axis=axes), rtol=1e-5)
    np.testing.assert_allclose(var, 0.9 + 0.1 * x.var(axis=axes) * n / (n - 1), rtol=1e-5)


def test_batch_norm_layer_uses_running_statistics_in_eval():
    bn = L.BatchNorm()
    x = _rand((32, 4), 10, np.float32) * 2 + 3
    for _ in range(200):
        bn(x)
    bn.training = False
    y = bn(x[:2])
    np.testing.assert_allclose(y.data, (x[:2] - x.mean(0)) / np.sqrt(x.var(0) * 32 / 31 + 1e-5), rtol=1e-3, atol=1e-3)


def test_one_training_step_stays_float32_end_to_end():
    """Python の数のハイパーパラメータと整数のラベルで 1 ステップ学習しても、すべて float32 のまま。"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    t = rng.integers(0, 3, size=16)  # int64 のラベル
    model = Sequential(L.Linear(16, seed=0), L.BatchNorm(), F.relu, L.Dropout(0.1, seed=0), L.Linear(3, seed=1))
    for opt in [optimizers.SGD(lr=0.1), optimizers.MomentumSGD(lr=0.1, nesterov=True), optimizers.AdaGrad(lr=0.1),
                optimizers.RMSprop(lr=0.1), optimizers.Adam(lr=0.1), optimizers.AdamW(lr=0.1, weight_decay=0.01)]:
        opt.setup(model).add_hook(optimizers.WeightDecay(1e-4)).add_hook(optimizers.ClipGrad(1.0))
        for _ in range(2):
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            opt.update()
        name = type(opt).__name__
        assert loss.dtype == np.float32, name
        for pname, p in model.named_params():
            assert p.dtype == np.float32 and p.grad.dtype == np.float32, (name, pname)
            for key, value in opt.state.get(pname, {}).items():
                assert value.dtype == np.float32, (name, pname, key)
        for bname, buf in model.named_buffers():
            assert buf.dtype == np.float32, (name, bname)


def test_mlp_reaches_high_accuracy_on_spiral():
    from mini_dl.datasets import DataLoader, Spiral

    train, test = Spiral(), Spiral(train=False)
    model = MLP((30, 30, 3), activation=F.relu, seed=0)
    opt = optimizers.Adam(lr=0.01).setup(model)
    for _ in range(150):
        for x, t in DataLoader(train, 30, seed=0):
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            opt.update()
    assert float(F.accuracy(model(test.data), test.label).data) >= 0.95


# --- 既定値（PyTorch の癖）: softmax の軸、dropout の割合 ------------------------------------

def test_softmax_and_log_softmax_default_to_the_last_axis(xp):
    a = _rand((2, 3, 4), 20)  # 3 次元: 最後の軸（長さ 4）で和が 1 になるはず
    expected = _ref_log_softmax(a, axis=-1)
    y = F.softmax(Variable(xp.asarray(a)))
    z = F.log_softmax(Variable(xp.asarray(a)))
    np.testing.assert_allclose(cuda.as_numpy(y.data), np.exp(expected), rtol=1e-12, err_msg="softmax の既定の軸")
    np.testing.assert_allclose(cuda.as_numpy(z.data), expected, rtol=1e-12, err_msg="log_softmax の既定の軸")
    np.testing.assert_allclose(cuda.as_numpy(y.data).sum(axis=-1), 1.0, rtol=1e-12)
    assert not np.allclose(cuda.as_numpy(y.data).sum(axis=1), 1.0)  # 軸 1 ではない
    assert F.Softmax().axis == -1 and F.LogSoftmax().axis == -1
    np.testing.assert_allclose(F.softmax(a, axis=1).data, np.exp(_ref_log_softmax(a, axis=1)), rtol=1e-12)


def test_dropout_ratio_defaults_to_one_half():
    x = np.ones(40000, dtype=np.float32)
    y = F.dropout(x, rng=np.random.default_rng(1)).data
    assert set(np.unique(y)) == {0.0, 2.0}  # 残した要素は 1/(1-0.5) = 2 倍
    assert abs((y == 0).mean() - 0.5) < 0.01  # 標準偏差 0.0025 の 4 倍
    assert L.Dropout().ratio == 0.5
    with pytest.raises(TypeError):
        L.Dropout(0.5, 0)  # seed はキーワード専用


# --- 1 階・2 階の勾配チェック（float64） -------------------------------------------------------

@pytest.mark.parametrize("name, f", [
    ("softmax", F.softmax),
    ("softmax.axis0", lambda v: F.softmax(v, axis=0)),
    ("log_softmax", F.log_softmax),
    ("log_softmax.axis0", lambda v: F.log_softmax(v, axis=0)),
    ("softmax_cross_entropy", lambda v: F.softmax_cross_entropy(v, np.array([2, 0, 3]))),
    ("softmax_cross_entropy_simple", lambda v: F.softmax_cross_entropy_simple(v, np.array([2, 0, 3]))),
    ("dropout", lambda v: F.dropout(v, 0.4, rng=np.random.default_rng(3))),  # 呼ぶたびに同じマスク
])
def test_first_and_second_order_gradients(name, f):
    x = _rand((3, 4), 30, np.float64)
    gradient_check(f, x)
    gradient_check(_grad_of(f), x)  # 2 階: L = sum(y^2) の x についての勾配を、もう一度微分する
    gradient_check(_grad_of(f, lambda y: F.sum(y * _rand(y.shape, 31))), x)  # L が y の 1 次式でも


def _log_softmax_treating_exp_y_as_constant(x):
    """変異（わざと入れたバグ）: LogSoftmax.backward で exp(y) を定数（配列）として扱う。"""
    class Mutant(F.LogSoftmax):
        def backward(self, gy):
            y = self.outputs[0]()
            return gy - Variable(np.exp(y.data)) * F.sum(gy, axis=self.axis, keepdims=True)
    return Mutant()(x)


def test_log_softmax_second_order_catches_constant_exp_y():
    x = _rand((3, 4), 32)
    loss = lambda y: F.sum(y * _rand(y.shape, 33))  # noqa: E731  y の 1 次式: 2 階は exp(y) の微分だけから来る
    gradient_check(_grad_of(F.log_softmax, loss), x)
    with pytest.raises(AssertionError):  # このテストの検査は、変異を見逃さない
        gradient_check(_grad_of(_log_softmax_treating_exp_y_as_constant, loss), x)
    # 独立な式と比べる: d/dx [w - softmax(x) sum(w)] の、ベクトル v との積
    w, v = _rand((3, 4), 33), _rand((3, 4), 34)
    xv = Variable(x)
    F.sum(F.log_softmax(xv) * w).backward(create_graph=True)
    gx = xv.grad
    xv.cleargrad()
    F.sum(gx * v).backward()
    p = np.exp(_ref_log_softmax(x))
    s = w.sum(axis=1, keepdims=True)
    expected = -s * p * (v - (p * v).sum(axis=1, keepdims=True))  # (softmax のヤコビ行列)^T v に -sum(w) を掛けたもの
    np.testing.assert_allclose(xv.grad.data, expected, rtol=1e-10, atol=1e-12, err_msg="log_softmax の 2 階微分")


def test_softmax_cross_entropy_second_order_matches_softmax_jacobian():
    x, t = _rand((4, 5), 35), np.array([1, 4, 0, 0])
    xv = Variable(x)
    F.softmax_cross_entropy(xv, t).backward(create_graph=True)
    gx = xv.grad
    v = _rand((4, 5), 36)
    xv.cleargrad()
    F.sum(gx * v).backward()
    p = np.exp(_ref_log_softmax(x))
    expected = p * (v - (p * v).sum(axis=1, keepdims=True)) / 4  # H v（H は各行の softmax のヤコビ行列 / N）
    np.testing.assert_allclose(xv.grad.data, expected, rtol=1e-10, atol=1e-12, err_msg="softmax_cross_entropy の 2 階微分")


# --- softmax_cross_entropy: ラベルの範囲、eye を使わない、float32 -------------------------------

@pytest.mark.parametrize("t, bad", [(np.array([0, 3]), 3), (np.array([-1, 2]), -1), (np.array([7, 0]), 7)])
def test_softmax_cross_entropy_rejects_labels_out_of_range(xp, t, bad):
    x = Variable(xp.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"範囲外のクラス番号 {bad} .*C = 3"):
        F.softmax_cross_entropy(x, xp.asarray(t))


def test_softmax_cross_entropy_does_not_build_eye(monkeypatch):
    def no_eye(*args, **kwargs):
        raise AssertionError("softmax_cross_entropy が eye(C) を作りました")
    monkeypatch.setattr(np, "eye", no_eye)
    monkeypatch.setattr(np, "identity", no_eye)
    x, t = _rand((5, 7), 37, np.float32), np.array([6, 0, 3, 3, 1])
    for f in (F.softmax_cross_entropy, F.softmax_cross_entropy_simple):
        xv = Variable(x)
        f(xv, t).backward()
        p = np.exp(_ref_log_softmax(x.astype(np.float64)))
        p[np.arange(5), t] -= 1
        np.testing.assert_allclose(xv.grad.data, p / 5, rtol=1e-5, atol=1e-7, err_msg=f.__name__)


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_softmax_cross_entropy_float32_end_to_end(xp, label_dtype):
    x = Variable(xp.asarray(_rand((6, 4), 38, np.float32) * 50))
    t = xp.asarray(np.array([0, 3, 1, 1, 2, 0], dtype=label_dtype))
    loss = F.softmax_cross_entropy(x, t)
    loss.backward()
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32
    ref = -_ref_log_softmax(cuda.as_numpy(x.data).astype(np.float64))[np.arange(6), cuda.as_numpy(t)].mean()
    np.testing.assert_allclose(float(loss.data), ref, rtol=1e-5)
    assert cuda.get_array_module(x.grad.data) is xp


# --- ドロップアウト: 装置の上のマスク、種 ---------------------------------------------------------

def test_dropout_mask_comes_from_float32_draws_of_the_given_generator():
    x = np.ones((3, 5), dtype=np.float32)
    y = F.dropout(x, 0.3, rng=np.random.default_rng(4)).data
    u = np.random.default_rng(4).random((3, 5), dtype=np.float32)
    np.testing.assert_array_equal(y, np.where(u >= 0.3, np.float32(1 / 0.7), np.float32(0)))
    assert y.dtype == np.float32


def test_dropout_layer_seed_matters():
    x = np.ones((8, 64), dtype=np.float32)
    a, b, c = L.Dropout(0.5, seed=1), L.Dropout(0.5, seed=1), L.Dropout(0.5, seed=2)
    ya, yb, yc = a(x).data, b(x).data, c(x).data
    np.testing.assert_array_equal(ya, yb, err_msg="同じ seed の層は、同じマスクを出すはず")
    assert not np.array_equal(ya, yc), "違う seed の層が同じマスクを出しました（seed が無視されています）"
    ya2 = a(x).data
    assert not np.array_equal(ya, ya2), "1 つの層を 2 回呼ぶと、違うマスクになるはず"
    np.testing.assert_array_equal(ya2, b(x).data, err_msg="同じ seed の層は、2 回目も同じマスクを出すはず")


def test_dropout_runs_on_the_input_device(xp):
    x = Variable(xp.ones((4, 6), dtype=np.float32))
    y1 = F.dropout(x, 0.5, rng=np.random.default_rng(5))
    y2 = F.dropout(x, 0.5, rng=np.random.default_rng(5))
    assert cuda.get_array_module(y1.data) is xp and y1.dtype == np.float32
    np.testing.assert_array_equal(cuda.as_numpy(y1.data), cuda.as_numpy(y2.data))  # 同じ種なら同じマスク
    F.sum(y1).backward()
    assert cuda.get_array_module(x.grad.data) is xp
    np.testing.assert_array_equal(cuda.as_numpy(x.grad.data), cuda.as_numpy(y1.data))


# --- バッチ正規化: 2 階微分、momentum の向き ---------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_second_order(shape, training):
    x, g, b = _rand(shape, 40), _rand(3, 41) + 1.5, _rand(3, 42)

    def f(v, gg, bb):
        return F.batch_norm(v, gg, bb, np.full(3, 0.3), np.full(3, 1.7), training=training)

    def grad_wrt(i):
        def h(*vs):
            for v in vs:
                v.cleargrad()
            y = f(*vs)
            F.sum(y * y * _rand(y.shape, 43)).backward(create_graph=True)
            return vs[i].grad
        h.__name__ = f"d(batch_norm)/d{['x', 'gamma', 'beta'][i]}"
        return h
    for i in range(3):
        gradient_check(grad_wrt(i), x, g, b)


def test_batch_norm_graph_backward_matches_the_array_backward():
    x, g, b = _rand((5, 3), 44), _rand(3, 45) + 1.5, _rand(3, 46)
    grads = []
    for create_graph in (False, True):
        vs = [Variable(a.copy()) for a in (x, g, b)]
        y = F.batch_norm(*vs, np.zeros(3), np.ones(3))
        F.sum(y * _rand(y.shape, 47)).backward(create_graph=create_graph)
        grads.append([v.grad.data for v in vs])
    for fast, graph, name in zip(*grads, ["x", "gamma", "beta"]):
        np.testing.assert_allclose(fast, graph, rtol=1e-10, atol=1e-12, err_msg=f"batch_norm の {name} の勾配")


def test_batch_norm_momentum_keeps_the_old_value():
    """mini_dl の momentum=0.9 は「古い値を 0.9 残す」= PyTorch の momentum=0.1。"""
    x = _rand((10, 2), 48, np.float32) + 5
    mean, var = np.full(2, 1.0, np.float32), np.ones(2, np.float32)
    F.batch_norm(x, np.ones(2, np.float32), np.zeros(2, np.float32), mean, var, momentum=0.9)
    np.testing.assert_allclose(mean, 0.9 * 1.0 + 0.1 * x.mean(axis=0), rtol=1e-6)
    assert L.BatchNorm().momentum == 0.9


def test_softmax_cross_entropy_rejects_labels_on_another_device(xp):
    if xp is np:
        pytest.skip("装置の食い違いは GPU があるときだけ起きます")
    x = Variable(xp.zeros((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="同じ装置"):
        F.softmax_cross_entropy(x, np.array([0, 1]))  # CPU のラベルで GPU のロジットを添字しない
