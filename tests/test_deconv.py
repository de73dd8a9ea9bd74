"""第16章: 転置畳み込み ``F.deconv2d``・``F.deconv2d_simple``・``L.Deconv2d`` と、``ConvAutoencoder``・``VAE`` のテスト。

順伝播は、画素ごとに重みを足し込む素朴なループ（独立な参照）と比べ、``conv2d`` の随伴であること
:math:`\\langle \\mathrm{conv2d}(x, W), y \\rangle = \\langle x, \\mathrm{deconv2d}(y, W) \\rangle` も確かめます。
勾配は float64 の中心差分で、1 階と 2 階を確かめます（奇数の shape・ストライド・パディング・outsize）。
"""
import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Variable, cuda, gradient_check, no_grad, optimizers
from mini_dl.models import VAE, ConvAutoencoder

# (H, W, KH, KW, stride, pad, outsize): 奇数の大きさ・縦横で違うストライドとパディング・outsize の指定
CASES = [
    (3, 4, 3, 2, (2, 1), (1, 0), None),
    (2, 3, 3, 3, (2, 3), (0, 1), (6, 8)),  # outsize で最小より大きくする（PyTorch の output_padding）
    (3, 3, 2, 2, 1, 0, None),
    (4, 2, 4, 3, 2, 1, (9, 4)),
    (2, 1, 3, 3, 3, 2, (3, 1)),  # パディングが大きく、出力が入力とほとんど同じ大きさ
]


def _deconv_loops(x, W, b, stride, pad, outsize):
    """転置畳み込みの独立な参照: 入力の 1 画素ずつ、重みをその値倍して出力に足し込みます（float64）。"""
    N, C, H, Wd = x.shape
    _, OC, KH, KW = W.shape
    SH, SW = (stride, stride) if isinstance(stride, int) else stride
    PH, PW = (pad, pad) if isinstance(pad, int) else pad
    OH, OW = outsize
    y = np.zeros((N, OC, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(Wd):
                    for kh in range(KH):
                        for kw in range(KW):
                            r, q = i * SH + kh - PH, j * SW + kw - PW
                            if 0 <= r < OH and 0 <= q < OW:
                                y[n, :, r, q] += x[n, c, i, j] * W[c, :, kh, kw]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def _smallest(size, k, s, p):
    return s * (size - 1) + k - 2 * p


def _inputs(case, seed=0):
    H, Wd, KH, KW = case[:4]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 3, H, Wd)), rng.standard_normal((3, 2, KH, KW)), rng.standard_normal(2)


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _outsize(case):
    H, Wd, KH, KW, stride, pad, outsize = case
    if outsize is not None:
        return outsize
    (SH, SW), (PH, PW) = _pair(stride), _pair(pad)
    return _smallest(H, KH, SH, PH), _smallest(Wd, KW, SW, PW)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("f", [F.deconv2d, F.deconv2d_simple], ids=["deconv2d", "deconv2d_simple"])
def test_forward_matches_scatter_loops(xp, f, case):
    x, W, b = _inputs(case)
    stride, pad, outsize = case[4:]
    expected = _deconv_loops(x, W, b, stride, pad, _outsize(case))
    y = f(xp.asarray(x), xp.asarray(W), xp.asarray(b), stride=stride, pad=pad, outsize=outsize)
    assert y.shape == expected.shape
    np.testing.assert_allclose(cuda.as_numpy(y.data), expected, rtol=1e-10, atol=1e-12,
                               err_msg=f"{f.__name__} が素朴なループと合いません: {case}")
    y = f(xp.asarray(x), xp.asarray(W), stride=stride, pad=pad, outsize=outsize)  # バイアスなし
    np.testing.assert_allclose(cuda.as_numpy(y.data), expected - b.reshape(1, -1, 1, 1), rtol=1e-10, atol=1e-12)


def test_forward_by_hand_stride_2():
    # 1 画素ずつ重みを置く: 2x2 の入力、2x2 の重み 1、ストライド 2 なら、重ならずに 4x4 に並ぶ
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)
    W = np.ones((1, 1, 2, 2), dtype=np.float32)
    y = F.deconv2d(x, W, stride=2)
    expected = np.repeat(np.repeat(x[0, 0], 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(y.data[0, 0], expected)
    # カーネル 3、ストライド 2 なら窓が 1 列ずつ重なり、重なった所は足し算になる（市松模様の元）
    y = F.deconv2d(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 3, 3), np.float32), stride=2)
    np.testing.assert_array_equal(y.data[0, 0], [[1, 1, 2, 1, 1]] * 2 + [[2, 2, 4, 2, 2]] + [[1, 1, 2, 1, 1]] * 2)


