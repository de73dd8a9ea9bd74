"""微分できる公開関数すべての 1 階・2 階の勾配チェック（float64、小さな奇数の shape のすべての要素）。

2 階の検査では、``L = sum(y * (w1 + w2 * y))``（``w1``・``w2`` は乱数の重み）の入力 ``i`` についての
勾配を ``backward(create_graph=True)`` で求め、それをもう一度 ``gradient_check`` にかけます。
``w2 * y`` の項があるので、関数の逆伝播が出力側の勾配 ``gy`` について微分できること（``gy.data`` を
使っていないこと）も、入力について微分できること（途中の項を定数扱いしていないこと）も確かめられます。

後半には、変異テスト（わざと入れたバグ）で見逃された 2 階微分のバグ（LogSoftmax の ``exp(y)`` を定数扱い、
Linear と MSE の逆伝播で項を切り離す）を、独立な実装（既存の関数の組み合わせ）と比べて捕まえるテストがあります。
"""
import numpy as np
import pytest

import mini_dl.functions as F
from mini_dl import Variable, cuda, gradient_check


def _rand(shape, seed, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def _spread(shape, seed, gap=0.15):
    """同点も近い値もない（隣り合う値が ``gap`` 以上離れた）乱数の配列。max/min/clip の折れ目を避けます。"""
    n = int(np.prod(shape))
    values = (np.arange(n) - n / 2) * gap + 0.01
    return np.random.default_rng(seed).permutation(values).reshape(shape)


def _away_from_zero(shape, seed):
    """絶対値が 0.2 以上の乱数（relu・leaky_relu の折れ目 0 を避けます）。"""
    a = _rand(shape, seed, 0.2, 1.5)
    return a * np.random.default_rng(seed + 100).choice([-1.0, 1.0], size=shape)


_LABELS = np.array([2, 0, 4])
_COND = np.array([[True, False, True, True, False]])  # (1, 5): 行方向にブロードキャストする


def _like(a, x):
    """定数の配列 ``a`` を、``x`` と同じ配列モジュール（NumPy か CuPy）に置きます。"""
    return cuda.get_array_module(x.data).asarray(a)


def _fresh_dropout(x):
    # gradient_check は f を何度も呼ぶので、呼ぶたびに同じ種の乱数からマスクを作る
    return F.dropout(x, 0.4, rng=np.random.default_rng(7))


def _batch_norm(x, gamma, beta):
    c = x.shape[1]
    return F.batch_norm(x, gamma, beta, _like(np.zeros(c), x), _like(np.ones(c), x), training=True)


def _batch_norm_eval(x, gamma, beta):
    c = x.shape[1]
    return F.batch_norm(x, gamma, beta, _like(np.linspace(-0.2, 0.3, c), x), _like(np.linspace(0.5, 1.5, c), x),
                        training=False)


# 名前 -> (関数, 入力の配列のリスト, gradient_check の追加の引数)
# 同じ関数の別の使い方は「関数名.違い」の名前にします。入力は float64 に変換されます。どの入力についても 1 階と 2 階を確かめます。
TABLE = {
    "add": (lambda a, b: a + b, [_rand((3, 5), 1), _rand((5,), 2)], {}),
    "sub": (lambda a, b: a - b, [_rand((3, 5), 3), _rand((3, 1), 4)], {}),
    "mul": (lambda a, b: a * b, [_rand((3, 5), 5), _rand((5,), 6)], {}),
    "div": (lambda a, b: a / b, [_rand((3, 5), 7), _rand((3, 1), 8, 0.5, 2.0)], {}),
    "neg": (lambda a: -a, [_rand((3, 5), 9)], {}),
    "pow.3": (lambda a: a ** 3, [_rand((3, 5), 10)], {}),
    "pow.-1.5": (lambda a: a ** -1.5, [_rand((3, 5), 11, 0.5, 2.0)], {}),
    "square": (F.square, [_rand((3, 5), 12)], {}),
    "exp": (F.exp, [_rand((3, 5), 13)], {}),
    "log": (F.log, [_rand((3, 5), 14, 0.5, 3.0)], {}),
    "sin": (F.sin, [_rand((3, 5), 15, -3, 3)], {}),
    "cos": (F.cos, [_rand((3, 5), 16, -3, 3)], {}),
    "tanh": (F.tanh, [_rand((3, 5), 17, -2, 2)], {}),
    "sigmoid": (F.sigmoid, [_rand((3, 5), 18, -3, 3)], {}),
    "relu": (F.relu, [_away_from_zero((3, 5), 19)], {}),
    "leaky_relu": (lambda a: F.leaky_relu(a, 0.1), [_away_from_zero((3, 5), 20)], {}),
    "linear": (F.linear, [_rand((3, 5), 21), _rand((5, 7), 22), _rand((7,), 23)], {}),
    "linear.nobias": (F.linear, [_rand((3, 5), 24), _rand((5, 7), 25)], {}),
    "linear_simple": (F.linear_simple, [_rand((3, 5), 26), _rand((5, 7), 27), _rand((7,), 28)], {}),
    "matmul": (F.matmul, [_rand((3, 5), 29), _rand((5, 7), 30)], {}),
    "matmul.batched": (F.matmul, [_rand((2, 3, 5), 31), _rand((5, 3), 32)], {}),
    "reshape": (lambda a: F.reshape(a, (5, 3)), [_rand((3, 5), 33)], {}),
    "transpose": (lambda a: F.transpose(a, (1, 2, 0)), [_rand((3, 5, 2), 34)], {}),
    "sum": (lambda a: F.sum(a, axis=1), [_rand((3, 5), 35)], {}),
    "sum.all": (F.sum, [_rand((3, 5), 36)], {}),
    "sum_to": (lambda a: F.sum_to(a, (1, 5)), [_rand((3, 5), 37)], {}),
    "broadcast_to": (lambda a: F.broadcast_to(a, (3, 5)), [_rand((3, 1), 38)], {}),
    "get_item": (lambda a: F.get_item(a, np.array([0, 0, 2, 1, 0])), [_rand((3, 5), 39)], {}),
    "get_item.slice": (lambda a: a[1:, ::2], [_rand((3, 5), 40)], {}),
    "max": (lambda a: F.max(a, axis=1), [_spread((3, 5), 41)], {}),
    "min": (lambda a: F.min(a, axis=0, keepdims=True), [_spread((3, 5), 42)], {}),
    "clip": (lambda a: F.clip(a, -0.8, 0.6), [_spread((3, 5), 43, gap=0.13)], {}),
    "mean": (lambda a: F.mean(a, axis=(0, 2)), [_rand((3, 5, 2), 44)], {}),
    "mean.all": (F.mean, [_rand((3, 5), 45)], {}),
    "concat": (lambda a, b, c: F.concat([a, b, c], axis=1),
               [_rand((3, 2), 46), _rand((3, 1), 47), _rand((3, 4), 48)], {}),
    "stack": (lambda a, b: F.stack([a, b], axis=-1), [_rand((3, 5), 49), _rand((3, 5), 50)], {}),
    "where": (lambda a, b: F.where(_like(_COND, a), a, b), [_rand((3, 5), 51), _rand((5,), 52)], {}),
    # float32 を経由すると差分の丸め誤差が大きいので、幅を広げる（L は y の 2 次式なので、中心差分は幅によらず正確）
    "astype": (lambda a: F.astype(F.astype(a, np.float32), np.float64), [_rand((3, 5), 53)],
               {"eps": 1e-2, "rtol": 1e-4, "atol": 1e-4}),
    "softmax": (F.softmax, [_rand((3, 5), 54, -2, 2)], {}),
    "softmax.axis0": (lambda a: F.softmax(a, axis=0), [_rand((3, 5), 55, -2, 2)], {}),
    "log_softmax": (F.log_softmax, [_rand((3, 5), 56, -2, 2)], {}),
    "log_softmax.axis0": (lambda a: F.log_softmax(a, axis=0), [_rand((3, 5), 57, -2, 2)], {}),
    "softmax_cross_entropy": (lambda a: F.softmax_cross_entropy(a, _like(_LABELS, a)), [_rand((3, 5), 58, -2, 2)], {}),
    "softmax_cross_entropy_simple": (lambda a: F.softmax_cross_entropy_simple(a, _like(_LABELS, a)),
                                     [_rand((3, 5), 59, -2, 2)], {}),
    "mean_squared_error": (F.mean_squared_error, [_rand((3, 5), 60), _rand((3, 5), 61)], {}),
    "mean_squared_error_simple": (F.mean_squared_error_simple, [_rand((3, 5), 62), _rand((3, 5), 63)], {}),
    "dropout": (_fresh_dropout, [_rand((3, 5), 64)], {}),
    "batch_norm": (_batch_norm, [_rand((5, 3), 65), _rand((3,), 66, 0.5, 1.5), _rand((3,), 67)], {}),
    "batch_norm.4d": (_batch_norm, [_rand((2, 3, 3, 1), 68), _rand((3,), 69, 0.5, 1.5), _rand((3,), 77)], {}),
    "batch_norm.eval": (_batch_norm_eval, [_rand((5, 3), 78), _rand((3,), 79, 0.5, 1.5), _rand((3,), 80)], {}),
    "conv2d": (lambda x, W, b: F.conv2d(x, W, b, stride=(2, 1), pad=(1, 2)),
               [_rand((2, 3, 5, 4), 101), _rand((2, 3, 3, 2), 102), _rand((2,), 103)], {}),
    "conv2d.nobias": (lambda x, W: F.conv2d(x, W, stride=2, pad=1), [_rand((1, 2, 5, 5), 104), _rand((3, 2, 3, 3), 105)], {}),
    "conv2d_simple": (lambda x, W, b: F.conv2d_simple(x, W, b, stride=(1, 2), pad=1),
                      [_rand((2, 2, 4, 5), 106), _rand((3, 2, 2, 3), 107), _rand((3,), 108)], {}),
    "im2col": (lambda x: F.im2col(x, (3, 2), stride=(2, 1), pad=1), [_rand((2, 2, 5, 3), 109)], {}),
    "max_pooling": (lambda x: F.max_pooling(x, 3, stride=2, pad=1), [_spread((2, 2, 5, 4), 110)], {}),
    "max_pooling.default_stride": (lambda x: F.max_pooling(x, 2), [_spread((1, 3, 5, 4), 111)], {}),
    "max_pooling_simple": (lambda x: F.max_pooling_simple(x, (2, 3), stride=1, pad=(1, 0)), [_spread((2, 2, 3, 5), 112)], {}),
    "average_pooling": (lambda x: F.average_pooling(x, 3, stride=(2, 1), pad=1), [_rand((2, 2, 5, 4), 113)], {}),
    "average_pooling_simple": (lambda x: F.average_pooling_simple(x, 2, pad=1), [_rand((2, 2, 5, 3), 114)], {}),
    "deconv2d": (lambda x, W, b: F.deconv2d(x, W, b, stride=(2, 1), pad=(1, 0), outsize=(6, 4)),
                 [_rand((2, 3, 3, 2), 84), _rand((3, 2, 3, 3), 85), _rand((2,), 86)], {}),
    "deconv2d.nobias": (lambda x, W: F.deconv2d(x, W, stride=2, pad=1), [_rand((1, 2, 3, 3), 87), _rand((2, 3, 4, 3), 88)], {}),
    "deconv2d_simple": (lambda x, W, b: F.deconv2d_simple(x, W, b, stride=(2, 1), pad=(1, 0), outsize=(6, 4)),
                        [_rand((2, 3, 3, 2), 89), _rand((3, 2, 3, 3), 90), _rand((2,), 91)], {}),
    "embedding": (lambda W: F.embedding(_like(np.array([[0, 3, 3], [2, 0, 1]]), W), W), [_rand((4, 3), 140)], {}),
    "embedding_simple": (lambda W: F.embedding_simple(_like(np.array([[1, 1], [3, 0]]), W), W), [_rand((4, 3), 141)], {}),
    "layer_norm": (F.layer_norm, [_rand((3, 5), 142), _rand((5,), 143, 0.5, 1.5), _rand((5,), 144)], {}),
    "layer_norm_simple": (F.layer_norm_simple, [_rand((2, 3, 4), 145), _rand((4,), 146, 0.5, 1.5), _rand((4,), 147)], {}),
    "gelu": (F.gelu, [_rand((3, 5), 148, -3, 3)], {}),
    "gelu_simple": (F.gelu_simple, [_rand((3, 5), 149, -3, 3)], {}),
    "scaled_dot_product_attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True),
                                     [_rand((2, 3, 4), 150), _rand((2, 3, 4), 151), _rand((2, 3, 2), 152)], {}),
    "scaled_dot_product_attention.mask": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=_like(np.array([[True, False, True, True]]), q)),
        [_rand((3, 3), 153), _rand((4, 3), 154), _rand((4, 2), 155)], {}),
    "scaled_dot_product_attention_simple": (
        lambda q, k, v: F.scaled_dot_product_attention_simple(q, k, v, causal=True),
        [_rand((1, 3, 4), 156), _rand((1, 4, 4), 157), _rand((1, 4, 2), 158)], {}),
}

