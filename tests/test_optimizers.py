"""第10章: 最適化手法・フック・学習率スケジューラ・初期値のテスト（手で計算した更新と比べる）。"""
import math

import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Parameter, initializers, optimizers
from mini_dl.models import MLP, Model


class OneParam(Model):
    def __init__(self, value):
        super().__init__()
        self.w = Parameter(np.array(value, dtype=np.float32))


def _run(opt, grads, w0=(1.0, -2.0)):
    """勾配の列 ``grads`` を順に与えて更新し、毎回のパラメータの値を返します。"""
    model = OneParam(w0)
    opt.setup(model)
    history = []
    for g in grads:
        model.w.grad = Parameter(np.array(g, dtype=np.float32))
        opt.update()
        assert model.w.dtype == np.float32, type(opt).__name__
        history.append(model.w.data.astype(np.float64).copy())
    return np.array(history)


GRADS = [(0.5, -1.0), (0.2, 0.3), (-0.4, 0.1), (1.0, 1.0)]


def _reference(name, lr, **kw):
    """各手法の更新式を、float64 の NumPy で素直に書いたもの。"""
    w = np.array([1.0, -2.0])
    s1, s2 = np.zeros(2), np.zeros(2)
    out = []
    for t, g in enumerate(GRADS, start=1):
        g = np.array(g)
        if name == "SGD":
            w = w - lr * g
        elif name in ("MomentumSGD", "Nesterov"):
            s1 = kw["momentum"] * s1 + g
            w = w - lr * ((g + kw["momentum"] * s1) if name == "Nesterov" else s1)
        elif name == "AdaGrad":
            s1 = s1 + g * g
            w = w - lr * g / (np.sqrt(s1) + 1e-8)
        elif name == "RMSprop":
            s1 = kw["alpha"] * s1 + (1 - kw["alpha"]) * g * g
            w = w - lr * g / (np.sqrt(s1) + 1e-8)
        elif name in ("Adam", "AdamW"):
            if name == "AdamW":
                w = w - lr * kw["weight_decay"] * w
            s1 = 0.9 * s1 + 0.1 * g
            s2 = 0.999 * s2 + 0.001 * g * g
            w = w - lr * (s1 / (1 - 0.9 ** t)) / (np.sqrt(s2 / (1 - 0.999 ** t)) + 1e-8)
        out.append(w.copy())
    return np.array(out)


@pytest.mark.parametrize("name, make, kw", [
    ("SGD", lambda: optimizers.SGD(lr=0.1), {}),
    ("MomentumSGD", lambda: optimizers.MomentumSGD(lr=0.1, momentum=0.9), {"momentum": 0.9}),
    ("Nesterov", lambda: optimizers.MomentumSGD(lr=0.1, momentum=0.9, nesterov=True), {"momentum": 0.9}),
    ("AdaGrad", lambda: optimizers.AdaGrad(lr=0.1), {}),
    ("RMSprop", lambda: optimizers.RMSprop(lr=0.1, alpha=0.9), {"alpha": 0.9}),
    ("Adam", lambda: optimizers.Adam(lr=0.1), {}),
    ("AdamW", lambda: optimizers.AdamW(lr=0.1, weight_decay=0.5), {"weight_decay": 0.5}),
])
def test_updates_match_hand_computed_formulas(name, make, kw):
    np.testing.assert_allclose(_run(make(), GRADS), _reference(name, 0.1, **kw), rtol=1e-5, atol=1e-6)


def test_params_without_grad_are_skipped_and_setup_returns_self():
    model = OneParam((1.0,))
    opt = optimizers.SGD(lr=0.1)
    assert opt.setup(model) is opt
    opt.update()
    assert model.w.data[0] == 1.0


