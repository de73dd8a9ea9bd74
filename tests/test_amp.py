"""第14章: 混合精度（GradScaler・マスタの重み・float32 の島）と勾配チェックポイントのテスト。"""
import tracemalloc

import numpy as np
import pytest

import mini_dl
import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Parameter, Variable, amp, cuda, datasets, optimizers
from mini_dl.models import MLP, Model


class Pair(Model):
    def __init__(self, xp, a, b):
        super().__init__()
        self.a = Parameter(xp.asarray(np.array(a, dtype=np.float32)))
        self.b = Parameter(xp.asarray(np.array(b, dtype=np.float32)))


def _set_grads(xp, model, ga, gb):
    model.a.grad = Variable(xp.asarray(np.array(ga, dtype=np.float32)))
    model.b.grad = Variable(xp.asarray(np.array(gb, dtype=np.float32)))


# --- GradScaler ------------------------------------------------------------------------------

def test_scale_multiplies_loss_and_keeps_dtype(xp):
    scaler = amp.GradScaler(init_scale=1024.0)
    for dtype in (np.float32, np.float16):
        w = Variable(xp.asarray(np.array([1.5, -2.0], dtype=dtype)))
        loss = F.sum(w * w)
        scaled = scaler.scale(loss)
        assert scaled.dtype == dtype
        assert float(cuda.as_numpy(scaled.data)) == 1024.0 * 6.25
        scaled.backward()
        np.testing.assert_array_equal(cuda.as_numpy(w.grad.data), np.array([3.0, -4.0]) * 1024, err_msg="scale の逆伝播")
    assert scaler.get_scale() == 1024.0


def test_step_unscales_gradients_without_writing_in_place(xp):
    model = Pair(xp, [1.0, 2.0], [3.0])
    opt = optimizers.SGD(lr=0.5).setup(model)
    scaler = amp.GradScaler(init_scale=8.0)
    _set_grads(xp, model, [8.0, -16.0], [4.0])
    old_grad = model.a.grad
    old_array = old_grad.data
    assert scaler.step(opt) is True
    np.testing.assert_array_equal(cuda.as_numpy(model.a.grad.data), [1.0, -2.0], err_msg="1/S 倍に戻した勾配")
    np.testing.assert_array_equal(cuda.as_numpy(model.a.data), [0.5, 3.0], err_msg="1/S 倍の勾配で更新")
    np.testing.assert_array_equal(cuda.as_numpy(model.b.data), [2.75])
    np.testing.assert_array_equal(cuda.as_numpy(old_array), [8.0, -16.0], err_msg="元の勾配の配列に書き込んだ")
    assert old_grad.data is old_array and model.a.grad is not old_grad
    assert model.a.dtype == np.float32 and model.a.grad.dtype == np.float32
    scaler.update()
    assert scaler.get_scale() == 8.0


def test_unscale_then_step_unscales_once(xp):
    model = Pair(xp, [0.0, 0.0], [0.0])
    opt = optimizers.SGD(lr=1.0).setup(model)
    scaler = amp.GradScaler(init_scale=4.0)
    _set_grads(xp, model, [4.0, 8.0], [-4.0])
    scaler.unscale_(opt)
    np.testing.assert_array_equal(cuda.as_numpy(model.a.grad.data), [1.0, 2.0])
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.unscale_(opt)
    scaler.step(opt)  # もう 1 回 1/S 倍にはしない
    np.testing.assert_array_equal(cuda.as_numpy(model.a.data), [-1.0, -2.0])
    np.testing.assert_array_equal(cuda.as_numpy(model.b.data), [1.0])
    scaler.update()


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_overflow_skips_step_and_backs_off(xp, bad):
    model = Pair(xp, [1.0, 2.0], [3.0])
    opt = optimizers.Adam(lr=0.1).setup(model)
    scaler = amp.GradScaler(init_scale=2.0**16, backoff_factor=0.25, growth_interval=3)
    _set_grads(xp, model, [1.0, 1.0], [bad])  # 1 つのパラメータの 1 要素だけが inf/NaN
    with np.errstate(invalid="ignore", over="ignore"):
        assert scaler.step(opt) is False
    np.testing.assert_array_equal(cuda.as_numpy(model.a.data), [1.0, 2.0], err_msg="飛ばすべき更新をした")
    np.testing.assert_array_equal(cuda.as_numpy(model.b.data), [3.0])
    assert opt.t == 0 and opt.state == {}, "飛ばしたステップで最適化手法の状態が変わった"
    scaler.update()
    assert scaler.get_scale() == 2.0**14
    _set_grads(xp, model, [2.0**14, 0.0], [0.0])  # 次のステップは更新する
    assert scaler.step(opt) is True
    assert opt.t == 1
    scaler.update()
    assert scaler.get_scale() == 2.0**14


