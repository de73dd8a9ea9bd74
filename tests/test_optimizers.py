"""第10章: 最適化手法・フック・学習率スケジューラ・初期値のテスト（手で計算した更新と比べる）。"""
import math

import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Parameter, Variable, cuda, initializers, optimizers
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


def _step64(name, w, g, s, t, lr, **kw):
    """各手法の 1 回の更新を、float64 の NumPy で素直に書いたもの（``s`` は状態の辞書で、書き換えます）。"""
    zeros = np.zeros_like(w)
    eps = kw.get("eps", 1e-8)
    if name == "SGD":
        return w - lr * g
    if name in ("MomentumSGD", "Nesterov"):
        s["v"] = kw["momentum"] * s.get("v", zeros) + g
        return w - lr * ((g + kw["momentum"] * s["v"]) if name == "Nesterov" else s["v"])
    if name == "AdaGrad":
        s["h"] = s.get("h", zeros) + g * g
        return w - lr * g / (np.sqrt(s["h"]) + eps)
    if name == "RMSprop":
        s["h"] = kw["alpha"] * s.get("h", zeros) + (1 - kw["alpha"]) * g * g
        return w - lr * g / (np.sqrt(s["h"]) + eps)
    if name in ("Adam", "AdamW"):
        b1, b2 = kw.get("beta1", 0.9), kw.get("beta2", 0.999)
        if name == "AdamW":
            w = w - lr * kw["weight_decay"] * w
        s["m"] = b1 * s.get("m", zeros) + (1 - b1) * g
        s["v"] = b2 * s.get("v", zeros) + (1 - b2) * g * g
        return w - lr * (s["m"] / (1 - b1 ** t)) / (np.sqrt(s["v"] / (1 - b2 ** t)) + eps)
    raise AssertionError(name)


def _reference(name, lr, **kw):
    """``GRADS`` を順に与えたときの、各回のあとのパラメータ（float64）。"""
    w, s, out = np.array([1.0, -2.0]), {}, []
    for t, g in enumerate(GRADS, start=1):
        w = _step64(name, w, np.array(g), s, t, lr, **kw)
        out.append(w.copy())
    return np.array(out)


# (名前, 作り方, 手計算の _reference に渡す引数): 手計算との比較と、共有された勾配のテストで使います
OPTIMIZERS = [
    ("SGD", lambda: optimizers.SGD(lr=0.1), {}),
    ("MomentumSGD", lambda: optimizers.MomentumSGD(lr=0.1, momentum=0.9), {"momentum": 0.9}),
    ("Nesterov", lambda: optimizers.MomentumSGD(lr=0.1, momentum=0.9, nesterov=True), {"momentum": 0.9}),
    ("AdaGrad", lambda: optimizers.AdaGrad(lr=0.1), {}),
    ("RMSprop", lambda: optimizers.RMSprop(lr=0.1, alpha=0.9), {"alpha": 0.9}),
    ("Adam", lambda: optimizers.Adam(lr=0.1), {}),
    ("AdamW", lambda: optimizers.AdamW(lr=0.1, weight_decay=0.5), {"weight_decay": 0.5}),
]


@pytest.mark.parametrize("name, make, kw", OPTIMIZERS)
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


def _check_scale(W, std, kurtosis, name):
    """標本の平均と標準偏差が、期待の標準偏差 ``std`` の分布から 5σ の範囲にあるか確かめます。

    n 個の標本で、平均の標準誤差は std/√n、標本標準偏差の相対的な標準誤差は √((κ - 1)/(4n))
    （κ は尖度: 正規分布 3、一様分布 9/5）です。種を固定しているので結果は決まっていますが、
    許容幅はこの標準誤差の 5 倍にとどめ、倍率の取り違え（fan の取り違えなど）を確実に落とします。
    """
    n = W.size
    W64 = W.astype(np.float64)
    rel_se = math.sqrt((kurtosis - 1) / (4 * n))
    assert abs(W64.std() / std - 1) < 5 * rel_se, (name, W64.std(), std, 5 * rel_se)
    assert abs(W64.mean()) < 5 * std / math.sqrt(n), (name, W64.mean(), 5 * std / math.sqrt(n))


NORMAL, UNIFORM = 3.0, 9 / 5  # 尖度


