"""第6章の隠しテスト。

第6章の定義はすべて mini_dl パッケージに入っているので、練習のノートブックもテストもパッケージの
Variable・Function・gradient_check を使います。
"""
import numpy as np

from mini_dl import Function, Variable, gradient_check

F32_HINT = ("float32 の入力には float32 を返します。np.float64(...) や np.array(1.0) のような float64 の値を"
            "混ぜていませんか（Python の数値 1.0 や 0.5 なら、相手の dtype に合わせられます）。")


def _random_shape(rng, min_ndim=0):
    return tuple(int(n) for n in rng.integers(1, 5, size=rng.integers(min_ndim, 3)))


def _head(a):
    return np.round(np.ravel(np.asarray(a, dtype=np.float64))[:3], 3).tolist()


def _variable(ex, value, inputs, what):
    if not isinstance(value, Variable):
        ex.fail(f"{what} は Variable で返してください。", inputs=inputs, expected="Variable", actual=value,
                hint="Function を呼ぶと Variable が返ります。backward の中では gy（Variable）と演算子で計算すると、"
                     "結果も Variable になります。")
    return value


def _check_gradient(ex, f, *arrays, inputs, hint):
    """mini_dl の gradient_check に通るか。通らなければ、そのメッセージを添えて不合格にします。"""
    try:
        gradient_check(f, *arrays)
    except AssertionError as e:
        if not str(e).startswith("gradient_check:"):
            ex.run(_reraise, e)
        ex.fail("gradient_check に通りません（逆伝播が数値微分と合いません）。\n  " + str(e).replace("\n", "\n  "),
                inputs=inputs, hint=hint, show_values=False)
    except Exception as e:  # NotImplementedError なども、読者向けの説明にします
        ex.run(_reraise, e)


def _reraise(exc):
    raise exc


def _backward(ex, y, gy, inputs):
    """y.grad = gy から逆伝播します。勾配の shape の食い違いは、sum_to のヒントを添えて不合格にします。"""
    y.grad = Variable(gy)
    try:
        y.backward()
    except Exception as e:
        if isinstance(e, ValueError) and "shape" in str(e):
            ex.fail("逆伝播した勾配の shape が入力の shape と違います。", inputs=inputs,
                    expected="入力と同じ shape の勾配", actual=str(e),
                    hint="ブロードキャストした入力の勾配は、sum_to(勾配, self.inputs[i].shape) で入力の shape に戻します。")
        ex.run(_reraise, e)


def _grad_of(ex, x, inputs, name="x"):
    if x.grad is None:
        ex.fail(f"{name}.grad が None のままです（勾配が流れていません）。", inputs=inputs, expected="勾配",
                actual=None, hint=".data を取り出して NumPy で計算すると、計算グラフが途切れて勾配が流れません。"
                                  "Variable の演算子（+ - * / **）だけで書きます。")
    return x.grad


# ---------------------------------------------------------------- 練習 6-1: Abs


