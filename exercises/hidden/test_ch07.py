"""第7章の隠しテスト（高階微分）。

練習のノートブックは mini_dl パッケージの Variable と関数を使うので、テストもパッケージを使います。
よくある間違い（cleargrad を忘れる、create_graph=True を忘れる、階数や項の数が 1 つずれる）は、
テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import math

import numpy as np

import mini_dl.functions as F
from grader import ExerciseFailure, pick_hint
from mini_dl import Variable

HINT_CREATE_GRAPH = ("1 回目の backward に create_graph=True を付けていますか。付けないと、勾配 x.grad に計算グラフが付かず、"
                     "2 回目の逆伝播が x まで届きません（x.grad が None のままになります）。")


def _run(ex, hint, func, *args):
    """``ex.run`` と同じですが、例外が起きたときにヒントを書き足します。"""
    try:
        return ex.run(func, *args)
    except ExerciseFailure as e:
        if "NotImplementedError" in str(e):
            raise
        raise ExerciseFailure(f"{e}\n  ヒント:     {hint}") from None


def _as_array(ex, value, inputs, what="配列"):
    if isinstance(value, Variable):
        ex.fail(f"Variable ではなく{what}を返してください。", inputs=inputs, expected="ndarray", actual=value,
                hint="最後に `.data` を付けて、中身の配列を返します。")
    return value


def _seed(y):
    y.grad = Variable(np.ones_like(y.data))


# --- 間違えた答え（ヒントを選ぶために、テストの中で同じ間違いをして作ります） -----------------

def _nth_without_cleargrad(f, x, n):
    x = Variable(np.array(x))
    y = f(x)
    for _ in range(n):
        _seed(y)
        y.backward(create_graph=True)
        y = x.grad
    return y.data


# --- 7-1 -----------------------------------------------------------------------------------

def _tanh_derivatives(x):
    t = np.tanh(np.asarray(x, dtype=np.float64))
    s = 1 - t ** 2
    return [t, s, -2 * t * s, -2 * s * (s - 2 * t ** 2), 16 * t * s ** 2 - 8 * t ** 3 * s]


def _check_nth(ex, f, x, n, expected_by_order, inputs, rtol, atol):
    got = _run(ex, HINT_CREATE_GRAPH, ex.obj, f, x.copy(), n)
    got = _as_array(ex, got, inputs)
    candidates = {}
    if n >= 1:
        candidates[f"{n - 1} 階微分が返ってきました。逆伝播の回数が 1 回足りません（n 階微分なら n 回繰り返します）。"] = expected_by_order[n - 1]
    if n + 1 < len(expected_by_order):
        candidates[f"{n + 1} 階微分が返ってきました。逆伝播の回数が 1 回多くありませんか。"] = expected_by_order[n + 1]
    if n >= 2:
        candidates["逆伝播のたびに x.cleargrad() で前の勾配を消していますか。消さないと、前の階の微分が足し合わされます。"] = \
            _nth_without_cleargrad(f, x.copy(), n)
    hint = pick_hint(got, candidates,
                      f"{n} 階微分になっていません。毎回 x.cleargrad() してから y.backward(create_graph=True) し、"
                      "y = x.grad として次の階へ進みます。要素が複数なら、出発点の勾配 y.grad をすべて 1 にします。")
    ex.check_close(got, expected_by_order[n], rtol=rtol, atol=atol, inputs=inputs, hint=hint)
    return got


def test_ex7_1_tanh_fourth_derivative_float32(exercise, rng):
    ex = exercise("7-1", "nth_derivative")
    x = rng.uniform(-2, 2, size=int(rng.integers(3, 8))).astype(np.float32)
    inputs = f"f = F.tanh, n = 4, x = {np.round(x.astype(np.float64), 3).tolist()}（float32）"
    expected = [d.astype(np.float32) for d in _tanh_derivatives(x)]
    got = _check_nth(ex, F.tanh, x, 4, expected, inputs, rtol=1e-3, atol=1e-4)
    ex.check_close(got, expected[4], rtol=1e-3, atol=1e-4, check_dtype=True, inputs=inputs,
                   hint="float32 の x には float32 を返します。出発点の勾配を np.ones_like(y.data) で作ると dtype がそろいます。")


def test_ex7_1_sin_cycle(exercise, rng):
    ex = exercise("7-1", "nth_derivative")
    x = np.array(rng.uniform(-3, 3))
    cycle = [np.sin(x), np.cos(x), -np.sin(x), -np.cos(x)]
    expected = [cycle[k % 4] for k in range(10)]
    for n in [0, 1, 2, 3, 4, 5, 7]:
        inputs = f"f = F.sin, n = {n}, x = {float(x):.4f}（float64 の 0 次元配列）"
        hint_zero = "n = 0 のときは、微分せずに f(x) の値を返します。" if n == 0 else None
        got = _run(ex, HINT_CREATE_GRAPH, ex.obj, F.sin, x.copy(), n)
        got = _as_array(ex, got, inputs)
        if hint_zero:
            ex.check_close(got, expected[0], rtol=1e-10, atol=1e-12, inputs=inputs, hint=hint_zero)
        else:
            _check_nth(ex, F.sin, x, n, expected, inputs, rtol=1e-9, atol=1e-12)


def test_ex7_1_polynomial_on_a_matrix(exercise, rng):
    ex = exercise("7-1", "nth_derivative")
    c = float(np.round(rng.uniform(0.5, 2.0), 3))
    x = rng.uniform(-1.5, 1.5, size=(2, 3))
    expected = [c * math.factorial(5) / math.factorial(5 - k) * x ** (5 - k) for k in range(6)] + [np.zeros_like(x)]
    n = int(rng.integers(2, 6))
    inputs = f"f(v) = {c} * v ** 5, n = {n}, x は shape (2, 3) の float64 の乱数"
    _check_nth(ex, lambda v: c * v ** 5, x, n, expected, inputs, rtol=1e-9, atol=1e-9)


# --- 7-2 -----------------------------------------------------------------------------------

def _newton_reference(df, d2f, x0, steps, wrong_denominator=False):
    xs = [float(x0)]
    for _ in range(steps):
        x = xs[-1]
        denom = d2f(x) + (df(x) if wrong_denominator else 0.0)
        xs.append(x - df(x) / denom)
    return xs


def _check_newton(ex, f, df, d2f, x0, steps, inputs):
    got = _run(ex, HINT_CREATE_GRAPH, ex.obj, f, x0, steps)
    try:
        history = np.array([float(v) for v in got], dtype=np.float64)
    except Exception:
        ex.fail("x の履歴を、Python の数値のリストで返してください。", inputs=inputs, expected="[x0, x1, ...]",
                actual=got, hint="毎回 float(x.data) をリストに追加します（Variable や配列そのものを入れない）。")
    arrays = [v for v in got if isinstance(v, (np.ndarray, Variable)) or not isinstance(v, (int, float))]
    if arrays:
        ex.fail(f"履歴には Python の数値（float）を入れてください（{type(arrays[0]).__name__} が入っています）。",
                inputs=inputs, expected="[x0, x1, ...]（float のリスト）", actual=arrays[0],
                hint="毎回 float(x.data) をリストに追加します。x.data（0 次元配列）のまま入れると、履歴が配列の"
                     "リストになり、x.data をその場で書き換えたときには履歴の値まで変わってしまいます。")
    expected = np.array(_newton_reference(df, d2f, x0, steps))
    if len(history) != len(expected):
        hint = ("出発点 x0 もリストの最初に入れます。" if len(history) == steps
                else "更新は steps 回で、リストの長さは steps + 1 です。")
        ex.fail(f"履歴の長さが違います（期待 {len(expected)}、実際 {len(history)}）。", inputs=inputs,
                expected=np.round(expected, 6).tolist(), actual=got, hint=hint)
    wrong = np.array(_newton_reference(df, d2f, x0, steps, wrong_denominator=True))
    hint = pick_hint(history, {
        "2 回目の逆伝播（gx.backward()）の前に x.cleargrad() を忘れていませんか。忘れると x.grad は f' + f'' になります。": wrong,
    }, "x ← x - f'(x) / f''(x) です。f' は y.backward(create_graph=True) の x.grad、f'' は x.cleargrad() のあと gx.backward() した x.grad です。")
    ex.check_close(history, expected, rtol=1e-8, atol=1e-10, inputs=inputs, hint=hint)


def test_ex7_2_quartic_from_two(exercise):
    ex = exercise("7-2", "newton_minimize")
    inputs = "f(x) = x ** 4 - 2 * x ** 2, x0 = 2.0, steps = 10"
    _check_newton(ex, lambda x: x ** 4 - 2 * x ** 2, lambda x: 4 * x ** 3 - 4 * x, lambda x: 12 * x ** 2 - 4,
                  2.0, 10, inputs)
    history = [float(v) for v in ex(lambda x: x ** 4 - 2 * x ** 2, 2.0, 10)]
    if abs(history[-1] - 1.0) > 1e-9:
        ex.fail("10 回で最小値 x = 1 に着いていません。", inputs=inputs, expected=1.0, actual=history[-1])


def test_ex7_2_random_convex_quartics(exercise, rng):
    ex = exercise("7-2", "newton_minimize")
    for _ in range(3):
        a, b, c = (float(np.round(v, 3)) for v in (rng.uniform(0.5, 2), rng.uniform(0.5, 2), rng.uniform(-3, 3)))
        x0 = float(np.round(rng.uniform(-3, 3), 3))
        steps = int(rng.integers(3, 9))
        inputs = f"f(x) = {a} x^4 + {b} x^2 + {c} x, x0 = {x0}, steps = {steps}"
        _check_newton(ex, lambda x: a * x ** 4 + b * x ** 2 + c * x,
                      lambda x: 4 * a * x ** 3 + 2 * b * x + c, lambda x: 12 * a * x ** 2 + 2 * b,
                      x0, steps, inputs)


def test_ex7_2_exp_function(exercise, rng):
    ex = exercise("7-2", "newton_minimize")
    x0 = float(np.round(rng.uniform(-2, 2), 3))
    inputs = f"f(x) = F.exp(x) + x ** 2, x0 = {x0}, steps = 5"
    _check_newton(ex, lambda x: F.exp(x) + x ** 2, lambda x: math.exp(x) + 2 * x, lambda x: math.exp(x) + 2,
                  x0, 5, inputs)


# --- 7-3 -----------------------------------------------------------------------------------

def _check_penalty(ex, f, x, fprime, expected, inputs, rtol, atol, check_dtype):
    got = _run(ex, HINT_CREATE_GRAPH, ex.obj, f, x.copy())
    got = _as_array(ex, got, inputs)
    hint = pick_hint(got, {
        "返ってきたのは 1 階微分 df/dx です。create_graph=True で求めた gx から p = gx ** 2 を作り、p を逆伝播します。": fprime,
        "p を逆伝播する前に x.cleargrad() を忘れていませんか。忘れると、1 階微分 df/dx が足し合わされます。": expected + fprime,
        "返ってきたのは (df/dx)^2 の値そのものです。その x についての微分を返します。": fprime ** 2,
    }, "d/dx (df/dx)^2 を逆伝播で求めます: y.backward(create_graph=True) → gx = x.grad → x.cleargrad() → (gx ** 2) を逆伝播。")
    ex.check_close(got, expected, rtol=rtol, atol=atol, inputs=inputs, hint=hint)
    if check_dtype:
        ex.check_close(got, expected, rtol=rtol, atol=atol, check_dtype=True, inputs=inputs,
                       hint="float32 の x には float32 を返します。出発点の勾配は np.ones_like(...) で作ります。")


DOUBLE_BACKPROP_HINT = ("dp/dx = 2 f'(x) f''(x) の式を使わずに、逆伝播で求めます: y.backward(create_graph=True) で"
                       "gx = x.grad（グラフ付きの Variable）を求め、x.cleargrad() してから p = gx ** 2 を作り、"
                       "p を逆伝播（p.grad をすべて 1 にして p.backward()）した x.grad.data を返します。")


def test_ex7_3_backpropagates_the_squared_gradient(exercise, rng):
    import mini_dl
    import mini_dl.core
    ex = exercise("7-3", "gradient_penalty")
    x = rng.uniform(-1.5, 1.5, size=int(rng.integers(3, 7)))
    c = float(np.round(rng.uniform(0.5, 1.5), 3))
    fprime = 3 * c * x ** 2
    inputs = f"f(v) = {c} * v ** 3, x = {np.round(x, 3).tolist()}（float64）"
    # 逆伝播を始めた変数（backward を呼んだ出力）を記録します
    with ex.spy(mini_dl.core, "backward") as calls, ex.spy(mini_dl, "backward") as direct:
        _run(ex, HINT_CREATE_GRAPH, ex.obj, lambda v: c * v ** 3, x.copy())
    started = []
    for args, kwargs in calls + direct:
        outputs = args[0] if args else kwargs.get("outputs")
        for out in (outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            data = getattr(out, "data", None)
            if data is not None:
                started.append(np.asarray(data, dtype=np.float64))
    square = fprime ** 2
    if not any((d.shape == square.shape and np.allclose(d, square, rtol=1e-8))
               or (d.size == 1 and np.allclose(d.reshape(()), square.sum(), rtol=1e-8)) for d in started):
        ex.fail("(df/dx)^2 を逆伝播していません（2 f' f'' の式で計算していませんか）。", inputs=inputs,
                expected="(df/dx)^2（p = gx ** 2）から始めた逆伝播",
                actual=f"逆伝播を始めた変数の値: {[np.round(d, 4).tolist() for d in started]}",
                hint=DOUBLE_BACKPROP_HINT)


def test_ex7_3_cubic_float32(exercise, rng):
    ex = exercise("7-3", "gradient_penalty")
    c = float(np.round(rng.uniform(0.5, 1.5), 3))
    x = rng.uniform(-1.5, 1.5, size=int(rng.integers(3, 7))).astype(np.float32)
    x64 = x.astype(np.float64)
    inputs = f"f(v) = {c} * v ** 3, x = {np.round(x.astype(np.float64), 3).tolist()}（float32）"
    expected = (36 * c ** 2 * x64 ** 3).astype(np.float32)
    fprime = (3 * c * x64 ** 2).astype(np.float32)
    _check_penalty(ex, lambda v: c * v ** 3, x, fprime, expected, inputs, 1e-4, 1e-4, True)


def test_ex7_3_sin_and_tanh(exercise, rng):
    ex = exercise("7-3", "gradient_penalty")
    x = rng.uniform(-3, 3, size=(2, 2))
    inputs = "f = F.sin, x は shape (2, 2) の float64 の乱数"
    _check_penalty(ex, F.sin, x, np.cos(x), -np.sin(2 * x), inputs, 1e-9, 1e-12, True)

    x = rng.uniform(-2, 2, size=5).astype(np.float32)
    t = np.tanh(x.astype(np.float64))
    s = 1 - t ** 2
    inputs = f"f = F.tanh, x = {np.round(x.astype(np.float64), 3).tolist()}（float32）"
    _check_penalty(ex, F.tanh, x, s.astype(np.float32), (-4 * t * s ** 2).astype(np.float32), inputs,
                   1e-4, 1e-5, True)


# --- 7-4 -----------------------------------------------------------------------------------

def _partial_exp(x, n):
    x = np.asarray(x, dtype=np.float64)
    return sum(x ** k / math.factorial(k) for k in range(n)) if n > 0 else np.zeros_like(x)


def _check_taylor(ex, x_data, n, rtol, atol):
    dtype = x_data.dtype
    inputs = f"x = Variable(shape {x_data.shape} の {dtype} の乱数), n_terms = {n}"
    x = Variable(x_data.copy())
    y = ex(x, n)
    if not isinstance(y, Variable):
        ex.fail("Variable を返してください。", inputs=inputs, expected="Variable", actual=y,
                hint="np.exp や x.data を使わずに、Variable の演算子（+ * / **）だけで計算します。")
    expected = _partial_exp(x_data, n).astype(dtype)
    hint = pick_hint(y.data, {
        f"{n + 1} 項の和が返ってきました。最初の n_terms 項（k = 0 から n_terms - 1 まで）を足します。": _partial_exp(x_data, n + 1),
        f"{n - 1} 項の和が返ってきました。k = 0 の項 1 を忘れていませんか。": _partial_exp(x_data, n - 1),
        "np.exp(x) の値そのものが返ってきました。テイラー展開の項を足します。": np.exp(x_data.astype(np.float64)),
    }, "1 + x + x^2/2! + ... + x^(n-1)/(n-1)! を足します。")
    ex.check_close(y.data, expected, rtol=rtol, atol=atol, inputs=inputs, hint=hint)
    ex.check_close(y.data, expected, rtol=rtol, atol=atol, check_dtype=True, inputs=inputs,
                   hint="float32 の x には float32 を返します。Python の数値を掛けるのは大丈夫ですが、np.float64 の値を混ぜないように。")

    _seed(y)
    _run(ex, "返した Variable の逆伝播でエラーになりました。", y.backward)
    expected_grad = _partial_exp(x_data, n - 1).astype(dtype)
    inputs += "。比べたのは、返した Variable を逆伝播（出発点の勾配はすべて 1）した x.grad"
    if x.grad is None:
        if np.all(expected_grad == 0):
            return
        ex.fail("逆伝播しても x.grad が None のままです。", inputs=inputs, expected=expected_grad, actual=None,
                hint="x.data（配列）で計算すると、x とのつながりが計算グラフに残りません。Variable の x をそのまま使います。")
    ex.check_close(x.grad.data, expected_grad, rtol=rtol, atol=atol, inputs=inputs,
                   hint="近似の微分は、1 つ少ない項の和 1 + x + ... + x^(n-2)/(n-2)! になるはずです。"
                        "途中で x.data を使うと、その部分の勾配が流れません。")
    ex.check_close(x.grad.data, expected_grad, rtol=rtol, atol=atol, check_dtype=True, inputs=inputs,
                   hint="勾配も float32 のままにします。")


def test_ex7_4_value_and_gradient_float32(exercise, rng):
    ex = exercise("7-4", "taylor_exp")
    for n in rng.choice(np.arange(2, 10), size=3, replace=False):
        x = rng.uniform(-2, 2, size=int(rng.integers(2, 6))).astype(np.float32)
        _check_taylor(ex, x, int(n), 1e-5, 1e-6)


def test_ex7_4_one_term_and_many_terms_float64(exercise, rng):
    ex = exercise("7-4", "taylor_exp")
    _check_taylor(ex, rng.uniform(-1, 1, size=(2, 2)), 1, 1e-12, 1e-12)
    _check_taylor(ex, rng.uniform(-1, 1, size=(2, 3)), 15, 1e-12, 1e-12)


# --- 7-5 -----------------------------------------------------------------------------------

def _reference_count(y):
    seen, stack = set(), [y.creator] if y.creator is not None else []
    while stack:
        f = stack.pop()
        if f not in seen:
            seen.add(f)
            stack += [x.creator for x in f.inputs if x.creator is not None]
    return len(seen)


def _reference_variable_count(y):
    seen, stack = {id(y)}, [y.creator] if y.creator is not None else []
    done = set()
    while stack:
        f = stack.pop()
        if f in done:
            continue
        done.add(f)
        for x in f.inputs:
            seen.add(id(x))
            if x.creator is not None:
                stack.append(x.creator)
    return len(seen)


def _check_count(ex, y, inputs, extra_hint="同じ関数は 1 回だけ数えます（たどった関数を集合に覚えておきます）。"):
    got = _run(ex, "長いグラフでは、再帰の深さの上限（RecursionError）に気をつけて、ループで書きます。", ex.obj, y)
    expected = _reference_count(y)
    hint = extra_hint
    if got == _reference_variable_count(y):
        hint = "変数の数になっていませんか。数えるのは関数（Function、変数の creator）です。"
    elif isinstance(got, int) and got > expected:
        hint = "同じ関数を何度も数えていませんか。1 つの変数を何度も使うと、同じ関数に何度も行き着きます。たどった関数を集合に覚えておきます。"
    elif isinstance(got, int) and got < expected:
        hint = "たどり切れていない関数があります。関数の入力すべて（f.inputs）の creator をたどります。"
    ex.check_equal(got, expected, inputs=inputs, hint=hint)


def test_ex7_5_shared_subexpressions(exercise, rng):
    ex = exercise("7-5", "count_functions")
    k = int(rng.integers(4, 8))
    x = Variable(np.array(0.3))
    a = x
    for _ in range(k):
        a = a * a + a  # a を 3 回使う
    _check_count(ex, a, f"a = x から a = a * a + a を {k} 回繰り返した a")
    _check_count(ex, x, "入力の変数 x そのもの（関数は 0 個）")


def test_ex7_5_gradient_graphs_of_tanh(exercise, rng):
    ex = exercise("7-5", "count_functions")
    x = Variable(np.array(rng.uniform(-1, 1)))
    y = F.tanh(x)
    for n in range(1, 5):
        x.cleargrad()
        y.backward(create_graph=True)
        y = x.grad
        _check_count(ex, y, f"tanh の {n} 階微分（create_graph=True で求めた x.grad）")


def test_ex7_5_random_graph(exercise, rng):
    ex = exercise("7-5", "count_functions")
    pool = [Variable(np.array(rng.uniform(0.5, 1.5))) for _ in range(3)]
    for _ in range(int(rng.integers(20, 40))):
        a, b = (pool[int(i)] for i in rng.integers(0, len(pool), size=2))
        op = int(rng.integers(0, 4))
        pool.append([a + b, a * b, a - b, F.sin(a)][op])
    _check_count(ex, pool[-1], "ランダムに +, *, -, sin を組み合わせた、変数を共有するグラフ")


def test_ex7_5_long_chain(exercise, rng):
    ex = exercise("7-5", "count_functions")
    n = int(rng.integers(2500, 3500))
    x = Variable(np.array(1.0))
    h = x
    for _ in range(n):
        h = h + 1
    _check_count(ex, h, f"x に 1 を {n} 回足した長い鎖",
                 extra_hint="長いグラフでも動くように、再帰ではなくループ（スタック）でたどります。")