@pytest.mark.parametrize("init, std, kurtosis", [
    (initializers.lecun_normal, math.sqrt(1 / 400), NORMAL),
    (initializers.xavier_normal, math.sqrt(2 / 600), NORMAL),
    (initializers.xavier_uniform, math.sqrt(6 / 600) / math.sqrt(3), UNIFORM),
    (initializers.he_normal, math.sqrt(2 / 400), NORMAL),
    (initializers.he_uniform, math.sqrt(6 / 400) / math.sqrt(3), UNIFORM),
])
def test_initializers_have_the_right_scale_and_dtype(init, std, kurtosis):
    W = init((400, 200), np.random.default_rng(0))
    assert W.shape == (400, 200) and W.dtype == np.float32, init.__name__
    _check_scale(W, std, kurtosis, init.__name__)
    if kurtosis == UNIFORM:  # 一様分布は ±√3 σ の中にあり、端の近くまで届く
        limit = math.sqrt(3) * std
        assert np.abs(W).max() <= limit * (1 + 1e-6) and np.abs(W).max() > 0.99 * limit, init.__name__
    assert init((3, 2), np.random.default_rng(0), np.float64).dtype == np.float64, init.__name__


def test_fans_of_linear_and_conv_weights():
    assert initializers._fans((400, 200)) == (400, 200)  # Linear の W: (in, out)
    assert initializers._fans((64, 3, 3, 3)) == (27, 576)  # conv2d の W: (OC, C, KH, KW)
    assert initializers._fans((16, 8, 5, 3)) == (8 * 15, 16 * 15)
    assert initializers._fans((10, 4, 7)) == (28, 70)  # 1 次元の畳み込み (OC, C, K)
    for shape in [(5,), ()]:
        with pytest.raises(ValueError, match="2 次元以上"):
            initializers.he_normal(shape, np.random.default_rng(0))


@pytest.mark.parametrize("init, shape, std, kurtosis", [
    (initializers.he_normal, (64, 3, 3, 3), math.sqrt(2 / 27), NORMAL),  # fan_in = C*KH*KW = 27
    (initializers.lecun_normal, (32, 16, 3, 3), math.sqrt(1 / 144), NORMAL),
    (initializers.he_uniform, (32, 16, 3, 3), math.sqrt(6 / 144) / math.sqrt(3), UNIFORM),
    (initializers.xavier_normal, (32, 8, 5, 5), math.sqrt(2 / (200 + 800)), NORMAL),  # fan_out = OC*KH*KW
    (initializers.xavier_uniform, (32, 8, 5, 5), math.sqrt(6 / (200 + 800)) / math.sqrt(3), UNIFORM),
])
def test_initializers_use_conv_fans(init, shape, std, kurtosis):
    W = init(shape, np.random.default_rng(1))
    assert W.shape == shape and W.dtype == np.float32
    _check_scale(W, std, kurtosis, f"{init.__name__}{shape}")


def test_linear_uses_the_initializer():
    layer = L.Linear(50, in_size=300, initializer=initializers.he_normal, seed=0)
    _check_scale(layer.W.data, math.sqrt(2 / 300), NORMAL, "Linear(he_normal)")


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


# --- 共有された勾配・書き込めない勾配 -------------------------------------------------------

class TwoBiases(Model):
    """y = b1 + b2 の 2 つのバイアス。Add の逆伝播は 1 つの勾配を両方に渡すので、勾配を共有します。"""

    def __init__(self, xp):
        super().__init__()
        self.b1 = Parameter(xp.asarray(np.array([1.0, -2.0, 0.5], dtype=np.float32)))
        self.b2 = Parameter(xp.asarray(np.array([0.3, 0.8, -1.5], dtype=np.float32)))


C = np.array([2.0, -1.0, 0.5], dtype=np.float32)  # 損失 sum((b1 + b2) * C) の勾配は C（書き込める配列）


def _shared_backward(model, read_only):
    """``b1.grad is b2.grad`` になる逆伝播をします。``read_only`` なら勾配は F.sum の書き込めないビューです。"""
    xp = cuda.get_array_module(model.b1.data)
    model.cleargrads()
    y = model.b1 + model.b2
    loss = F.sum(y) if read_only else F.sum(y * Variable(xp.asarray(C)))
    loss.backward()
    assert model.b1.grad is model.b2.grad
    if xp is np:
        assert model.b1.grad.data.flags.writeable is not read_only
    return model.b1.grad.data


HOOKS = {
    "none": lambda: None,
    "WeightDecay": lambda: optimizers.WeightDecay(0.1),
    "ClipGrad": lambda: optimizers.ClipGrad(0.5),  # 共有された勾配のノルム（2 回数える）は 0.5 を超える
}