def test_float16_gradient_overflow_is_detected(xp):
    """float16 で逆伝播した勾配があふれる（inf）と、ステップを飛ばしてスケールを下げる。"""
    model = Pair(xp, [0.0, 0.0], [0.0])
    opt = optimizers.SGD(lr=1.0).setup(model)
    scaler = amp.GradScaler()  # S = 65536
    x = Variable(xp.asarray(np.array([3.0, -2.0], dtype=np.float16)))
    loss = F.sum(x * x)  # float16 の損失 13 * 65536 はあふれる
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = scaler.scale(loss)
    assert not np.isfinite(float(cuda.as_numpy(scaled.data)))
    model.a.grad = Variable(xp.asarray(np.array([np.inf, 1.0], dtype=np.float32)))
    assert scaler.step(opt) is False
    scaler.update()
    assert scaler.get_scale() == 32768.0


def test_growth_after_interval(xp):
    model = Pair(xp, [1.0, 2.0], [3.0])
    opt = optimizers.SGD(lr=0.0).setup(model)
    scaler = amp.GradScaler(init_scale=16.0, growth_factor=4.0, growth_interval=3)
    scales = []
    for step in range(7):
        bad = np.inf if step == 4 else 1.0
        _set_grads(xp, model, [1.0, 1.0], [bad])
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    # 3 回続けて無事 → 4 倍。4 回目（step 3）は数え直しの 1 回目、step 4 であふれて半分、そこから数え直す
    assert scales == [16.0, 16.0, 64.0, 64.0, 32.0, 32.0, 32.0], scales
    state = scaler.state_dict()
    other = amp.GradScaler()
    other.load_state_dict(state)
    assert other.get_scale() == 32.0 and other.state_dict() == state


def test_disabled_scaler_is_transparent(xp):
    model = Pair(xp, [1.0, 2.0], [3.0])
    opt = optimizers.SGD(lr=1.0).setup(model)
    scaler = amp.GradScaler(enabled=False)
    loss = Variable(xp.asarray(np.array(2.0, dtype=np.float32)))
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0
    _set_grads(xp, model, [1.0, 1.0], [1.0])
    assert scaler.step(opt) is True
    np.testing.assert_array_equal(cuda.as_numpy(model.a.data), [0.0, 1.0])
    scaler.update()


def test_unscale_refuses_float16_gradients(xp):
    model = Pair(xp, [1.0, 2.0], [3.0])
    amp.cast_model(model, np.float16)
    opt = optimizers.SGD(lr=0.1).setup(model)
    model.a.grad = Variable(xp.asarray(np.array([1.0, 1.0], dtype=np.float16)))
    with pytest.raises(ValueError, match="MasterWeights"):
        amp.GradScaler().step(opt)
    np.testing.assert_array_equal(cuda.as_numpy(model.a.data), np.array([1.0, 2.0], dtype=np.float16))