# 2 階微分に対応していない関数（対応したら strict な xfail が赤くなるので、ここから消します）
# 例: "batch_norm": "BatchNorm.backward は配列（gy.data）で計算するので、2 階微分に対応していません"
NO_SECOND_ORDER = {}

# 表に載せなくてよい公開の名前（微分しない関数、道具）
NOT_DIFFERENTIABLE = {"accuracy", "as_operands", "setup_variable", "sum_to_array",
                      "col2im_array", "get_conv_outsize", "get_deconv_outsize", "im2col_array", "pair"}


def _loss(y, seed=0):
    """``L = sum(y * (w1 + w2 * y))``: 1 次の項で入力についての微分を、2 次の項で gy についての微分を試します。"""
    rng = np.random.default_rng(seed)
    w1 = _like(rng.uniform(0.5, 1.5, size=y.shape), y)
    w2 = _like(rng.uniform(0.5, 1.5, size=y.shape), y)
    return F.sum(y * (w1 + w2 * y))


def _named(f, name):
    """``gradient_check`` の失敗の知らせに、表の名前が出るようにします。"""
    def g(*xs):
        return f(*xs)
    g.__name__ = name
    return g


def _grad_wrt(f, i, name):
    """``xs -> dL/dxs[i]``（create_graph=True の逆伝播で作るので、さらに微分できる）。"""
    def g(*xs):
        for x in xs:
            x.cleargrad()
        _loss(f(*xs)).backward(create_graph=True)
        gx = xs[i].grad
        return gx if gx is not None else Variable(cuda.get_array_module(xs[i].data).zeros_like(xs[i].data))
    g.__name__ = f"d({name})/dx{i}"
    return g