def _hooked_grads64(hook, ws, g):
    """フックを通したあとの、パラメータごとの勾配（float64 で手計算）。``g`` は共有された 1 つの勾配。"""
    if hook == "WeightDecay":
        return [g + 0.1 * w for w in ws]
    if hook == "ClipGrad":
        total = math.sqrt(len(ws) * float((g * g).sum()))  # パラメータごとに 1 回ずつ数える（PyTorch と同じ）
        rate = 0.5 / (total + 1e-6)
        return [g * rate if rate < 1 else g for _ in ws]
    return [g for _ in ws]


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read_only"])
@pytest.mark.parametrize("hook", list(HOOKS))
@pytest.mark.parametrize("name, make, kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_shared_gradients_under_every_hook_and_optimizer(xp, name, make, kw, hook, read_only):
    model = TwoBiases(xp)
    opt = make().setup(model)
    if HOOKS[hook]() is not None:
        opt.add_hook(HOOKS[hook]())
    ws = [cuda.as_numpy(p.data).astype(np.float64) for p in (model.b1, model.b2)]
    states = [{}, {}]
    for t in (1, 2, 3):
        shared = _shared_backward(model, read_only)
        before = cuda.as_numpy(shared).copy()
        g = before.astype(np.float64)
        grads = _hooked_grads64(hook, ws, g)
        ws = [_step64(name, w, gi, s, t, 0.1, **kw) for w, gi, s in zip(ws, grads, states)]
        opt.update()
        where = f"{name} + {hook}, {'read-only' if read_only else 'writable'} の共有された勾配, {t} 回目"
        np.testing.assert_array_equal(cuda.as_numpy(shared), before, err_msg=f"{where}: 共有された勾配の配列が書き換えられた")
        for p, w in zip((model.b1, model.b2), ws):
            assert p.dtype == np.float32 and p.grad.dtype == np.float32, where
            np.testing.assert_allclose(cuda.as_numpy(p.data), w, rtol=1e-5, atol=1e-6, err_msg=where)
    for key, s in opt.state.items():
        for k, arr in s.items():
            assert arr.dtype == np.float32, (name, key, k)


@pytest.mark.parametrize("hook", ["WeightDecay", "ClipGrad"])
def test_hooks_accept_a_read_only_gradient(xp, hook):
    w = Parameter(xp.asarray(np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]], dtype=np.float32)))
    F.sum(w).backward()  # 勾配は broadcast_to の書き込めない（ストライド 0 の）ビュー
    if xp is np:
        assert not w.grad.data.flags.writeable and 0 in w.grad.data.strides
    before = w.grad
    result = HOOKS[hook]()([w])
    ones = np.ones((2, 3))
    if hook == "WeightDecay":
        expected = ones + 0.1 * cuda.as_numpy(w.data).astype(np.float64)
    else:
        assert result == pytest.approx(math.sqrt(6), rel=1e-6)  # クリップ前のノルムを返す
        expected = ones * 0.5 / (math.sqrt(6) + 1e-6)
    assert w.grad is not before and w.grad.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(w.grad.data), expected, rtol=1e-6)
    np.testing.assert_array_equal(cuda.as_numpy(before.data), ones)


@pytest.mark.parametrize("max_norm", [1e-3, 0.3, 2.0])
def test_clip_grad_leaves_global_norm_equal_to_max_norm(xp, max_norm):
    rng = np.random.default_rng(0)
    params = []
    for shape in [(4, 3), (3,), (), (2, 2, 2)]:
        p = Parameter(xp.asarray(rng.standard_normal(shape).astype(np.float32)))
        p.grad = Variable(xp.asarray((rng.standard_normal(shape) * 2).astype(np.float32)))
        params.append(p)
    model = TwoBiases(xp)
    shared = _shared_backward(model, read_only=True)
    params += [model.b1, model.b2]  # 共有された勾配（パラメータごとに 1 回ずつ数える）
    before = [cuda.as_numpy(p.grad.data).astype(np.float64) for p in params]
    total = math.sqrt(sum(float((g * g).sum()) for g in before))
    assert total > 2 * max_norm  # クリップされる
    returned = optimizers.ClipGrad(max_norm)(params)
    assert returned == pytest.approx(total, rel=1e-6)
    after = [cuda.as_numpy(p.grad.data).astype(np.float64) for p in params]
    norm = math.sqrt(sum(float((g * g).sum()) for g in after))
    np.testing.assert_allclose(norm, max_norm, rtol=1e-5)
    for g0, g1, p in zip(before, after, params):
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(g1, g0 * (max_norm / (total + 1e-6)), rtol=1e-6, atol=1e-12)  # 向きは同じ
    np.testing.assert_array_equal(cuda.as_numpy(shared), 1.0)