@pytest.mark.parametrize("case", CASES)
def test_deconv2d_is_the_adjoint_of_conv2d(xp, case):
    # <conv2d(x, W), y> = <x, deconv2d(y, W)>。W は conv2d から見て (OC, C, KH, KW) = deconv2d から見て (C', OC', KH, KW)
    H, Wd, KH, KW, stride, pad, outsize = case
    OH, OW = _outsize(case)
    rng = np.random.default_rng(1)
    big = rng.standard_normal((2, 2, OH, OW))  # deconv2d の出力側（conv2d の入力）
    small = rng.standard_normal((2, 3, H, Wd))  # deconv2d の入力側（conv2d の出力）
    W = rng.standard_normal((3, 2, KH, KW))
    conv = F.conv2d(xp.asarray(big), xp.asarray(W), stride=stride, pad=pad)
    assert conv.shape == small.shape
    deconv = F.deconv2d(xp.asarray(small), xp.asarray(W), stride=stride, pad=pad, outsize=outsize)
    lhs = float(np.sum(cuda.as_numpy(conv.data) * small))
    rhs = float(np.sum(big * cuda.as_numpy(deconv.data)))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, err_msg=f"deconv2d が conv2d の随伴になっていません: {case}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("f", [F.deconv2d, F.deconv2d_simple], ids=["deconv2d", "deconv2d_simple"])
def test_gradient_check_first_and_second_order(f, case):
    x, W, b = _inputs(case, seed=2)
    stride, pad, outsize = case[4:]

    def g(a, w, c):
        return f(a, w, c, stride=stride, pad=pad, outsize=outsize)
    g.__name__ = f.__name__
    gradient_check(g, x, W, b)

    rng = np.random.default_rng(3)
    w1 = rng.uniform(0.5, 1.5, size=_outsize(case))
    for i in range(3):
        def grad_i(a, w, c, i=i):
            for v in (a, w, c):
                v.cleargrad()
            y = g(a, w, c)
            F.sum(y * (w1 + y * y)).backward(create_graph=True)  # 3 次の項で、gy と入力の両方についての微分を試す
            return (a, w, c)[i].grad
        grad_i.__name__ = f"d({f.__name__})/dx{i}"
        gradient_check(grad_i, x, W, b)


def test_gradients_on_the_device(xp):
    case = CASES[0]
    x, W, b = (xp.asarray(a) for a in _inputs(case, seed=4))
    gradient_check(lambda a, w, c: F.deconv2d(a, w, c, stride=(2, 1), pad=(1, 0)), x, W, b)


def test_float32_stays_float32(xp):
    rng = np.random.default_rng(5)
    x = Variable(xp.asarray(rng.standard_normal((2, 3, 4, 5)).astype(np.float32)))
    W = Variable(xp.asarray(rng.standard_normal((3, 2, 3, 3)).astype(np.float32)))
    b = Variable(xp.asarray(np.zeros(2, np.float32)))
    y = F.deconv2d(x, W, b, stride=2, pad=1)
    assert y.dtype == np.float32 and y.shape == (2, 2, 7, 9)
    F.sum(y * y).backward()
    assert x.grad.dtype == W.grad.dtype == b.grad.dtype == np.float32


def test_wrong_shapes_and_outsize_raise_in_japanese():
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="deconv2d の shape が合いません"):
        F.deconv2d(x, np.zeros((2, 3, 3, 3), np.float32))  # W の最初の軸は C=3
    with pytest.raises(ValueError, match="8〜9"):
        F.deconv2d(x, np.zeros((3, 2, 4, 4), np.float32), stride=2, pad=1, outsize=10)
    with pytest.raises(ValueError, match="バイアス"):
        F.deconv2d(x, np.zeros((3, 2, 3, 3), np.float32), np.zeros(3, np.float32))


def test_layer_lazy_init_shapes_seed_and_device(xp):
    layer = L.Deconv2d(4, 3, stride=2, pad=1, seed=0)
    assert layer.W.data is None
    x = xp.asarray(np.random.default_rng(6).standard_normal((2, 5, 6, 7)).astype(np.float32))
    y = layer(x)
    assert y.shape == (2, 4, 11, 13) and y.dtype == np.float32
    assert layer.W.shape == (5, 4, 3, 3) and layer.b.shape == (4,)
    assert cuda.get_array_module(layer.W.data) is xp and cuda.get_array_module(layer.b.data) is xp
    same = L.Deconv2d(4, 3, stride=2, pad=1, in_channels=5, seed=0)
    np.testing.assert_array_equal(cuda.as_numpy(layer.W.data), same.W.data)
    expected = F.deconv2d(cuda.as_numpy(x), same.W.data, same.b.data, stride=2, pad=1)
    np.testing.assert_allclose(cuda.as_numpy(y.data), expected.data, rtol=1e-5, atol=1e-6)
    assert L.Deconv2d(4, 2, stride=2, outsize=(13, 15), seed=0)(x).shape == (2, 4, 13, 15)
    assert [p.name for p in L.Deconv2d(2, 2, nobias=True, in_channels=3).params()] == ["W"]
    with pytest.raises(TypeError):
        L.Deconv2d(3, 4, 3)  # PyTorch の癖の (in, out, kernel) は位置引数では渡せない