def _entries(second):
    marks = {name: [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)]
             for name, reason in NO_SECOND_ORDER.items()} if second else {}
    return [pytest.param(name, marks=marks.get(name, []), id=name) for name in TABLE]


def _public_functions():
    names = getattr(F, "__all__", None) or [n for n in dir(F) if not n.startswith("_")]
    return {n for n in names if n[0].islower() and callable(getattr(F, n)) and not isinstance(getattr(F, n), type(F))}


def test_table_covers_every_differentiable_public_function():
    covered = {name.split(".")[0] for name in TABLE}  # "pow.3" は pow の項目
    missing = _public_functions() - covered - NOT_DIFFERENTIABLE
    assert not missing, f"2 階の勾配チェックの表（TABLE）に載っていない公開関数があります: {sorted(missing)}"


@pytest.mark.parametrize("name", _entries(second=False))
def test_first_order(name):
    f, inputs, kw = TABLE[name]
    gradient_check(_named(f, name), *inputs, **kw)


@pytest.mark.parametrize("name", _entries(second=True))
def test_second_order(name):
    f, inputs, kw = TABLE[name]
    for i in range(len(inputs)):
        gradient_check(_grad_wrt(f, i, name), *inputs, **kw)


@pytest.mark.parametrize("xp", ["strict", "cupy"], indirect=True)  # NumPy は上の 2 つのテストで確かめています
@pytest.mark.parametrize("name", _entries(second=True))
def test_first_and_second_order_on_the_device(xp, name):
    # gradient_check は CuPy の配列でも動く: 逆伝播も数値微分も GPU の上で計算する
    f, inputs, kw = TABLE[name]
    arrays = [xp.asarray(a) for a in inputs]
    gradient_check(_named(f, name), *arrays, **kw)
    for i in range(len(arrays)):
        gradient_check(_grad_wrt(f, i, name), *arrays, **kw)


