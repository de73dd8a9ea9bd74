"""第3章の隠しテスト。

練習のノートブックは、第3章の時点の Variable・Function・Square・Exp を自分で定義しています。
テストも、パッケージではなくノートブックのそれを使います。
"""
import numpy as np


def _chapter3(exercise, name):
    """ノートブックの準備のセルで定義された、第3章の時点のクラス。"""
    return exercise("3-1", name).obj


def _random_shape(rng):
    return tuple(int(n) for n in rng.integers(1, 5, size=rng.integers(0, 3)))


def _check_elementwise(ex, exercise, rng, forward_ref, backward_ref, hint_forward, hint_backward):
    Variable = _chapter3(exercise, "Variable")
    cls = ex.check_subclass(_chapter3(exercise, "Function"))
    for _ in range(5):
        shape = _random_shape(rng)
        x = rng.uniform(-3, 3, size=shape).astype(np.float32)
        gy = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
        inputs = (f"shape={shape} の float32 の乱数 x と gy"
                  f"（x の先頭: {np.round(x.ravel()[:3].astype(np.float64), 3).tolist()}）")
        f = ex.run(cls)
        y = ex.run(f, Variable(x.copy()))
        ex.check_close(y.data, forward_ref(x), rtol=1e-5, atol=1e-6, inputs=inputs, hint=hint_forward)
        ex.check_close(y.data, forward_ref(x), check_dtype=True, inputs=inputs,
                       hint="float32 の入力には float32 を返します。np.float64 の値を混ぜていませんか。")
        gx = ex.run(f.backward, gy)
        ex.check_close(gx, backward_ref(x, gy), rtol=1e-5, atol=1e-6, inputs=inputs, hint=hint_backward)
        ex.check_close(gx, backward_ref(x, gy), check_dtype=True, inputs=inputs,
                       hint="逆伝播も float32 のまま計算します。")


def test_ex3_1_sin(exercise, rng):
    ex = exercise("3-1", "Sin")
    _check_elementwise(
        ex, exercise, rng, np.sin, lambda x, gy: np.cos(x) * gy,
        "forward は np.sin(x) を返します。",
        "backward は cos(x) × gy です。x は self.input.data、gy を掛け忘れていないか確かめましょう。")


def test_ex3_2_tanh(exercise, rng):
    ex = exercise("3-2", "Tanh")
    _check_elementwise(
        ex, exercise, rng, np.tanh, lambda x, gy: (1 - np.tanh(x) ** 2) * gy,
        "forward は np.tanh(x) を返します。",
        "backward は (1 - y^2) × gy です。y は入力 x ではなく出力 tanh(x) です。")


def test_ex3_2_tanh_instances_are_independent(exercise, rng):
    ex = exercise("3-2", "Tanh")
    Variable = _chapter3(exercise, "Variable")
    cls = ex.check_subclass(_chapter3(exercise, "Function"))
    x1 = rng.uniform(-2, 2, size=3).astype(np.float32)
    x2 = rng.uniform(-2, 2, size=3).astype(np.float32)
    f1, f2 = ex.run(cls), ex.run(cls)
    ex.run(f1, Variable(x1))
    ex.run(f2, Variable(x2))
    gy = np.ones(3, dtype=np.float32)
    ex.check_close(ex.run(f1.backward, gy), 1 - np.tanh(x1) ** 2, rtol=1e-5, atol=1e-6,
                   inputs=f"x1={np.round(x1, 3)!r}, x2={np.round(x2, 3)!r}",
                   hint="出力はクラス変数ではなく、インスタンス（self）に覚えておきます。"
                        "2 つの Tanh を順に使っても、それぞれ自分の出力で逆伝播します。")


REUSE_HINT = ("forward で計算した出力を `self.y = y` のように覚えておき、backward では `(1 - self.y ** 2) * gy` と"
              "その値を使います。np.tanh(self.input.data) のように tanh をもう一度計算しないこと。")