def test_conv_autoencoder_shapes_and_training_on_the_device(xp):
    rng = np.random.default_rng(7)
    patterns = rng.uniform(0, 1, size=(2, 1, 8, 12)).astype(np.float32)
    x = xp.asarray(patterns[[0, 1, 0, 1, 1, 0]])  # 2 種類の画像だけなので、覚えれば誤差は小さくなる
    model = ConvAutoencoder(3, channels=(2, 4), in_shape=(1, 8, 12), seed=0)
    z = model.encode(x)
    y = model(x)
    assert z.shape == (6, 3) and y.shape == (6, 1, 8, 12) and y.dtype == np.float32
    assert 0 <= float(y.data.min()) and float(y.data.max()) <= 1
    opt = optimizers.Adam(lr=0.02).setup(model)
    first = None
    for _ in range(80):
        loss = F.mean_squared_error(model(x), x)
        first = float(loss.data) if first is None else first
        model.cleargrads()
        loss.backward()
        opt.update()
    assert float(loss.data) < 0.5 * first
    with pytest.raises(ValueError, match="4 の倍数"):
        ConvAutoencoder(in_shape=(1, 10, 12))


def test_vae_loss_pieces_match_formulas(xp):
    rng = np.random.default_rng(8)
    x_np = rng.uniform(0, 1, size=(5, 12)).astype(np.float32)
    model = VAE(2, hidden_size=7, out_size=12, seed=0)
    x = xp.asarray(x_np)
    with no_grad():
        mu, logvar = model.encode(x)
    mu, logvar = cuda.as_numpy(mu.data).astype(np.float64), cuda.as_numpy(logvar.data).astype(np.float64)
    # 同じ種の ε を引き直して、式どおりに計算した値と比べる
    eps = np.random.default_rng(5).standard_normal(mu.shape).astype(np.float32)
    loss, rec, kl = model.loss(x)
    z = mu + np.exp(0.5 * logvar) * eps
    with no_grad():
        logits = cuda.as_numpy(model.decode_logits(xp.asarray(z.astype(np.float32))).data).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    expected_rec = np.mean(-np.sum(x_np * np.log(p) + (1 - x_np) * np.log(1 - p), axis=1))
    expected_kl = np.mean(0.5 * np.sum(mu ** 2 + np.exp(logvar) - logvar - 1, axis=1))
    np.testing.assert_allclose(float(rec.data), expected_rec, rtol=1e-4)
    np.testing.assert_allclose(float(kl.data), expected_kl, rtol=1e-4)
    np.testing.assert_allclose(float(loss.data), expected_rec + expected_kl, rtol=1e-4)
    assert loss.dtype == np.float32


def test_vae_reparameterization_passes_gradients_and_trains(xp):
    rng = np.random.default_rng(9)
    patterns = (rng.uniform(0, 1, size=(2, 16)) > 0.5).astype(np.float32)
    x = xp.asarray(patterns[np.arange(20) % 2])  # 2 種類だけの 2 値の画像
    model = VAE(2, hidden_size=16, out_size=16, seed=1)
    mu = Variable(xp.asarray(np.zeros((3, 2), np.float32)))
    logvar = Variable(xp.asarray(np.zeros((3, 2), np.float32)))
    F.sum(model.reparameterize(mu, logvar)).backward()
    np.testing.assert_array_equal(cuda.as_numpy(mu.grad.data), np.ones((3, 2)))  # dz/dmu = 1
    assert np.all(cuda.as_numpy(logvar.grad.data) != 0)  # ε/2 * σ: 乱数を通して分散にも勾配が流れる
    opt = optimizers.Adam(lr=0.01).setup(model)
    losses = []
    for _ in range(60):
        loss, _, _ = model.loss(x)
        model.cleargrads()
        loss.backward()
        opt.update()
        losses.append(float(loss.data))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    model.eval()
    with no_grad():
        a, b = model(x), model(x)
    np.testing.assert_array_equal(cuda.as_numpy(a.data), cuda.as_numpy(b.data))  # 推論中は z = mu で決まる
    assert a.shape == (20, 16)


def test_third_order_through_the_weight_gradient():
    # Deconv2dGradW.backward も Variable で計算するので、3 階まで微分できる（gy・ggW を定数扱いすると落ちる）
    rng = np.random.default_rng(10)
    x, W = rng.standard_normal((1, 2, 3, 2)), rng.standard_normal((2, 2, 3, 2))
    v = rng.standard_normal(W.shape)

    def second(a, w):
        for t in (a, w):
            t.cleargrad()
        y = F.deconv2d(a, w, stride=2, pad=1)
        F.sum(y * y * y).backward(create_graph=True)
        gw = w.grad
        a.cleargrad()
        w.cleargrad()
        F.sum(gw * gw * v).backward(create_graph=True)  # gW について 2 次なので、その逆伝播がさらに gy と x に依存する
        return a.grad

    gradient_check(second, x, W)
