"""第15章: 畳み込みとプーリング（im2col・col2im・conv2d・max_pooling・average_pooling・L.Conv2d・models.CNN）のテスト。

順伝播は、画素ごとの 2 重ループで書いた独立な参照（NumPy、float64）と比べます。勾配は中心差分
（``gradient_check``、float64）と比べます。2 階微分は tests/test_second_order.py の表にあります。
"""
import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Variable, cuda, gradient_check, initializers, optimizers
from mini_dl.models import CNN

# (kernel_size, stride, pad): 奇数の大きさ、縦と横で違う値、窓が端まで届かない（割り切れない）場合を含めます
CONFIGS = [(3, 1, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 2)), (2, 2, 0), ((2, 3), (3, 2), (1, 1)), (1, 1, 0)]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _ref_conv(x, W, b, stride, pad):
    """畳み込みの参照: 出力の画素ごとに窓と重みの積の和を取る（ループ）。"""
    (sh, sw), (ph, pw) = _pair(stride), _pair(pad)
    N, C, H, Wd = x.shape
    OC, _, KH, KW = W.shape
    xp = np.zeros((N, C, H + 2 * ph, Wd + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + Wd] = x
    OH, OW = (H + 2 * ph - KH) // sh + 1, (Wd + 2 * pw - KW) // sw + 1
    y = np.zeros((N, OC, OH, OW))
    for n in range(N):
        for o in range(OC):
            for i in range(OH):
                for j in range(OW):
                    window = xp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW]
                    y[n, o, i, j] = np.sum(window * W[o]) + (0 if b is None else b[o])
    return y


def _ref_pool(x, kernel, stride, pad, op):
    """プーリングの参照（ループ）。最大はパディングを -inf、平均は 0 として窓の大きさで割る（PyTorch と同じ）。"""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
    N, C, H, W = x.shape
    xp = np.full((N, C, H + 2 * ph, W + 2 * pw), -np.inf if op == "max" else 0.0)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    window = xp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    y[n, c, i, j] = window.max() if op == "max" else window.sum() / (kh * kw)
    return y


def _spread(shape, seed):
    """同点のない値（最大プーリングの勾配確認で、最大の位置が差分で入れ替わらないように）。"""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation((np.arange(n) - n / 2) * 0.1 + 0.01).reshape(shape)


# --- 道具 ---------------------------------------------------------------------------------------

def test_pair_and_output_sizes():
    assert F.pair(3) == (3, 3) and F.pair((2, 1)) == (2, 1) and F.pair([1, 4]) == (1, 4)
    with pytest.raises(ValueError, match="長さ 2"):
        F.pair((1, 2, 3))
    assert F.get_conv_outsize(28, 3, 1, 1) == 28 and F.get_conv_outsize(7, 3, 2, 0) == 3
    assert F.get_conv_outsize(8, 3, 2, 1) == 4  # 割り切れないときは切り捨て
    for size, k, s, p in [(4, 3, 2, 1), (7, 2, 2, 0), (5, 3, 1, 1)]:
        out = F.get_conv_outsize(size, k, s, p)
        assert F.get_deconv_outsize(out, k, s, p) <= size  # 逆畳み込みは、割り切れるなら元の大きさに戻る
    assert F.get_deconv_outsize(14, 4, 2, 1) == 28