def test_scaler_errors():
    for kwargs in ({"init_scale": 0.0}, {"growth_factor": 1.0}, {"backoff_factor": 1.5}, {"growth_interval": 0}):
        with pytest.raises(ValueError):
            amp.GradScaler(**kwargs)
    with pytest.raises(RuntimeError, match="step"):
        amp.GradScaler().update()


# --- マスタの重み ---------------------------------------------------------------------------

def test_cast_model_and_master_weights(xp):
    model = MLP((3, 2), activation=F.relu, seed=0)
    model(xp.asarray(np.ones((1, 4), dtype=np.float32)))
    ref = [cuda.as_numpy(p.data).copy() for p in model.params()]
    master = amp.MasterWeights(model)
    assert all(p.dtype == np.float16 for p in model.params())
    assert [name for name, _ in master.named_params()] == [name for name, _ in model.named_params()]
    for p, m, r in zip(model.params(), master.params(), ref):
        assert m.dtype == np.float32 and cuda.get_array_module(m.data) is xp
        np.testing.assert_array_equal(cuda.as_numpy(m.data), r, err_msg="控えは元の float32 の値")
    x = xp.asarray(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float16))
    t = xp.asarray(np.array([0, 1, 1, 0, 1]))
    opt = optimizers.SGD(lr=0.1).setup(master)
    scaler = amp.GradScaler(init_scale=256.0)
    loss = amp.float32_island(F.softmax_cross_entropy, model(x), t)
    assert loss.dtype == np.float32
    master.cleargrads()
    scaler.scale(loss).backward()
    assert all(p.grad.dtype == np.float16 for p in model.params())
    master.pull_grads()
    grads16 = [cuda.as_numpy(p.grad.data).astype(np.float32) for p in model.params()]
    assert scaler.step(opt)
    scaler.update()
    master.push_weights()
    for p, m, r, g in zip(model.params(), master.params(), ref, grads16):
        expected = r - np.float32(0.1) * (g / np.float32(256.0))
        np.testing.assert_allclose(cuda.as_numpy(m.data), expected, rtol=1e-6, atol=1e-7, err_msg="控えの更新")
        assert p.dtype == np.float16
        np.testing.assert_array_equal(cuda.as_numpy(p.data), cuda.as_numpy(m.data).astype(np.float16))
    master.cleargrads()
    assert all(p.grad is None for p in model.params()) and all(m.grad is None for m in master.params())


def test_master_weights_keep_small_updates(xp):
    """float16 の ulp の半分より小さな更新は、float16 では消え、float32 の控えには積み重なる。"""
    w0 = np.full(4, 1.0, dtype=np.float32)
    lr, g, steps = 1e-4, 1.0, 50  # 1 回の更新 1e-4 は、1 の近くの float16 の ulp 2^-10 の半分より小さい

    class One(Model):
        def __init__(self):
            super().__init__()
            self.w = Parameter(xp.asarray(w0))

    pure = amp.cast_model(One(), np.float16)
    opt16 = optimizers.SGD(lr=lr).setup(pure)
    mixed = One()
    master = amp.MasterWeights(mixed)
    opt32 = optimizers.SGD(lr=lr).setup(master)
    for _ in range(steps):
        pure.w.grad = Variable(xp.full(4, g, dtype=np.float16))
        opt16.update()
        mixed.w.grad = Variable(xp.full(4, g, dtype=np.float16))
        master.pull_grads()
        opt32.update()
        master.push_weights()
    np.testing.assert_array_equal(cuda.as_numpy(pure.w.data), w0.astype(np.float16), err_msg="float16 の更新は消える")
    np.testing.assert_allclose(cuda.as_numpy(next(master.params()).data), w0 - lr * g * steps, rtol=1e-6)
    np.testing.assert_array_equal(cuda.as_numpy(mixed.w.data), (w0 - lr * g * steps).astype(np.float16))