def _away_from_zero(rng, shape, dtype):
    x = rng.uniform(0.2, 3.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return np.asarray(x, dtype=dtype)


def test_ex6_1_abs_forward_and_backward(exercise, rng):
    ex = exercise("6-1", "Abs")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    for _ in range(4):
        shape = _random_shape(rng)
        x = _away_from_zero(rng, shape, np.float32)
        gy = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
        inputs = f"shape={shape} の float32 の x（先頭: {_head(x)}）と gy"
        f = ex.run(cls)
        y = _variable(ex, ex.run(f, Variable(x.copy())), inputs, "Abs()(x)")
        ex.check_close(y.data, np.abs(x), inputs=inputs, hint="forward は xp.abs(x) を返します。")
        ex.check_close(y.data, np.abs(x), check_dtype=True, inputs=inputs, hint=F32_HINT)
        gx = _variable(ex, ex.run(f.backward, Variable(gy)), inputs, "backward の返り値")
        expected = np.sign(x) * gy
        ex.check_close(gx.data, expected, rtol=1e-6, inputs=inputs,
                       hint="微分は x の符号（x > 0 で 1、x < 0 で -1）です。gy を掛け忘れていないか、"
                            "符号が逆になっていないか確かめましょう。")
        ex.check_close(gx.data, expected, check_dtype=True, inputs=inputs, hint=F32_HINT)


def test_ex6_1_abs_gradient_check_and_operator(exercise, rng):
    ex = exercise("6-1", "absolute")
    Abs = exercise("6-1", "Abs").check_subclass(Function, "mini_dl の Function")
    x = _away_from_zero(rng, _random_shape(rng, 1), np.float64)
    _check_gradient(ex, Abs, x, inputs=f"gradient_check(Abs, x)、x の先頭: {_head(x)}（0 は含みません）",
                    hint="backward は gy × sign(x) です。")
    x32 = _away_from_zero(rng, (3,), np.float32)
    inputs = f"absolute(ndarray)、x={_head(x32)}"
    y = _variable(ex, ex(x32.copy()), inputs, "absolute(x)")
    ex.check_close(y.data, np.abs(x32), check_dtype=True, inputs=inputs,
                   hint="absolute(x) は Abs()(x) を返します（Function は ndarray も受け取ります）。")
    v = Variable(x32.copy())
    inputs = f"abs(Variable(x))、x={_head(x32)}"
    y = _variable(ex, ex.run(abs, v), inputs, "abs(x)")
    ex.check_close(y.data, np.abs(x32), inputs=inputs,
                   hint="セルの最後の行 `Variable.__abs__ = lambda self: absolute(self)` を消していませんか。")
    _backward(ex, y, np.ones(3, dtype=np.float32), inputs)
    ex.check_close(_grad_of(ex, v, inputs).data, np.sign(x32), check_dtype=True, inputs=inputs, hint=F32_HINT)


# ---------------------------------------------------------------- 練習 6-2: テスト関数


def _matyas_ref(x, y):
    return 0.26 * (x ** 2 + y ** 2) - 0.48 * x * y


def _gp_ref(x, y):
    return (1 + (x + y + 1) ** 2 * (19 - 14 * x + 3 * x ** 2 - 14 * y + 6 * x * y + 3 * y ** 2)) * \
        (30 + (2 * x - 3 * y) ** 2 * (18 - 32 * x + 12 * x ** 2 + 48 * y - 36 * x * y + 27 * y ** 2))


def _central(f, x, y, h=1e-6):
    """float64 の中心差分で (df/dx, df/dy) を求めます（要素ごとの関数なので配列のまま）。"""
    return (f(x + h, y) - f(x - h, y)) / (2 * h), (f(x, y + h) - f(x, y - h)) / (2 * h)


def _check_test_function(ex, ref, grad_ref, rng, value_hint):
    for shape in [(), (int(rng.integers(2, 6)),), ()]:
        x64 = rng.uniform(-2, 2, size=shape)
        y64 = rng.uniform(-2, 2, size=shape)
        x32, y32 = x64.astype(np.float32), y64.astype(np.float32)
        inputs = f"float32 の x={_head(x32)}, y={_head(y32)}（shape {shape}）"
        x, y = Variable(x32.copy()), Variable(y32.copy())
        z = _variable(ex, ex(x, y), inputs, f"{ex.name}(x, y)")
        expected = ref(x32.astype(np.float64), y32.astype(np.float64))
        ex.check_close(z.data, expected, rtol=1e-4, atol=1e-4, inputs=inputs, hint=value_hint)
        ex.check_close(z.data, expected.astype(np.float32), rtol=1e-4, atol=1e-4, check_dtype=True,
                       inputs=inputs, hint=F32_HINT)
        _backward(ex, z, np.ones(shape, dtype=np.float32), inputs)
        gx_ref, gy_ref = grad_ref(x32.astype(np.float64), y32.astype(np.float64))
        scale = max(1.0, float(np.max(np.abs(gx_ref))), float(np.max(np.abs(gy_ref))))
        for v, g_ref, name in [(x, gx_ref, "x"), (y, gy_ref, "y")]:
            g = _grad_of(ex, v, inputs, name)
            ex.check_close(g.data, g_ref, rtol=1e-3, atol=1e-4 * scale, inputs=f"{inputs}、{name}.grad を確認",
                           hint="値が合っていて勾配だけ違うなら、.data を使った計算が混ざっていないか確かめましょう。")
            ex.check_close(g.data, g_ref.astype(np.float32), rtol=1e-3, atol=1e-4 * scale, check_dtype=True,
                           inputs=f"{inputs}、{name}.grad を確認", hint=F32_HINT)
    # 片方が Python の数値
    x32 = rng.uniform(-2, 2, size=(3,)).astype(np.float32)
    c = float(np.round(rng.uniform(-2, 2), 2))
    inputs = f"{ex.name}(Variable(float32 の {_head(x32)}), {c})（y は Python の数値）"
    z = _variable(ex, ex(Variable(x32.copy()), c), inputs, f"{ex.name}(x, 数値)")
    ex.check_close(z.data, ref(x32.astype(np.float64), c).astype(np.float32), rtol=1e-4, atol=1e-4,
                   check_dtype=True, inputs=inputs, hint=F32_HINT + " 数値の y でも動くよう、演算子だけで書きます。")


def test_ex6_2_matyas(exercise, rng):
    ex = exercise("6-2", "matyas")
    _check_test_function(ex, _matyas_ref, lambda x, y: (0.52 * x - 0.48 * y, 0.52 * y - 0.48 * x), rng,
                         "matyas は 0.26 * (x ** 2 + y ** 2) - 0.48 * x * y です。係数と符号を確かめましょう。")


def test_ex6_2_goldstein_price(exercise, rng):
    ex = exercise("6-2", "goldstein_price")
    _check_test_function(ex, _gp_ref, lambda x, y: _central(_gp_ref, x, y), rng,
                         "式の係数（19, 14, 3, 6, 18, 32, 12, 48, 36, 27）と符号、かっこの位置を確かめましょう。")
    x, y = rng.uniform(-1.5, 1.5, size=(2, 4))
    _check_gradient(ex, ex.obj, x, y, inputs=f"gradient_check(goldstein_price, x, y)、x={_head(x)}, y={_head(y)}",
                    hint="演算子だけで書けば、勾配は自動で正しくなります。")


# ---------------------------------------------------------------- 練習 6-3: Sigmoid


def _sigmoid_ref(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def test_ex6_3_sigmoid_forward_and_variable_backward(exercise, rng):
    ex = exercise("6-3", "Sigmoid")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    for _ in range(4):
        shape = _random_shape(rng)
        x = rng.uniform(-6, 6, size=shape).astype(np.float32)
        gy = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
        inputs = f"shape={shape} の float32 の x（先頭: {_head(x)}）と gy"
        f = ex.run(cls)
        y = _variable(ex, ex.run(f, Variable(x.copy())), inputs, "Sigmoid()(x)")
        ex.check_close(y.data, _sigmoid_ref(x), rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint="forward は 1 / (1 + exp(-x)) です（tanh(x / 2) / 2 + 1 / 2 でも同じ）。")
        ex.check_close(y.data, _sigmoid_ref(x).astype(np.float32), rtol=1e-5, atol=1e-6, check_dtype=True,
                       inputs=inputs, hint=F32_HINT)
        gx = _variable(ex, ex.run(f.backward, Variable(gy)), inputs, "backward の返り値")
        s = _sigmoid_ref(x)
        ex.check_close(gx.data, gy * s * (1 - s), rtol=1e-4, atol=1e-6, inputs=inputs,
                       hint="backward は gy × y × (1 - y) です。y は入力 x ではなく出力（self.outputs[0]()）です。")
        ex.check_close(gx.data, (gy * s * (1 - s)).astype(np.float32), rtol=1e-4, atol=1e-6, check_dtype=True,
                       inputs=inputs, hint=F32_HINT)


def test_ex6_3_sigmoid_gradient_check_and_graph(exercise, rng):
    ex = exercise("6-3", "sigmoid")
    Sigmoid = exercise("6-3", "Sigmoid").check_subclass(Function, "mini_dl の Function")
    x = rng.uniform(-4, 4, size=_random_shape(rng, 1))
    _check_gradient(ex, Sigmoid, x, inputs=f"gradient_check(Sigmoid, x)、x の先頭: {_head(x)}",
                    hint="backward は gy × y × (1 - y) です。gy を掛け忘れると、重みの付いた検査で見つかります。")
    x32 = rng.uniform(-3, 3, size=(4,)).astype(np.float32)
    v = Variable(x32.copy())
    inputs = f"y = 1 - 2 * sigmoid(x) を逆伝播、x={_head(x32)}"
    y = ex(v)
    _variable(ex, y, inputs, "sigmoid(x)")
    z = 1 - 2 * y
    _backward(ex, z, np.ones(4, dtype=np.float32), inputs)
    s = _sigmoid_ref(x32)
    ex.check_close(_grad_of(ex, v, inputs).data, (-2 * s * (1 - s)).astype(np.float32), rtol=1e-4, atol=1e-6,
                   check_dtype=True, inputs=inputs, hint="sigmoid(x) は Sigmoid()(x) を返します。" + F32_HINT)


# ---------------------------------------------------------------- 練習 6-4: Maximum

BROADCAST_PAIRS = [((2, 3), (3,)), ((2, 3), ()), ((), (2, 1)), ((2, 1), (1, 3)), ((3, 1, 2), (4, 1)), ((2, 3), (2, 3))]


def _sum_to(g, shape):
    """テスト用の独立な実装: ブロードキャストで増えた軸を足して shape に戻します。"""
    g = np.asarray(g)
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and g.shape[axis] != 1:
            g = g.sum(axis=axis, keepdims=True)
    return g


def test_ex6_4_maximum_broadcast_gradients(exercise, rng):
    ex = exercise("6-4", "maximum")
    for k in rng.permutation(len(BROADCAST_PAIRS)):
        s0, s1 = BROADCAST_PAIRS[k]
        a = rng.uniform(-2, 2, size=s0).astype(np.float32)
        b = rng.uniform(-2, 2, size=s1).astype(np.float32)
        out_shape = np.broadcast_shapes(s0, s1)
        gy = rng.uniform(0.5, 2.0, size=out_shape).astype(np.float32)
        inputs = f"x0: shape {s0}（先頭 {_head(a)}）、x1: shape {s1}（先頭 {_head(b)}）、float32"
        x0, x1 = Variable(a.copy()), Variable(b.copy())
        y = _variable(ex, ex(x0, x1), inputs, "maximum(x0, x1)")
        ex.check_close(y.data, np.maximum(a, b), inputs=inputs, hint="forward は xp.maximum(x0, x1) です。")
        ex.check_close(y.data, np.maximum(a, b), check_dtype=True, inputs=inputs, hint=F32_HINT)
        _backward(ex, y, gy, inputs)
        a_b, b_b = np.broadcast_arrays(a, b)
        mask = (a_b >= b_b).astype(np.float32)
        for v, expected, name in [(x0, _sum_to(gy * mask, s0), "x0"), (x1, _sum_to(gy * (1 - mask), s1), "x1")]:
            g = _grad_of(ex, v, inputs, name)
            ex.check_close(g.data, expected, rtol=1e-5, atol=1e-5, inputs=f"{inputs}、{name}.grad を確認",
                           hint="勾配は大きかったほうの入力にだけ流れます（x0 には gy × mask、x1 には gy × (1 - mask)）。"
                                "mask を取り違えていないか、sum_to を忘れていないか確かめましょう。")
            ex.check_close(g.data, expected, rtol=1e-5, atol=1e-5, check_dtype=True,
                           inputs=f"{inputs}、{name}.grad を確認",
                           hint="mask は gy と同じ dtype にします（.astype(gy.dtype)）。" + F32_HINT)


TIE_HINT = ("x0 と x1 が同じ値のところでは、勾配はすべて x0 に流します（mask = x0 >= x1。x0 > x1 では同じ値のときに"
            "x1 に流れ、半分ずつ分けると合計は合っても x0 の勾配が足りません）。")


def test_ex6_4_maximum_ties_go_to_x0(exercise, rng):
    ex = exercise("6-4", "maximum")
    for s0, s1 in [((2, 3), (3,)), ((3, 2), (3, 2)), ((2, 3), ())]:
        b = rng.integers(-3, 4, size=s1).astype(np.float32)
        a = rng.integers(-3, 4, size=s0).astype(np.float32)
        a = np.where(rng.random(s0) < 0.5, np.broadcast_to(b, s0), a).astype(np.float32)  # 半分くらいを同じ値に
        a.reshape(-1)[0] = np.broadcast_to(b, s0).reshape(-1)[0]  # 必ず 1 か所は同じ値
        gy = rng.uniform(0.5, 2.0, size=np.broadcast_shapes(s0, s1)).astype(np.float32)
        inputs = (f"x0={a.tolist()}、x1={b.tolist()}（float32、同じ値の場所があります）、"
                  f"gy={np.round(gy.astype(np.float64), 3).tolist()}")
        x0, x1 = Variable(a.copy()), Variable(b.copy())
        with ex.context(inputs=inputs, hint=TIE_HINT):
            y = _variable(ex, ex(x0, x1), inputs, "maximum(x0, x1)")
            _backward(ex, y, gy, inputs)
        a_b, b_b = np.broadcast_arrays(a, b)
        mask = (a_b >= b_b).astype(np.float32)
        for v, expected, name in [(x0, _sum_to(gy * mask, s0), "x0"), (x1, _sum_to(gy * (1 - mask), s1), "x1")]:
            g = _grad_of(ex, v, inputs, name)
            ex.check_close(g.data, expected, rtol=1e-5, atol=1e-5, inputs=f"{inputs}、{name}.grad を確認",
                           hint=TIE_HINT)


def test_ex6_4_maximum_with_python_number_and_gradient_check(exercise, rng):
    ex = exercise("6-4", "maximum")
    a = rng.uniform(-2, 2, size=(2, 3)).astype(np.float32)
    for left in (False, True):
        inputs = f"maximum({'0.0, x' if left else 'x, 0.0'})（ReLU）、x は float32 の {_head(a)}"
        x = Variable(a.copy())
        y = _variable(ex, ex(0.0, x) if left else ex(x, 0.0), inputs, "maximum")
        ex.check_close(y.data, np.maximum(a, 0), check_dtype=True, inputs=inputs,
                       hint="maximum では as_operands(x0, x1) で入力をそろえます。Python の数値が相手の dtype "
                            "（float32）に合わせられます。")
        _backward(ex, y, np.ones((2, 3), dtype=np.float32), inputs)
        ex.check_close(_grad_of(ex, x, inputs).data, (a > 0).astype(np.float32), check_dtype=True, inputs=inputs,
                       hint="x が選ばれた場所だけ勾配 1 です。")
    x0 = rng.uniform(-2, 2, size=(3, 2))
    x1 = rng.uniform(-2, 2, size=(2,))
    _check_gradient(ex, ex.obj, x0, x1, inputs=f"gradient_check(maximum, x0 (3, 2), x1 (2,))、x0 の先頭 {_head(x0)}",
                    hint="mask は x0 >= x1 で作り、x1 への勾配は gy × (1 - mask) を sum_to で (2,) に戻します。")