# --- 変異テストで見逃されたバグを捕まえる: 独立な実装と 2 階微分を比べる ----------------------

def _hessian_vector(f, inputs, v_seed=0):
    """``sum(w * grad L(xs))`` を xs で微分したもの（ヘッセ行列とベクトルの積）を、入力ごとに返します。"""
    xs = [Variable(np.array(a, dtype=np.float64)) for a in inputs]
    _loss(f(*xs)).backward(create_graph=True)
    gs = [x.grad for x in xs]
    for x in xs:
        x.cleargrad()
    rng = np.random.default_rng(v_seed)
    total = sum(F.sum(g * rng.uniform(0.5, 1.5, size=g.shape)) for g in gs)
    total.backward()
    return [np.zeros(x.shape) if x.grad is None else x.grad.data for x in xs]


def _log_softmax_reference(x):
    m = Variable(x.data.max(axis=-1, keepdims=True))  # 定数（最大値を引いても結果は変わらない）
    z = x - m
    return z - F.log(F.sum(F.exp(z), axis=-1, keepdims=True))


def _assert_same_second_order(f, ref, inputs, what):
    got = _hessian_vector(f, inputs)
    expected = _hessian_vector(ref, inputs)
    for i, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12,
                                   err_msg=f"{what} の 2 階微分（{i} 番目の入力）が独立な実装と合いません")


