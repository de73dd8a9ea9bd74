"""第2章 練習問題の隠しテスト（微分と計算グラフ）。

期待する値は、NumPy の式や解析的な導関数からテストの中で独立に計算します。
入力は毎回 ``rng`` で作り直すので、例の答えを書き写しただけでは通りません。
"""
import numpy as np


def _matches(got, value, rtol=1e-7, atol=1e-12):
    """``got`` が ``value`` と（shape も含めて）ほぼ等しいか。比べられなければ False。"""
    try:
        got = np.asarray(got, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return got.shape == value.shape and bool(np.allclose(got, value, rtol=rtol, atol=atol))


def _diagnose(got, candidates, default, rtol=1e-7):
    """よくある間違いの答え ``candidates``（[(ヒント, 値), ...]）のどれかに一致すれば、そのヒントを返します。"""
    for hint, value in candidates:
        if _matches(got, value, rtol=rtol):
            return hint
    return default


def _as_pair(ex, got, inputs, what):
    """2 つの値の組（tuple / list）を受け取り、float64 の配列 shape (2,) にします。"""
    try:
        pair = np.asarray([float(v) for v in got], dtype=np.float64)
        ok = pair.shape == (2,)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        ex.fail(f"{what} の 2 つの数を tuple で返してください。", inputs=inputs, expected=f"({what})",
                actual=got, hint="最後の行を `return 値1, 値2` のようにします。")
    return pair


# ---------------------------------------------------------------- 練習 2-1


def _second_diff_cases(rng):
    """(関数, f'' の正確な値の関数, 説明) をランダムに作ります。"""
    a = float(rng.uniform(0.5, 1.5))
    b = float(rng.uniform(-1.0, 1.0))
    c = float(rng.uniform(0.5, 2.0))
    return [
        (lambda t: np.exp(a * t) + b * t**4, lambda t: a**2 * np.exp(a * t) + 12 * b * t**2,
         f"f(t) = exp({a:.4f} t) + ({b:.4f}) t^4"),
        (lambda t: np.sin(c * t), lambda t: -(c**2) * np.sin(c * t), f"f(t) = sin({c:.4f} t)"),
    ]


def test_ex2_1_second_diff_matches_the_central_formula(exercise, rng):
    ex = exercise("2-1", "second_diff")
    for f, _, name in _second_diff_cases(rng):
        for _ in range(3):
            x = float(rng.uniform(-1.0, 1.0))
            h = float(rng.uniform(0.05, 0.3))
            got = ex(f, x, h)
            expected = (f(x + h) - 2 * f(x) + f(x - h)) / h**2
            hint = _diagnose(got, [
                ("x, x+h, x+2h の 3 点（前進型）ではなく、x を真ん中にした x-h, x, x+h の 3 点を使います。",
                 (f(x + 2 * h) - 2 * f(x + h) + f(x)) / h**2),
                ("x-2h, x, x+2h を使うと刻み幅が 2h になります。x-h, x, x+h の 3 点を使います。",
                 (f(x + 2 * h) - 2 * f(x) + f(x - 2 * h)) / (4 * h**2)),
                ("分母は h ではなく h**2 です（h で 2 回割ります）。", (f(x + h) - 2 * f(x) + f(x - h)) / h),
                ("分母は 2h**2 ではなく h**2 です。", (f(x + h) - 2 * f(x) + f(x - h)) / (2 * h**2)),
                ("真ん中の項は -2 f(x) です（係数 2 を忘れていませんか）。", (f(x + h) - f(x) + f(x - h)) / h**2),
            ], "式 (f(x+h) - 2 f(x) + f(x-h)) / h**2 をそのまま計算します。h を引数から使っていますか。")
            ex.check_close(got, expected, rtol=1e-7, atol=1e-9,
                           inputs=f"{name}, x={x:.6f}, h={h:.6f}", hint=hint)


def test_ex2_1_second_diff_approximates_the_second_derivative(exercise, rng):
    ex = exercise("2-1", "second_diff")
    for f, d2f, name in _second_diff_cases(rng):
        x = float(rng.uniform(-1.0, 1.0))
        got = ex(f, x, 1e-3)
        ex.check_close(got, d2f(x), rtol=1e-4, atol=1e-4, inputs=f"{name}, x={x:.6f}, h=0.001",
                       hint="h = 0.001 なら、2 階微分の正確な値とほぼ一致するはずです。")


# ---------------------------------------------------------------- 練習 2-2


def _f_vector(v):
    # 要素どうしが (sum v)^2 で結び付いているので、動かした要素を戻し忘れると答えが狂います
    return float(np.sum(np.sin(v) * v**2) + np.sum(v) ** 2)


def _grad_f_vector(v):
    return np.cos(v) * v**2 + 2 * v * np.sin(v) + 2 * np.sum(v)


def _forward_gradient(f, x, h):
    x = x.astype(np.float64)
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = h
        grad[idx] = (f(x + step) - f(x)) / h
    return grad


_GRADIENT_HINT = ("要素を 1 つずつ動かし、次の要素に進む前に元の値へ戻していますか。"
                  "x 全体を一度に動かすと、各要素の偏微分ではなく方向微分になってしまいます。")


def _check_gradient(ex, x, f, expected, description, default_hint=_GRADIENT_HINT):
    inputs = f"{description}, x={np.array2string(x, precision=4)}"
    got = ex(f, x.copy())
    hint = _diagnose(got, [
        ("前進差分になっていませんか。(f(x + h e_i) - f(x - h e_i)) / (2h) の中心差分を使います。",
         _forward_gradient(f, x, 1e-4)),
    ], default_hint)
    ex.check_close(got, expected, rtol=1e-6, atol=1e-6, inputs=inputs, hint=hint)
    ex.check_close(got, expected, rtol=1e-6, atol=1e-6, check_dtype=True, inputs=inputs,
                   hint="float64 の配列（x と同じ shape）を返します。np.zeros_like(x) で用意すると簡単です。")


def test_ex2_2_numerical_gradient_vector(exercise, rng):
    ex = exercise("2-2", "numerical_gradient")
    for _ in range(3):
        x = rng.uniform(-2.0, 2.0, size=int(rng.integers(2, 7)))
        _check_gradient(ex, x, _f_vector, _grad_f_vector(x), "f(v) = sum(sin(v) v^2) + (sum v)^2")


def test_ex2_2_numerical_gradient_matrix(exercise, rng):
    ex = exercise("2-2", "numerical_gradient")
    w = rng.uniform(-1.5, 1.5, size=(2, 3))

    def f(m):
        return float(np.sum(m**3) + m[0, 0] * m[1, 2])

    expected = 3 * w**2
    expected[0, 0] += w[1, 2]
    expected[1, 2] += w[0, 0]
    _check_gradient(ex, w, f, expected, "f(m) = sum(m^3) + m[0,0] m[1,2]",
                    default_hint=_GRADIENT_HINT + "2 次元の x では、for idx in np.ndindex(x.shape): で"
                    "すべての要素の添字 idx を順にたどれます（x[idx] で読み書きできます）。")


def test_ex2_2_numerical_gradient_uses_h_and_central_difference(exercise, rng):
    ex = exercise("2-2", "numerical_gradient")
    x = rng.uniform(-2.0, 2.0, size=4)
    h = float(rng.choice([1e-2, 2e-2, 5e-2]))

    def f(v):
        return float(np.sum(v**3))

    # v^3 の中心差分はちょうど 3 v^2 + h^2 になります（前進差分なら 3 v^2 + 3 v h + h^2）
    expected = 3 * x**2 + h**2
    got = ex(f, x.copy(), h)
    hint = _diagnose(got, [
        ("前進差分になっています。(f(x + h e_i) - f(x - h e_i)) / (2h) の中心差分を使います。",
         3 * x**2 + 3 * x * h + h**2),
        ("引数の h を使っていますか（h=1e-4 に固定していませんか）。", 3 * x**2 + 1e-8),
    ], "(f(x + h e_i) - f(x - h e_i)) / (2h) を要素ごとに計算します。")
    ex.check_close(got, expected, rtol=1e-8, atol=1e-8,
                   inputs=f"f(v) = sum(v^3), x={np.array2string(x, precision=4)}, h={h}", hint=hint)


def test_ex2_2_numerical_gradient_leaves_x_unchanged(exercise, rng):
    ex = exercise("2-2", "numerical_gradient")
    # x[i] + h - 2h + h でも x[i] + h - h でも元に戻らない値だけを使います（± h で戻す答えは毎回落ちます）
    h = 1e-4
    values = []
    while len(values) < 8:
        v = float(rng.uniform(-3.0, 3.0))
        if ((v + h) - 2 * h) + h != v and (v + h) - h != v and ((v + h) - h - h) + h != v:
            values.append(v)
    x = np.array(values)
    before = x.copy()
    got = ex(_f_vector, x)
    if got is x:
        ex.fail("引数の x そのものを返しています。", expected="新しい配列", actual="x と同じオブジェクト",
                hint="勾配は np.zeros_like(x) などで別の配列を用意して、そこに書き込みます。")
    if not np.array_equal(x, before):
        if np.allclose(x, before, rtol=0, atol=1e-12):
            hint = ("x[i] + h - h は丸め誤差のせいで元の x[i] に戻らないことがあります。"
                    "動かす前の値を変数に取っておき、最後にその値を代入し直してください。")
        else:
            hint = "x を書き換えたら、次の要素に進む前に必ず元の値を代入し直します（x.copy() を使ってもかまいません）。"
        ex.fail("呼び出したあと、入力の x が元の値に戻っていません。", inputs=f"x={np.array2string(before, precision=4)}",
                expected=before, actual=x, hint=hint)


# ---------------------------------------------------------------- 練習 2-3


def _sigmoid_grad_reference(x):
    x = np.asarray(x, dtype=np.float64)
    s = 0.5 * (1.0 + np.tanh(0.5 * x))  # オーバーフローしない sigmoid
    return s * (1.0 - s)


NUMERICAL_HINT = ("数値微分（(σ(x + h) - σ(x - h)) / 2h や numerical_diff）ではなく、σ(x)(1 − σ(x)) の式で計算します。"
                  "数値微分は刻み幅 h をどう選んでも 1e-10 ほどの誤差が残りますが、式なら float64 の丸め誤差"
                  "（1e-15 ほど）しか残りません。")


def _sigmoid_hint(x, got, default="σ(x) = 1 / (1 + exp(-x)) を計算してから、σ(x) * (1 - σ(x)) を返します。"):
    x64 = np.asarray(x, dtype=np.float64)
    s = 0.5 * (1.0 + np.tanh(0.5 * x64))
    if _matches(got, s * (1 - s), rtol=3e-2, atol=3e-3):  # ほとんど合っている: 数値微分の誤差
        default = NUMERICAL_HINT
    return _diagnose(got, [
        ("σ(x)(1 − σ(x)) の後ろの σ(x) を x と書いていませんか。", s * (1 - x64)),
        ("sigmoid 自体ではなく、その微分を返します。", s),
        ("符号が逆です。σ'(x) = σ(x)(1 − σ(x)) は常に正です。", -s * (1 - s)),
        ("σ(x)(1 + σ(x)) ではなく σ(x)(1 − σ(x)) です。", s * (1 + s)),
    ], default, rtol=1e-4)


def test_ex2_3_sigmoid_grad_values(exercise, rng):
    ex = exercise("2-3", "sigmoid_grad")
    for shape in [(int(rng.integers(3, 8)),), (2, 3)]:
        x = rng.normal(0.0, 4.0, size=shape)
        got = ex(x.copy())
        ex.check_close(got, _sigmoid_grad_reference(x), rtol=1e-7, atol=1e-12,
                       inputs=f"x={np.array2string(x, precision=4)}", hint=_sigmoid_hint(x, got))


def test_ex2_3_sigmoid_grad_keeps_dtype(exercise, rng):
    ex = exercise("2-3", "sigmoid_grad")
    for dtype in [np.float32, np.float64]:
        x = rng.normal(0.0, 3.0, size=(3, 2)).astype(dtype)
        got = ex(x.copy())
        expected = _sigmoid_grad_reference(x).astype(dtype)
        ex.check_close(got, expected, rtol=1e-4, atol=1e-6, inputs=f"x={np.array2string(x, precision=4)}",
                       hint=_sigmoid_hint(x, got))
        ex.check_close(got, expected, rtol=1e-4, atol=1e-6, check_dtype=True,
                       inputs=f"x.dtype={np.dtype(dtype).name}",
                       hint="入力と同じ dtype を返します。np.float64(1) や np.array(1.0) のような float64 の値、"
                            "数値微分（numerical_diff は float64 を返します）を使うと float64 になってしまいます。"
                            "Python の数 1 や 1.0 なら dtype は変わりません。")


def test_ex2_3_sigmoid_grad_large_inputs_are_finite(exercise, rng):
    ex = exercise("2-3", "sigmoid_grad")
    big = float(rng.uniform(95.0, 105.0))
    for dtype in [np.float32, np.float64]:
        x = np.array([-1000.0, -big, -50.0, 0.0, 50.0, big, 1000.0], dtype=dtype)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            got = ex(x.copy())
        expected = _sigmoid_grad_reference(x).astype(dtype)
        overflow_hint = ("|x| が大きいと exp(-x) が inf になります。exp(-x) / (1 + exp(-x))**2 の形だと "
                         "inf / inf = nan です。σ(x) = 1 / (1 + exp(-x)) を先に求め、σ(x) * (1 - σ(x)) と"
                         "計算すれば 1 / inf = 0 となって nan は出ません（オーバーフローの警告は出てもかまいません）。")
        try:
            has_nan = bool(np.isnan(np.asarray(got, dtype=np.float64)).any())
        except (TypeError, ValueError):
            has_nan = False
        ex.check_close(got, expected, rtol=1e-4, atol=1e-12,
                       inputs=f"x={np.array2string(x, precision=1)}（dtype={np.dtype(dtype).name}）",
                       hint=overflow_hint if has_nan else _sigmoid_hint(x, got, overflow_hint))


def test_ex2_3_sigmoid_grad_uses_the_formula(exercise, rng):
    ex = exercise("2-3", "sigmoid_grad")
    from grader import used_names
    called = used_names(ex.nodes()) & {"numerical_diff", "numerical_gradient", "central_diff"}
    if called:
        ex.fail(f"{sorted(called)[0]}（数値微分）を使っています。", show_values=False, hint=NUMERICAL_HINT)
    x = rng.uniform(-3.0, 3.0, size=40)
    got = ex(x.copy())
    ex.check_close(got, _sigmoid_grad_reference(x), rtol=1e-12, atol=0,
                   inputs=f"x は [-3, 3] の float64 の乱数 40 個（先頭: {np.round(x[:3], 4).tolist()}）",
                   hint=_sigmoid_hint(x, got, NUMERICAL_HINT))


def test_ex2_3_sigmoid_grad_does_not_modify_input(exercise, rng):
    ex = exercise("2-3", "sigmoid_grad")
    x = rng.normal(0.0, 2.0, size=5)
    before = x.copy()
    ex(x)
    if not np.array_equal(x, before):
        ex.fail("入力の配列 x が書き換えられています。", inputs=f"x={np.array2string(before, precision=4)}",
                expected=before, actual=x,
                hint="x *= -1 や np.exp(x, out=x) のような書き換え（in-place の演算）を使わず、新しい配列を作ります。")


# ---------------------------------------------------------------- 練習 2-4 / 2-5


def _z_parts(x, y):
    c = x * y + np.sin(x)
    z = c**2
    gx = 2 * c * (y + np.cos(x))
    gy = 2 * c * x
    return z, gx, gy


def test_ex2_4_backward_by_hand(exercise, rng):
    ex = exercise("2-4", "backward_by_hand")
    for _ in range(20):
        x, y = (float(v) for v in rng.uniform(-3.0, 3.0, size=2))
        inputs = f"x={x:.6f}, y={y:.6f}"
        got = _as_pair(ex, ex(x, y), inputs, "dz/dx, dz/dy")
        z, gx, gy = _z_parts(x, y)
        c = x * y + np.sin(x)
        hint = _diagnose(got, [
            ("順番が逆です。(dz/dx, dz/dy) の順に返します。", [gy, gx]),
            ("x は a = x*y と b = sin(x) の 2 か所で使われています。dz/dx には両方の道の分"
             "（ga * y と gb * cos(x)）を足し合わせます。", [2 * c * y, gy]),
            ("x は 2 か所で使われています。dz/dx には ga * y の分も足し合わせます。", [2 * c * np.cos(x), gy]),
            ("z = c**2 なので dz/dc = 2c です（係数 2 を忘れていませんか）。", [gx / 2, gy / 2]),
            ("a = x * y を y で微分すると x です（y ではありません）。", [gx, 2 * c * y]),
            ("sin の微分は cos です（符号も確かめてください）。", [2 * c * (y - np.cos(x)), gy]),
        ], "順伝播で a = x*y, b = sin(x), c = a + b, z = c**2 を記録し、gz = 1 から "
           "gc = 2c * gz、ga = gb = gc、gx = ga * y + gb * cos(x)、gy = ga * x の順に逆へたどります。")
        ex.check_close(got, [gx, gy], rtol=1e-9, atol=1e-12, inputs=inputs, hint=hint)


def test_ex2_5_forward_by_hand_value_and_tangent(exercise, rng):
    ex = exercise("2-5", "forward_by_hand")
    for _ in range(20):
        x, y, dx, dy = (float(v) for v in rng.uniform(-3.0, 3.0, size=4))
        inputs = f"x={x:.6f}, y={y:.6f}, dx={dx:.6f}, dy={dy:.6f}"
        got = _as_pair(ex, ex(x, y, dx, dy), inputs, "z, dz")
        z, gx, gy = _z_parts(x, y)
        dz = gx * dx + gy * dy
        c = x * y + np.sin(x)
        hint = _diagnose(got, [
            ("順番が逆です。(z, dz) の順に返します。", [dz, z]),
            ("dz は方向 (dx, dy) への微分です。dz/dx だけでなく、"
             "a の接線 da = dx*y + x*dy のように dx, dy を流していきます。", [z, gx]),
            ("z = c**2 なので dz = 2c * dc です（係数 2 を忘れていませんか）。", [z, dz / 2]),
            ("積の微分は da = dx*y + x*dy です（2 つの項の両方が必要です）。", [z, 2 * c * (dx * y + np.cos(x) * dx)]),
            ("z は c の 2 乗です（c = x*y + sin(x) そのものではありません）。", [c, dz]),
        ], "a = x*y と da = dx*y + x*dy、b = sin(x) と db = cos(x)*dx、c = a + b と dc = da + db、"
           "z = c**2 と dz = 2c*dc のように、値と接線を一緒に計算します。")
        ex.check_close(got, [z, dz], rtol=1e-9, atol=1e-12, inputs=inputs, hint=hint)


def test_ex2_5_forward_by_hand_unit_directions_give_partial_derivatives(exercise, rng):
    ex = exercise("2-5", "forward_by_hand")
    x, y = (float(v) for v in rng.uniform(-3.0, 3.0, size=2))
    z, gx, gy = _z_parts(x, y)
    for direction, partial, name in [((1.0, 0.0), gx, "dz/dx"), ((0.0, 1.0), gy, "dz/dy")]:
        inputs = f"x={x:.6f}, y={y:.6f}, (dx, dy)={direction}"
        got = _as_pair(ex, ex(x, y, *direction), inputs, "z, dz")
        ex.check_close(got, [z, partial], rtol=1e-9, atol=1e-12, inputs=inputs,
                       hint=f"方向 {direction} なら、dz は {name} に一致するはずです。")


# ---------------------------------------------------------------- 練習 2-6


def test_ex2_6_best_central_step(exercise, rng):
    ex = exercise("2-6", "best_central_step")
    for _ in range(10):
        eps = float(10.0 ** rng.uniform(-17.0, -3.0))
        got = ex(eps)
        expected = (3 * eps) ** (1 / 3)
        is_number = isinstance(got, (int, float, np.floating)) and not isinstance(got, bool)
        if not (is_number or (isinstance(got, np.ndarray) and got.shape == () and got.dtype.kind == "f")):
            ex.fail("1 つの数（float）を返してください。", inputs=f"eps={eps:.3e}", expected=expected,
                    actual=got, hint="配列や tuple ではなく、1 つの数を return します。")
        hint = _diagnose(got, [
            ("それは前進差分の最適値（√ε 程度）です。中心差分の誤差は h^2/6 + ε/h です。", np.sqrt(eps)),
            ("それは前進差分の最適値です。中心差分の誤差は h^2/6 + ε/h です。", np.sqrt(2 * eps)),
            ("ε^(1/3) の前の係数を確かめてください。E'(h) = h/3 − ε/h^2 = 0 を解きます。", eps ** (1 / 3)),
            ("E'(h) = 2h/6 − ε/h^2 です（h^2/6 の微分は h/3）。", (6 * eps) ** (1 / 3)),
            ("E'(h) = h/3 − ε/h^2 = 0 から h^3 = 3ε です。", (eps / 3) ** (1 / 3)),
        ], "E(h) = h^2/6 + ε/h を h で微分して 0 とおき、h について解きます。")
        if not np.isclose(float(got), expected, rtol=1e-6, atol=0):
            # 小さな数なので、期待した値を float のまま（指数表記で）見せます
            ex.fail("値が違います（許容 rtol=1e-6）。", inputs=f"eps={eps:.3e}", expected=expected,
                    actual=got, hint=hint)