def test_cast_model_errors_and_bfloat16():
    with pytest.raises(ValueError, match="まだ作られていません"):
        amp.cast_model(MLP((3, 2)), np.float16)
    with pytest.raises(ValueError, match="まだ作られていません"):
        amp.MasterWeights(MLP((3, 2)))
    pytest.importorskip("ml_dtypes")
    layer = L.Linear(3, in_size=2, seed=0)
    amp.cast_model(layer, "bfloat16")
    assert layer.W.dtype.name == "bfloat16"


def test_float32_island(xp):
    x16 = Variable(xp.asarray(np.array([[10.0, 12.0, 11.0]], dtype=np.float16)))
    with np.errstate(over="ignore", invalid="ignore"):
        naive = xp.exp(x16.data) / xp.exp(x16.data).sum()  # e^12 は float16 であふれる
    assert not bool(xp.isfinite(naive).all())
    y = amp.float32_island(F.softmax, x16)
    assert y.dtype == np.float32
    expected = np.exp([-2.0, 0.0, -1.0]) / np.exp([-2.0, 0.0, -1.0]).sum()
    np.testing.assert_allclose(cuda.as_numpy(y.data), expected[None], rtol=1e-6)
    t = xp.asarray(np.array([1]))
    loss = amp.float32_island(F.softmax_cross_entropy, x16, t)
    loss.backward()
    assert loss.dtype == np.float32 and x16.grad.dtype == np.float16
    np.testing.assert_allclose(cuda.as_numpy(x16.grad.data).astype(np.float64), (expected - [0, 1, 0])[None],
                               atol=1e-3, err_msg="float32 の島の勾配")


# --- 勾配チェックポイント ------------------------------------------------------------------------

def _grads(params):
    return [cuda.as_numpy(p.grad.data).copy() for p in params]


def test_checkpoint_same_values_and_gradients(xp):
    rng = np.random.default_rng(0)
    layers = [L.Linear(6, in_size=6, seed=i) for i in range(4)]
    for layer in layers:
        layer.to_gpu() if xp is not np else None
    x0 = xp.asarray(rng.standard_normal((5, 6)).astype(np.float32))

    def block(h):
        for layer in layers:
            h = F.tanh(layer(h))
        return h

    params = [p for layer in layers for p in layer.params()]
    results = []
    for use in (False, True):
        for p in params:
            p.cleargrad()
        x = Variable(x0)
        y = amp.checkpoint(block, x) if use else block(x)
        loss = F.sum(y * y)
        loss.backward()
        results.append((cuda.as_numpy(y.data), cuda.as_numpy(x.grad.data), _grads(params)))
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    np.testing.assert_array_equal(y1, y0, err_msg="checkpoint の出力")
    np.testing.assert_array_equal(gx1, gx0, err_msg="checkpoint の入力の勾配")
    for a, b in zip(gp1, gp0):
        np.testing.assert_array_equal(a, b, err_msg="checkpoint のパラメータの勾配")


def test_checkpoint_several_inputs_outputs_and_captured_params(xp):
    rng = np.random.default_rng(1)
    W = Parameter(xp.asarray(rng.standard_normal((3, 3)).astype(np.float32)))

    def fn(a, b):
        h = F.tanh(a @ W + b)
        return h * b, F.sum(h, axis=0)

    a0 = xp.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    b0 = xp.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    out = []
    for use in (False, True):
        W.cleargrad()
        a, b = Variable(a0), Variable(b0)
        y1, y2 = amp.checkpoint(fn, a, b) if use else fn(a, b)
        loss = F.sum(y1 * y1) + F.sum(y2 * W[0]) + F.sum(a)  # a は checkpoint の外でも使う
        loss.backward()
        out.append([cuda.as_numpy(v) for v in (y1.data, y2.data, a.grad.data, b.grad.data, W.grad.data)])
    for got, expected, name in zip(out[1], out[0], ["y1", "y2", "a.grad", "b.grad", "W.grad"]):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=f"checkpoint の {name}")


def test_checkpoint_gradient_check():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((3, 2))

    def f(x):
        return amp.checkpoint(lambda h: F.sin(h @ W) * h[:, :2], x)

    mini_dl.gradient_check(f, rng.standard_normal((4, 3)))