def test_ex3_2_tanh_reuses_the_output(exercise, rng):
    ex = exercise("3-2", "Tanh")
    Variable = _chapter3(exercise, "Variable")
    cls = ex.check_subclass(_chapter3(exercise, "Function"))
    x = rng.uniform(-2, 2, size=4).astype(np.float32)
    gy = rng.uniform(0.5, 2.0, size=4).astype(np.float32)
    inputs = f"x={np.round(x.astype(np.float64), 3).tolist()}（float32）、gy は乱数"
    f = ex.run(cls)
    ex.run(f, Variable(x.copy()))
    # 順伝播のあとで入力をすり替えます。出力を覚えて使っていれば、逆伝播の結果は変わりません
    other = rng.uniform(-2, 2, size=4).astype(np.float32)
    f.input = Variable(other)
    names = ["tanh", "cosh", "sinh", "exp", "expm1"]
    with ex.spy(np, names[0]) as c0, ex.spy(np, names[1]) as c1, ex.spy(np, names[2]) as c2, \
            ex.spy(np, names[3]) as c3, ex.spy(np, names[4]) as c4:
        with ex.context(inputs=inputs, hint=REUSE_HINT):
            gx = ex.run(f.backward, gy)
    recomputed = [f"np.{n}" for n, c in zip(names, (c0, c1, c2, c3, c4)) if c]
    if recomputed:
        ex.fail(f"backward の中で {recomputed[0]} を呼んで、tanh をもう一度計算しています。", inputs=inputs,
                show_values=False, hint=REUSE_HINT)
    ex.check_close(gx, (1 - np.tanh(x) ** 2) * gy, rtol=1e-5, atol=1e-6,
                   inputs=inputs + "。順伝播のあとで f.input を別の値に差し替えてから backward を呼びました",
                   hint=REUSE_HINT)


def test_ex3_3_backprop_composite(exercise, rng):
    ex = exercise("3-3", "backprop_composite")
    Variable = _chapter3(exercise, "Variable")
    for dtype in [np.float64, np.float32, np.float32, np.float64]:
        x0 = float(rng.uniform(-1, 0.8))
        x = Variable(np.array(x0, dtype=dtype))
        inputs = f"x = Variable(np.array({x0:.4f}, dtype=np.{dtype.__name__}))"
        out = ex(x)
        if not (isinstance(out, tuple) and len(out) == 3 and all(isinstance(v, Variable) for v in out)):
            ex.fail("途中の変数と出力を、Variable 3 つのタプル (a, b, y) で返してください。", inputs=inputs,
                    expected="(a, b, y)", actual=out, hint="最後に `return a, b, y` と書きます。")
        a, b, y = out
        # 式で計算した答え（float64）: a = e^x, b = a^2, y = e^b
        a_ref = np.exp(x0)
        b_ref = a_ref ** 2
        y_ref = np.exp(b_ref)
        rtol = 1e-5 if dtype is np.float32 else 1e-9
        ex.check_close(a.data, a_ref, rtol=rtol, inputs=inputs,
                       hint="a = exp(x)、b = square(a)、y = exp(b) の順に関数を適用し、a, b, y を返します。")
        ex.check_close(y.data, y_ref, rtol=rtol, inputs=inputs,
                       hint="y = exp(square(exp(x))) の順に関数を適用します。")
        grads = [
            (y, "y", 1.0, "y.grad は dy/dy = 1 です。"),
            (b, "b", y_ref, "b.grad = C.backward(y.grad) のように、最後の関数（y を作った exp）から呼びます。"),
            (a, "a", 2 * a_ref * y_ref,
             "a.grad = B.backward(b.grad)。backward は出力側から順に（C → B → A）呼びます。"),
            (x, "x", a_ref * 2 * a_ref * y_ref,
             "x.grad = A.backward(a.grad)。dy/dx = e^x × 2a × e^b です。"),
        ]
        for var, name, ref, hint in grads:
            if var.grad is None:
                ex.fail(f"{name}.grad が None のままです。", inputs=inputs, expected=f"dy/d{name} の値",
                        actual=None, hint=f"{name}.grad に勾配を入れます。{hint}")
            expected = np.asarray(ref, dtype=dtype)
            ex.check_close(var.grad, expected, rtol=rtol, inputs=f"{inputs}、{name}.grad を確認", hint=hint)
            ex.check_close(var.grad, expected, check_dtype=True, rtol=rtol, inputs=f"{inputs}、{name}.grad を確認",
                           hint="y.grad は x.data と同じ dtype の配列にします（np.ones_like(y.data)）。"
                                "np.array(1.0) は float64 なので、float32 の計算が float64 に変わってしまいます。")