def test_weight_decay_and_clip_grad_hooks():
    model = OneParam((3.0, 4.0))
    opt = optimizers.SGD(lr=1.0).setup(model).add_hook(optimizers.WeightDecay(0.1))
    model.w.grad = Parameter(np.zeros(2, dtype=np.float32))
    opt.update()
    np.testing.assert_allclose(model.w.data, [2.7, 3.6], rtol=1e-6)

    clip = optimizers.ClipGrad(max_norm=1.0)
    a, b = Parameter(np.zeros(2, dtype=np.float32)), Parameter(np.zeros(1, dtype=np.float32))
    a.grad = Parameter(np.array([3.0, 0.0], dtype=np.float32))
    b.grad = Parameter(np.array([4.0], dtype=np.float32))
    clip([a, b])  # 全体のノルム 5 -> 1
    np.testing.assert_allclose(np.concatenate([a.grad.data, b.grad.data]), [0.6, 0.0, 0.8], rtol=1e-5)
    assert a.grad.dtype == np.float32
    small = Parameter(np.zeros(1, dtype=np.float32))
    small.grad = Parameter(np.array([0.5], dtype=np.float32))
    clip([small])
    assert small.grad.data[0] == 0.5  # max_norm 以下なら変えない


def test_schedulers():
    opt = optimizers.SGD(lr=1.0)
    step = optimizers.StepLR(opt, step_size=2, gamma=0.5)
    assert [step.step() for _ in range(5)] == [1.0, 0.5, 0.5, 0.25, 0.25]

    opt = optimizers.SGD(lr=1.0)
    cos = optimizers.CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    lrs = [cos.step() for _ in range(6)]
    expected = [0.1 + 0.45 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(1, 7)]
    np.testing.assert_allclose(lrs, expected)

    opt = optimizers.SGD(lr=1.0)
    warm = optimizers.LinearWarmup(opt, warmup_steps=4)
    assert opt.lr == 0.25
    assert [warm.step() for _ in range(5)] == [0.5, 0.75, 1.0, 1.0, 1.0]

    opt = optimizers.SGD(lr=1.0)
    inner = optimizers.StepLR(opt, step_size=1, gamma=0.5)
    warm = optimizers.LinearWarmup(opt, warmup_steps=2, after=inner)
    assert [warm.step() for _ in range(4)] == [1.0, 1.0, 0.5, 0.25]


@pytest.mark.parametrize("init, std", [
    (initializers.lecun_normal, math.sqrt(1 / 400)),
    (initializers.xavier_normal, math.sqrt(2 / 600)),
    (initializers.xavier_uniform, math.sqrt(6 / 600) / math.sqrt(3)),
    (initializers.he_normal, math.sqrt(2 / 400)),
    (initializers.he_uniform, math.sqrt(6 / 400) / math.sqrt(3)),
])
def test_initializers_have_the_right_scale_and_dtype(init, std):
    W = init((400, 200), np.random.default_rng(0))
    assert W.shape == (400, 200) and W.dtype == np.float32
    assert abs(W.std() / std - 1) < 0.03 and abs(W.mean()) < 0.01 * std * 10


def test_linear_uses_the_initializer():
    layer = L.Linear(50, in_size=300, initializer=initializers.he_normal, seed=0)
    assert abs(layer.W.data.std() / math.sqrt(2 / 300) - 1) < 0.05


@pytest.mark.parametrize("make", [
    lambda: optimizers.SGD(lr=0.1), lambda: optimizers.MomentumSGD(lr=0.05, nesterov=True),
    lambda: optimizers.AdaGrad(lr=0.1), lambda: optimizers.RMSprop(lr=0.01), lambda: optimizers.Adam(lr=0.01),
    lambda: optimizers.AdamW(lr=0.01, weight_decay=1e-4),
])
def test_training_step_stays_float32_and_loss_decreases(make):
    rng = np.random.default_rng(0)
    x = rng.random((64, 1)).astype(np.float32)
    y = np.sin(2 * np.pi * x).astype(np.float32)
    model = MLP((16, 1), activation=F.tanh, seed=0)
    opt = make().setup(model).add_hook(optimizers.ClipGrad(10.0))
    losses = []
    for _ in range(300):
        loss = F.mean_squared_error(model(x), y)
        model.cleargrads()
        loss.backward()
        opt.update()
        losses.append(float(loss.data))
    assert loss.dtype == np.float32
    for name, p in model.named_params():
        assert p.dtype == np.float32 and p.grad.dtype == np.float32, name
        for key, arr in opt.state.get(name, {}).items():
            assert arr.dtype == np.float32, (name, key)
    assert losses[-1] < 0.5 * losses[0]