def test_checkpoint_refuses_create_graph_and_passes_no_grad():
    x = Variable(np.array([1.0, 2.0], dtype=np.float32))
    y = F.sum(amp.checkpoint(lambda h: h * h, x))
    with pytest.raises(NotImplementedError, match="create_graph"):
        y.backward(create_graph=True)
    with mini_dl.no_grad():
        z = amp.checkpoint(lambda h: h * h, x)
    assert z.creator is None


def _deep_peak(use_checkpoint, depth=24, segment=4, N=512, D=64):
    layers = [L.Linear(D, in_size=D, seed=i) for i in range(depth)]
    x0 = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)

    def run_segment(h, start):
        for layer in layers[start:start + segment]:
            h = F.tanh(layer(h))
        return h

    tracemalloc.start()
    try:
        h = x = Variable(x0)
        for start in range(0, depth, segment):
            def segment_fn(h, start=start):
                return run_segment(h, start)

            h = amp.checkpoint(segment_fn, h) if use_checkpoint else segment_fn(h)
        F.sum(h * h).backward()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, x.grad.data, [layer.W.grad.data for layer in layers]


def test_checkpoint_lowers_peak_memory():
    peak0, gx0, gW0 = _deep_peak(False)
    peak1, gx1, gW1 = _deep_peak(True)
    activation = 512 * 64 * 4  # 1 つの活性の大きさ（128 KiB）
    assert peak1 < 0.5 * peak0, (peak0, peak1)
    assert peak0 - peak1 > 10 * activation, (peak0, peak1)
    np.testing.assert_array_equal(gx1, gx0)
    for a, b in zip(gW1, gW0):
        np.testing.assert_array_equal(a, b)


# --- float16 で digits を学習する -----------------------------------------------------------------

def train_digits(mixed, seed, epochs=12):
    train, test = datasets.Digits(train=True), datasets.Digits(train=False)
    model = MLP((100, 10), activation=F.relu, seed=seed)
    model(train.data[:1])
    dtype = np.float16 if mixed else np.float32
    if mixed:
        master = amp.MasterWeights(model)
        opt = optimizers.Adam(lr=0.003).setup(master)
        scaler = amp.GradScaler(growth_interval=50)
    else:
        opt = optimizers.Adam(lr=0.003).setup(model)
    loader = mini_dl.DataLoader(train, 64, shuffle=True, seed=seed)
    skipped = 0
    with np.errstate(over="ignore", invalid="ignore"):  # スケールが大きすぎたステップのあふれは GradScaler が扱う
        for _ in range(epochs):
            for x, t in loader:
                x = x.astype(dtype)
                if mixed:
                    loss = amp.float32_island(F.softmax_cross_entropy, model(x), t)
                    master.cleargrads()
                    scaler.scale(loss).backward()
                    master.pull_grads()
                    skipped += not scaler.step(opt)
                    scaler.update()
                    master.push_weights()
                else:
                    loss = F.softmax_cross_entropy(model(x), t)
                    model.cleargrads()
                    loss.backward()
                    opt.update()
    assert all(p.dtype == dtype for p in model.params())
    with mini_dl.no_grad():
        y = model(test.data.astype(dtype))
    return float((y.data.argmax(axis=1) == test.label).mean()), skipped


def test_float16_training_reaches_float32_accuracy():
    seeds = (0, 1, 2)
    acc32 = np.mean([train_digits(False, s)[0] for s in seeds])
    runs16 = [train_digits(True, s) for s in seeds]
    acc16 = np.mean([acc for acc, _ in runs16])
    assert acc32 > 0.95, acc32
    assert abs(acc16 - acc32) <= 0.005, (acc16, acc32)
    assert all(skipped > 0 for _, skipped in runs16), "S が大きくなると、float16 の勾配があふれて飛ばすステップがあるはず"