def test_clip_grad_below_max_norm_keeps_the_gradients():
    p = Parameter(np.zeros(2, dtype=np.float32))
    p.grad = Variable(np.array([0.3, 0.4], dtype=np.float32))
    before = p.grad
    assert optimizers.ClipGrad(0.5 + 2e-6)([p]) == pytest.approx(0.5)
    assert p.grad is before


def test_old_in_place_clip_would_scale_a_shared_gradient_twice():
    # 書き込む実装（param.grad.data *= rate）なら、共有された勾配は 2 回縮み、ノルムが max_norm より小さくなる
    model = TwoBiases(np)
    _shared_backward(model, read_only=False)
    optimizers.ClipGrad(1e-3)([model.b1, model.b2])
    norm = math.sqrt(sum(float((p.grad.data.astype(np.float64) ** 2).sum()) for p in (model.b1, model.b2)))
    np.testing.assert_allclose(norm, 1e-3, rtol=1e-5)
    assert model.b1.grad is not model.b2.grad


# --- setup と既定値 ------------------------------------------------------------------------

@pytest.mark.parametrize("target, shown", [
    (lambda m: list(m.params()), "list"),
    (lambda m: m.params(), "generator"),
    (lambda m: m.w, "Parameter"),
    (lambda m: Variable(np.zeros(2, dtype=np.float32)), "Variable"),
    (lambda m: F.mean_squared_error, "function"),
    (lambda m: OneParam, "type"),
])
def test_setup_rejects_anything_but_a_layer(target, shown):
    model = OneParam((1.0, 2.0))
    for make in (optimizers.SGD, optimizers.Adam):
        with pytest.raises(TypeError, match=f"受け取ったのは {shown}.*setup\\(model\\)"):
            make().setup(target(model))
    assert optimizers.SGD().setup(L.Linear(2, in_size=3)).target is not None  # Layer なら受け取る


def test_lr_must_be_a_number():
    model = OneParam((1.0, 2.0))
    with pytest.raises(TypeError, match="学習率.*受け取ったのは generator.*setup\\(model\\)"):
        optimizers.Adam(model.params())  # PyTorch の Adam(model.parameters()) の癖
    with pytest.raises(TypeError, match="受け取ったのは OneParam"):
        optimizers.SGD(model)


@pytest.mark.parametrize("name, make, attrs, kw", [
    ("SGD", optimizers.SGD, {"lr": 0.01}, {}),
    ("MomentumSGD", optimizers.MomentumSGD, {"lr": 0.01, "momentum": 0.9, "nesterov": False}, {"momentum": 0.9}),
    ("AdaGrad", optimizers.AdaGrad, {"lr": 0.01, "eps": 1e-8}, {}),
    ("RMSprop", optimizers.RMSprop, {"lr": 0.01, "alpha": 0.99, "eps": 1e-8}, {"alpha": 0.99}),
    ("Adam", optimizers.Adam, {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, {}),
    ("AdamW", optimizers.AdamW, {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
     {"weight_decay": 0.01}),
])
def test_default_hyperparameters(name, make, attrs, kw):
    opt = make()
    for key, value in attrs.items():
        assert getattr(opt, key) == value and type(getattr(opt, key)) is type(value), (name, key)
    # 既定値が実際の更新に使われていること（float64 の手計算と比べる）
    np.testing.assert_allclose(_run(make(), GRADS), _reference(name, attrs["lr"], **kw), rtol=1e-5, atol=1e-7,
                               err_msg=name)


def test_default_hyperparameters_of_hooks_and_schedulers():
    opt = optimizers.SGD(lr=1.0)
    step = optimizers.StepLR(opt, step_size=1)
    assert step.gamma == 0.1 and step.step() == pytest.approx(0.1)
    cos = optimizers.CosineAnnealingLR(optimizers.SGD(lr=1.0), T_max=2)
    assert cos.eta_min == 0.0 and [cos.step(), cos.step()] == [pytest.approx(0.5), pytest.approx(0.0, abs=1e-15)]
    warm = optimizers.LinearWarmup(optimizers.SGD(lr=1.0), warmup_steps=2)
    assert warm.after is None