def _test_classes(Function):
    """採点用の関数たち: 正しい逆伝播と、わざと間違えた逆伝播。"""

    class Cube(Function):
        def forward(self, x):
            return x ** 3

        def backward(self, gy):
            return 3 * self.input.data ** 2 * gy

    class WrongSquare(Function):
        def forward(self, x):
            return x ** 2

        def backward(self, gy):
            return self.input.data * gy  # 2 を忘れている

    class IgnoresGy(Function):
        def forward(self, x):
            return x ** 2

        def backward(self, gy):
            return 2 * self.input.data  # gy を掛け忘れている

    class WrongExp(Function):
        def forward(self, x):
            return np.exp(x)

        def backward(self, gy):
            return np.exp(self.input.data + 0.001) * gy  # 0.1% だけずれている

    return Cube, WrongSquare, IgnoresGy, WrongExp


def test_ex3_4_check_backward(exercise, rng):
    ex = exercise("3-4", "check_backward")
    Cube, WrongSquare, IgnoresGy, WrongExp = _test_classes(_chapter3(exercise, "Function"))
    correct = ("の backward は正しいので True が正解です（{}）。False になったのは、数値微分の側に同じ gy を"
               "掛け忘れている・backward と数値微分で違う gy を使っている・np.allclose の許容誤差を厳しくしすぎている"
               "（rtol=1e-5, atol=1e-7 を使います）・数値微分の刻み幅 eps を使っていない、のどれかではありませんか。")
    cases = [(_chapter3(exercise, "Square"), True, "Square" + correct.format("dy/dx = 2x")),
             (_chapter3(exercise, "Exp"), True, "Exp" + correct.format("dy/dx = e^x")),
             (Cube, True, "Cube（y = x^3）" + correct.format("dy/dx = 3x^2")),
             (WrongSquare, False, "微分の係数 2 を忘れた backward です。"),
             (IgnoresGy, False, "gy を掛け忘れた backward です。gy がすべて 1 だと見逃します。"),
             (WrongExp, False, "0.1% だけずれた backward です。許容誤差が大きすぎませんか（rtol=1e-5, atol=1e-7）。")]
    # 正しいクラスを先に、そのあと間違ったクラスを（それぞれの中は乱数の順で）調べます。どの乱数の種でも、
    # 正しい backward を False とする答えには、同じ「True が正解」のヒントが出ます。
    order = [*rng.permutation(3), *(3 + rng.permutation(3))]
    for i in order:
        cls, expected, why = cases[i]
        x = rng.uniform(-1.5, 1.5, size=_random_shape(rng) or (3,))
        name = cls.__name__
        got = ex(cls, x.copy())
        if not isinstance(got, (bool, np.bool_)):
            ex.fail("True か False を返してください。", inputs=f"{name}, x={np.round(x, 3)!r}",
                    expected=expected, actual=got, hint="np.allclose(...) の結果をそのまま返せます。")
        if bool(got) != expected:
            ex.fail(f"{name} の判定が違います。" + ("" if expected else why), inputs=f"{name}, x={np.round(x, 3)!r}",
                    expected=expected, actual=got,
                    hint=why if expected else "backward(gy) と「数値微分 × gy」を、1 ではない gy で比べます。")