def test_log_softmax_second_order_matches_composite():
    # 変異「LogSoftmax.backward で exp(y) を定数扱い」を捕まえる
    _assert_same_second_order(lambda x: F.log_softmax(x, axis=-1), _log_softmax_reference,
                              [_rand((3, 5), 70, -2, 2)], "log_softmax")


def test_linear_second_order_matches_matmul_plus_bias():
    # 変異「Linear.backward で x や W を配列（定数）として使う」を捕まえる
    inputs = [_rand((3, 5), 71), _rand((5, 7), 72), _rand((7,), 73)]
    _assert_same_second_order(F.linear, lambda x, W, b: F.matmul(x, W) + b, inputs, "linear")


def test_mean_squared_error_second_order_matches_simple():
    # 変異「MeanSquaredError.backward で diff を定数扱い」を捕まえる
    inputs = [_rand((3, 5), 74), _rand((3, 5), 75)]
    a, b = (Variable(v) for v in inputs)
    np.testing.assert_allclose(F.mean_squared_error(a, b).data, F.mean_squared_error_simple(a, b).data, rtol=1e-12)
    _assert_same_second_order(F.mean_squared_error, F.mean_squared_error_simple, inputs, "mean_squared_error")


def test_softmax_and_cross_entropy_second_order_match_composites():
    x = [_rand((3, 5), 76, -2, 2)]
    _assert_same_second_order(lambda v: F.softmax(v, axis=-1), lambda v: F.exp(_log_softmax_reference(v)), x,
                              "softmax")
    picked = (np.arange(3), _LABELS)
    _assert_same_second_order(lambda v: F.softmax_cross_entropy(v, _LABELS),
                              lambda v: -F.sum(_log_softmax_reference(v)[picked]) / 3, x, "softmax_cross_entropy")


def test_batch_norm_second_order_matches_composite():
    # 学習中のバッチ正規化を、平均・分散・累乗の組み合わせで書いた独立な実装と比べる（N, C と N, C, H, W）
    def reference(x, gamma, beta, eps=1e-5):
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        mu = F.mean(x, axis=axes, keepdims=True)
        var = F.mean((x - mu) ** 2, axis=axes, keepdims=True)
        return F.reshape(gamma, shape) * (x - mu) * (var + eps) ** -0.5 + F.reshape(beta, shape)

    for x_shape in [(5, 3), (2, 3, 3, 1)]:
        inputs = [_rand(x_shape, 81), _rand((3,), 82, 0.5, 1.5), _rand((3,), 83)]
        xs = [Variable(a) for a in inputs]
        np.testing.assert_allclose(_batch_norm(*xs).data, reference(*xs).data, rtol=1e-10, atol=1e-12)
        _assert_same_second_order(_batch_norm, reference, inputs, f"batch_norm {x_shape}")