@pytest.mark.parametrize("kernel, stride, pad", CONFIGS)
def test_im2col_matches_a_loop_and_col2im_is_its_adjoint(xp, kernel, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
    col = cuda.as_numpy(F.im2col_array(xp.asarray(x), kernel, stride, pad, to_matrix=False))
    N, C, OH, OW = col.shape[:4]
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    for i in range(OH):
        for j in range(OW):
            np.testing.assert_array_equal(col[:, :, i, j], xpad[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw])
    mat = cuda.as_numpy(F.im2col_array(xp.asarray(x), kernel, stride, pad))
    assert mat.shape == (N * OH * OW, C * kh * kw) and mat.dtype == np.float32
    np.testing.assert_array_equal(mat, col.transpose(0, 2, 3, 1, 4, 5).reshape(N * OH * OW, -1))
    # col2im は im2col の転置: <im2col(x), c> = <x, col2im(c)>
    for to_matrix, c in [(False, rng.standard_normal(col.shape)), (True, rng.standard_normal(mat.shape))]:
        back = cuda.as_numpy(F.col2im_array(xp.asarray(c), x.shape, kernel, stride, pad, to_matrix=to_matrix))
        assert back.shape == x.shape
        lhs = np.sum((col if not to_matrix else mat) * c)
        np.testing.assert_allclose(lhs, np.sum(x * back), rtol=1e-6)


def test_im2col_function_gradient(xp):
    x = xp.asarray(np.random.default_rng(1).standard_normal((2, 2, 5, 4)))
    gradient_check(lambda a: F.im2col(a, 3, 2, 1), x)
    gradient_check(lambda a: F.im2col(a, (2, 3), 1, 0, to_matrix=False), x)


# --- conv2d --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, stride, pad", CONFIGS)
def test_conv2d_forward_matches_loops_and_simple(xp, kernel, stride, pad):
    rng = np.random.default_rng(2)
    kh, kw = _pair(kernel)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    W = rng.standard_normal((4, 3, kh, kw)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    expected = _ref_conv(x.astype(np.float64), W.astype(np.float64), b, stride, pad)
    for f in (F.conv2d, F.conv2d_simple):
        y = f(xp.asarray(x), xp.asarray(W), xp.asarray(b), stride=stride, pad=pad)
        assert y.dtype == np.float32, f"{f.__name__} が float32 を保ちません"
        np.testing.assert_allclose(cuda.as_numpy(y.data), expected, rtol=1e-5, atol=1e-5, err_msg=f.__name__)
    y = F.conv2d(xp.asarray(x), xp.asarray(W), None, stride, pad)
    np.testing.assert_allclose(cuda.as_numpy(y.data), expected - b[:, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, pad", CONFIGS[1:5])
@pytest.mark.parametrize("f", [F.conv2d, F.conv2d_simple])
def test_conv2d_gradients(xp, f, kernel, stride, pad):
    rng = np.random.default_rng(3)
    kh, kw = _pair(kernel)
    x, W, b = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((3, 2, kh, kw)), rng.standard_normal(3)
    gradient_check(lambda x, W, b: f(x, W, b, stride, pad), xp.asarray(x), xp.asarray(W), xp.asarray(b))
    gradient_check(lambda x, W: f(x, W, None, stride, pad), xp.asarray(x), xp.asarray(W))


def test_conv2d_float32_gradients_and_fused_equals_simple(xp):
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(2, 3, 6, 5), (4, 3, 3, 3), (4,)]]
    grads = []
    for f in (F.conv2d, F.conv2d_simple):
        vs = [Variable(xp.asarray(a)) for a in arrays]
        F.sum(f(*vs, stride=2, pad=1) ** 2).backward()
        assert all(v.grad.dtype == np.float32 for v in vs), f"{f.__name__} の勾配が float32 ではありません"
        grads.append([cuda.as_numpy(v.grad.data) for v in vs])
    for g_fused, g_simple in zip(*grads):
        np.testing.assert_allclose(g_fused, g_simple, rtol=1e-4, atol=1e-5)


def test_conv2d_does_not_compute_the_gradient_of_data():
    x = np.ones((1, 1, 4, 4), dtype=np.float32)  # 配列のまま渡した入力（データ）
    W = Variable(np.ones((2, 1, 3, 3), dtype=np.float32))
    y = F.conv2d(x, W)
    assert y.creator.needs_gx is False
    F.sum(y).backward()
    np.testing.assert_array_equal(W.grad.data, np.full((2, 1, 3, 3), 4, dtype=np.float32))


def test_conv2d_errors_say_what_was_received():
    x = np.zeros((1, 3, 5, 5), dtype=np.float32)
    with pytest.raises(ValueError, match=r"x \(1, 3, 5, 5\) と W \(2, 2, 3, 3\)"):
        F.conv2d(x, np.zeros((2, 2, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="バイアス"):
        F.conv2d(x, np.zeros((2, 3, 3, 3), dtype=np.float32), np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="0 以下"):
        F.conv2d(x, np.zeros((2, 3, 7, 7), dtype=np.float32))


# --- プーリング ------------------------------------------------------------------------------------

POOL_CONFIGS = [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0)), (2, 1, 1), (3, None, 1)]


@pytest.mark.parametrize("kernel, stride, pad", POOL_CONFIGS)
@pytest.mark.parametrize("op", ["max", "average"])
def test_pooling_forward_matches_loops_and_simple(xp, op, kernel, stride, pad):
    x = (_spread((2, 3, 7, 6), 5) - 3).astype(np.float32)  # 負の値が多い: 最大のパディングが 0 ではなく -inf か確かめる
    expected = _ref_pool(x.astype(np.float64), kernel, kernel if stride is None else stride, pad, op[:3])
    fused, simple = (F.max_pooling, F.max_pooling_simple) if op == "max" else (F.average_pooling,
                                                                             F.average_pooling_simple)
    for f in (fused, simple):
        y = f(xp.asarray(x), kernel, stride, pad)
        assert y.dtype == np.float32
        np.testing.assert_allclose(cuda.as_numpy(y.data), expected, rtol=1e-6, atol=1e-6, err_msg=f.__name__)


@pytest.mark.parametrize("kernel, stride, pad", POOL_CONFIGS)
@pytest.mark.parametrize("f", [F.max_pooling, F.max_pooling_simple, F.average_pooling, F.average_pooling_simple])
def test_pooling_gradients(xp, f, kernel, stride, pad):
    x = xp.asarray(_spread((2, 2, 5, 6), 6))
    gradient_check(lambda a: f(a, kernel, stride, pad), x)


def test_max_pooling_backward_sends_the_gradient_to_the_first_maximum():
    x = Variable(np.array([[[[1, 3, 3, 0], [3, 2, 0, 0]]]], dtype=np.float32))  # 左の窓は 3 が 3 つ（同点）
    F.sum(F.max_pooling(x, 2)).backward()
    expected = np.array([[[[0, 1, 0, 0], [0, 0, 1, 0]]]], dtype=np.float32)  # 同点なら先の位置（NumPy の argmax と同じ）
    expected[0, 0, 1, 2] = 0
    expected[0, 0, 0, 3] = 0
    expected[0, 0, 0, 2] = 1  # 右の窓 [[3, 0], [0, 0]] の最大は左上
    np.testing.assert_array_equal(x.grad.data, expected)


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 2, 7, 5)])
def test_max_pooling_2x2_shortcut_keeps_the_first_maximum_among_ties(xp, shape):
    """2×2 の近道（トーナメント）も、同点なら先の位置を選び、奇数の端を捨てる（窓ごとの argmax のループと比べる）。"""
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 3, shape).astype(np.float32)  # 0, 1, 2 だけ: 同点だらけ
    gy = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(np.float32)
    xv = Variable(xp.asarray(x))
    y = F.max_pooling(xv, 2)
    F.sum(y * xp.asarray(gy)).backward()
    y_ref, gx_ref = np.zeros(gy.shape, np.float32), np.zeros(shape, np.float32)
    for n, c, i, j in np.ndindex(*gy.shape):
        window = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
        k = int(np.argmax(window))  # 同点なら先の位置
        y_ref[n, c, i, j] = window.max()
        gx_ref[n, c, 2 * i + k // 2, 2 * j + k % 2] = gy[n, c, i, j]
    np.testing.assert_array_equal(cuda.as_numpy(y.data), y_ref)
    np.testing.assert_array_equal(cuda.as_numpy(xv.grad.data), gx_ref)


def test_cnn_pools_before_relu_with_exactly_the_same_values_and_gradients():
    """CNN は ReLU を最大プーリングの後に置く: ReLU → プーリングの順と、値も勾配もビット単位で同じ。"""
    x = np.random.default_rng(3).standard_normal((4, 1, 10, 10)).astype(np.float32)
    x[:, :, :4] = 0  # ReLU で 0 になる窓（同点）も入れる
    results = []
    for pool_first in (True, False):
        model = CNN((4, 6), 5, seed=2)
        if pool_first:
            y = model(x)
        else:
            h = x
            for conv in model.convs:
                h = F.max_pooling(F.relu(conv(h)), 2)
            y = model.fc(F.reshape(h, (h.shape[0], -1)))
        F.sum(y * y).backward()
        results.append([y.data] + [p.grad.data for p in model.params()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# --- 層とモデル ----------------------------------------------------------------------------------

def test_conv2d_layer_lazy_init_shapes_dtype_seed_and_he_std():
    layer = L.Conv2d(8, 3, pad=1, seed=0)
    assert layer.W.data is None
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 6)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 8, 6, 6) and y.dtype == np.float32 and layer.W.shape == (8, 5, 3, 3)
    assert layer.b.shape == (8,) and layer.b.dtype == np.float32
    np.testing.assert_array_equal(layer.W.data, initializers.he_normal((8, 5, 3, 3), np.random.default_rng(0)))
    same = L.Conv2d(8, 3, pad=1, seed=0, in_channels=5)
    np.testing.assert_array_equal(same.W.data, layer.W.data)
    assert [p.name for p in L.Conv2d(2, (3, 1), nobias=True, in_channels=1).params()] == ["W"]
    big = L.Conv2d(64, 5, in_channels=32, seed=1).W.data  # fan_in = 32*5*5 = 800
    np.testing.assert_allclose(big.std(), np.sqrt(2 / 800), rtol=0.02)
    strided = L.Conv2d(3, (3, 2), stride=(2, 1), pad=(1, 0), seed=0)
    assert strided(x).shape == (2, 3, 3, 5)


def test_conv2d_layer_creates_its_params_on_the_device_of_its_first_input(xp):
    layer = L.Conv2d(4, 3, pad=1, seed=0)
    y = layer(xp.asarray(np.ones((2, 3, 5, 5), dtype=np.float32)))
    assert cuda.get_array_module(layer.W.data) is xp and cuda.get_array_module(layer.b.data) is xp
    F.sum(y).backward()
    assert cuda.get_array_module(layer.W.grad.data) is xp and layer.W.grad.dtype == np.float32


def test_cnn_trains_on_digits(xp):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    t = digits.target
    x_train, t_train, x_test, t_test = x[:1200], t[:1200], x[1200:], t[1200:]
    model = CNN((8, 16), 10, hidden=64, seed=0)
    opt = optimizers.Adam(lr=0.01).setup(model)
    rng = np.random.default_rng(0)
    for _ in range(6):
        for idx in np.array_split(rng.permutation(len(x_train)), 24):
            loss = F.softmax_cross_entropy(model(xp.asarray(x_train[idx])), xp.asarray(t_train[idx]))
            model.cleargrads()
            loss.backward()
            opt.update()
    assert model.conv0.W.dtype == np.float32 and cuda.get_array_module(model.conv0.W.data) is xp
    acc = float(F.accuracy(model(xp.asarray(x_test)), xp.asarray(t_test)).data)
    assert acc > 0.88, f"CNN の正解率が低すぎます: {acc:.3f}"


# --- PyTorch との比較（入っていれば） ---------------------------------------------------------------

def test_agrees_with_pytorch_values_and_gradients():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = _spread((2, 3, 7, 6), 8)
    W, b = rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    cases = [
        (lambda x, W, b: F.conv2d(x, W, b, (2, 1), (1, 0)),
         lambda x, W, b: torch.nn.functional.conv2d(x, W, b, stride=(2, 1), padding=(1, 0)), [x, W, b]),
        (lambda x: F.max_pooling(x, 3, 2, 1), lambda x: torch.nn.functional.max_pool2d(x, 3, 2, 1), [x]),
        (lambda x: F.average_pooling(x, (3, 2), 1, (1, 1)),
         lambda x: torch.nn.functional.avg_pool2d(x, (3, 2), 1, (1, 1)), [x]),
    ]
    for ours, theirs, arrays in cases:
        vs = [Variable(a.copy()) for a in arrays]
        ts = [torch.tensor(a, requires_grad=True) for a in arrays]
        y, yt = ours(*vs), theirs(*ts)
        np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        g = rng.standard_normal(y.shape)
        F.sum(y * g).backward()
        (yt * torch.tensor(g)).sum().backward()
        for v, t in zip(vs, ts):
            np.testing.assert_allclose(v.grad.data, t.grad.numpy(), rtol=1e-10, atol=1e-10)
