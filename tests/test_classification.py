"""第11章: ソフトマックス・交差エントロピー・正解率・ドロップアウト・バッチ正規化と、float32 のままの学習のテスト。"""
import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Variable, cuda, gradient_check, optimizers
from mini_dl.models import MLP, Sequential


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _ref_log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


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
    assert abs(kept.mean() - 0.7) < 0.02
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
