"""第19章の隠しテスト（相対誤差の比較・Swish の逆伝播・あふれない log-softmax・異常検出で関数を名指し・再現できる学習）。

よくある間違い（絶対誤差で比べる、分母に片方だけを使う、位置を平らな番号で返す、gy の掛け忘れ、シグモイドの微分だけを返す、
(1 - σ) の掛け忘れ、最大値を引かない、引いた最大値を戻し忘れる・二重に引く、軸を指定しない、順伝播と逆伝播の取り違え、
種を渡し忘れる層がある）は、テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import numpy as np

import mini_dl.functions as F
from grader import pick_hint
from mini_dl import Function, Variable, cuda, gradient_check

# --- 練習 19-1: 最も外れた要素を報告する相対誤差 ------------------------------------------------------


def _rel(a, b, delta=1e-12):
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), delta)


def test_ex19_1_max_relative_error(exercise, rng):
    ex = exercise("19-1", "max_relative_error")
    for trial in range(8):
        shape = tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(1, 4))))
        scale = 10.0 ** rng.integers(-6, 4, size=shape)  # 大きさのちがう要素: 絶対誤差では最も外れた要素が変わる
        a = rng.standard_normal(shape) * scale
        b = a * (1 + rng.uniform(-1e-3, 1e-3, size=shape))
        if trial % 2 == 0:
            b.flat[int(rng.integers(a.size))] *= -1  # 符号の違う要素を 1 つ
        rel = _rel(a, b)
        idx = np.unravel_index(np.argmax(rel), shape)
        expected = (float(rel[idx]), tuple(int(i) for i in idx))
        inputs = f"a, b: shape {shape} の配列（大きさが 1e-6〜1e3 の要素が混ざる）"
        got = ex(a.copy(), b.copy())
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(最大の相対誤差, 位置) の 2 つの組を返してください。", inputs=inputs, expected=expected, actual=got)
        value, where = got
        if np.ndim(where) == 0 or isinstance(where, (int, np.integer)):
            ex.fail("位置は int のタプルで返します（平らな番号ではありません）。", inputs=inputs, expected=expected,
                    actual=got, hint="np.unravel_index(np.argmax(rel), rel.shape) で、多次元の位置のタプルになります。")
        absolute = np.abs(a - b)
        one_sided = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
        wrong = {
            "絶対誤差 |a - b| ではなく、max(|a|, |b|, delta) で割った相対誤差を比べます。": absolute.max(),
            "分母は |a| だけでなく max(|a|, |b|, delta) です（符号が逆の要素で差が出ます）。": one_sided.max(),
        }
        if not np.isclose(float(value), expected[0], rtol=1e-9, atol=0):
            ex.fail("最大の相対誤差が違います。", inputs=inputs, expected=expected, actual=got,
                    hint=pick_hint(np.array(float(value)), {k: np.array(v) for k, v in wrong.items()},
                                   "rel = |a - b| / max(|a|, |b|, delta) の最大値です。", rtol=1e-9, atol=0))
        if tuple(int(i) for i in where) != expected[1]:
            abs_idx = np.unravel_index(np.argmax(absolute), shape)
            ex.fail("最も外れた要素の位置が違います。", inputs=inputs, expected=expected, actual=got,
                    hint="絶対誤差がいちばん大きい要素を選んでいませんか。相対誤差の最大の位置です。"
                    if tuple(int(i) for i in where) == tuple(int(i) for i in abs_idx) else
                    "np.argmax で相対誤差が最大の位置を選び、np.unravel_index で多次元の位置にします。")
        if not isinstance(value, float):
            ex.fail("最大の相対誤差は Python の float で返します。", inputs=inputs, expected=expected, actual=got,
                    hint="float(rel.max()) のように float() で変換します。")
    # 両方 0 の要素: 0 で割らない
    got = ex(np.zeros((2, 2)), np.zeros((2, 2)))
    if not (isinstance(got, tuple) and len(got) == 2 and np.isfinite(float(got[0])) and float(got[0]) == 0.0):
        ex.fail("a も b も 0 のとき、相対誤差は 0 です（0 で割って nan にしない）。", inputs="a = b = np.zeros((2, 2))",
                expected=(0.0, (0, 0)), actual=got, hint="分母に delta を入れて max(|a|, |b|, delta) にします。")
    ex.check_raises(ValueError, ex.obj, np.zeros(3), np.zeros(4), inputs="shape (3,) と (4,)",
                    hint="a.shape != b.shape なら raise ValueError(...) にします。")


# --- 練習 19-2: Swish の逆伝播 -----------------------------------------------------------------------


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_ex19_2_swish_backward(exercise, rng):
    ex = exercise("19-2", "Swish")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    for _ in range(3):
        shape = tuple(int(n) for n in rng.integers(1, 5, size=2))
        x = rng.uniform(-5, 5, size=shape)
        gy = rng.uniform(0.5, 2.0, size=shape)
        s = _sigmoid(x)
        expected = gy * (s + x * s * (1 - s))
        v = Variable(x.copy())
        with ex.context(inputs=f"x: shape {shape}、-5〜5 の乱数（float64）"):
            y = ex.run(cls(), v)
            y.grad = Variable(gy.copy())
            ex.run(y.backward)
        got = None if v.grad is None else cuda.as_numpy(v.grad.data)
        inputs = f"x: shape {shape}、-5〜5 の乱数、gy: 0.5〜2 の乱数"
        if got is None:
            ex.fail("x の勾配が求まりませんでした。", inputs=inputs, expected=expected, actual=None)
        wrong = {
            "出力側の勾配 gy を掛け忘れています。": s + x * s * (1 - s),
            "シグモイドの微分 σ(1 - σ) だけになっています。積の微分 (x σ)' = σ + x σ' です。": gy * s * (1 - s),
            "x σ (1 - σ) の (1 - σ) を掛け忘れています。": gy * (s + x * s),
            "σ(x) だけになっています。x σ(x) の微分には、x σ'(x) の項もあります。": gy * s,
        }
        ex.check_close(got, expected, rtol=1e-6, atol=1e-9, inputs=inputs,
                       hint=pick_hint(np.asarray(got), wrong, "dy/dx = σ(x) + x σ(x)(1 - σ(x)) に gy を掛けます。"))
    x = rng.uniform(-4, 4, size=(2, 3))
    with ex.context(inputs="x: shape (2, 3)、-4〜4 の乱数"):
        try:
            gradient_check(cls, x)
        except AssertionError as e:
            ex.fail("gradient_check に合格しません。", inputs="x: shape (2, 3)、-4〜4 の乱数", expected="合格",
                    actual=str(e).splitlines()[0])


# --- 練習 19-3: あふれない log-softmax -------------------------------------------------------------------


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_ex19_3_log_softmax(exercise, rng):
    ex = exercise("19-3", "log_softmax")
    cases = [(rng.standard_normal((3, 5)) * 2, np.float64), (rng.standard_normal(6) * 3, np.float32),
             (rng.uniform(-1e4, 1e4, size=(2, 3, 4)), np.float32), (rng.uniform(80, 200, size=(4, 3)), np.float32)]
    for x, dtype in cases:
        x = x.astype(dtype)
        expected = _log_softmax(x)
        inputs = f"x: shape {x.shape}、{dtype.__name__}、値の範囲 {x.min():.3g}〜{x.max():.3g}"
        with np.errstate(all="ignore"):
            got = ex(x.copy())
            xf = x.astype(np.float64)
            m = xf.max(axis=-1, keepdims=True)
            wrong = {
                "最大値を引かずに exp をとっているので、大きな値であふれます。x - m で計算し、最後に戻します。":
                    xf - np.log(np.exp(xf).sum(axis=-1, keepdims=True)),
                "最大値 m を引いた分を、log の項で戻していません。答えは (x - m) - log Σ exp(x - m) です。":
                    xf - np.log(np.exp(xf - m).sum(axis=-1, keepdims=True)),
                "最後の軸だけについて計算します。sum や max に axis=-1, keepdims=True を渡します。":
                    xf - xf.max() - np.log(np.exp(xf - xf.max()).sum()),
            }
        arr = np.asarray(got) if got is not None else None
        if arr is not None and arr.shape == x.shape and not np.all(np.isfinite(arr)):
            ex.fail("結果に inf か nan があります。", inputs=inputs, expected=expected, actual=got,
                    hint="x が大きいと exp(x) があふれます。最大値 m を引いた x - m で exp をとり、log の項の外で m を戻します。")
        ex.check_close(got, expected, rtol=1e-5, atol=1e-4 if dtype == np.float32 else 1e-9, inputs=inputs,
                       hint=pick_hint(arr, wrong, "log softmax(x)_i = x_i - m - log Σ_j exp(x_j - m) です。")
                       if arr is not None and arr.shape == x.shape else None)
        if arr.dtype != dtype:
            ex.fail(f"dtype が {arr.dtype} です。入力と同じ {np.dtype(dtype)} で返します。", inputs=inputs,
                    expected=np.dtype(dtype), actual=arr.dtype,
                    hint="np.float64 への変換や、float64 の定数との計算をしていませんか。")


# --- 練習 19-4: NaN や inf を作った関数を名指しする ------------------------------------------------------


class _BadDiv(Function):
    """逆伝播で 0 で割る、わざと壊した関数（順伝播は x * 1）。"""

    def forward(self, x):
        return x * 1

    def backward(self, gy):
        return gy / self.inputs[0]


def _cases(rng):
    n = int(rng.integers(2, 6))
    pos = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    with_zero = pos.copy()
    with_zero[int(rng.integers(n))] = 0
    big = pos * np.float32(rng.uniform(100, 200))
    return [
        ("log(x)、x に 0 がある", lambda v: F.log(v), with_zero, ("Log", "順伝播")),
        ("sum(x ** 2) ** 0.5、x はすべて 0", lambda v: F.sum(v ** 2) ** 0.5, np.zeros(n, np.float32), ("Pow", "逆伝播")),
        ("exp(x)、x は 100 より大きい", lambda v: F.tanh(F.exp(v)), big, ("Exp", "順伝播")),
        ("tanh(x) * 2、x は有限", lambda v: F.tanh(v) * 2, pos, None),
        ("わざと壊した _BadDiv、x に 0 がある", lambda v: F.exp(_BadDiv()(v)), with_zero, ("_BadDiv", "逆伝播")),
        ("sin(x) / x、x に 0 がある", lambda v: F.sin(v) / v, with_zero, ("Div", "順伝播")),
    ]


def test_ex19_4_first_bad_op(exercise, rng):
    ex = exercise("19-4", "first_bad_op")
    cases = _cases(rng)
    order = rng.permutation(len(cases))
    for i in order:
        what, fn, x, expected = cases[i]
        inputs = f"fn: {what}、x = {np.round(x, 3)}"
        got = ex.run(ex.obj, fn, x.copy())
        if expected is None:
            if got is not None:
                ex.fail("順伝播も逆伝播も有限なので、None を返します。", inputs=inputs, expected=None, actual=got,
                        hint="FloatingPointError が出なかったときは、最後に return None にします。")
            continue
        if isinstance(got, list):
            got = tuple(got)
        if got == expected:
            continue
        hint = "FloatingPointError のメッセージの 1 行目の「クラス名 の順伝播」「クラス名 の逆伝播」から取り出します。"
        if got is None:
            hint = ("with detect_anomaly(): の中で、fn の計算と F.sum(y).backward() の両方をしましたか。"
                    "逆伝播の異常は backward() で見つかります。")
        elif isinstance(got, tuple) and len(got) == 2 and got[0] == expected[0]:
            hint = "関数の名前は合っています。順伝播と逆伝播が逆です（メッセージの「の順伝播」「の逆伝播」を見ます）。"
        elif isinstance(got, tuple) and len(got) == 2 and "NaN" in str(got[0]):
            hint = "クラス名だけを返します。1 行目を \" の\" で分けた最初の部分です。"
        ex.fail("答えが違います。", inputs=inputs, expected=expected, actual=got, hint=hint)


# --- 練習 19-5: 再現できる学習 ----------------------------------------------------------------------------


def test_ex19_5_train_reproducibly(exercise, rng):
    ex = exercise("19-5", "train_reproducibly")
    seed = int(rng.integers(0, 1000))
    w1 = ex(seed)
    np.random.seed(int(rng.integers(0, 2 ** 31)))  # グローバルな乱数を動かす
    np.random.standard_normal(100)
    w2 = ex(seed)
    inputs = f"train_reproducibly({seed}) を 2 回"
    w1a, w2a = np.asarray(w1), np.asarray(w2)
    if w1a.shape != (64 * 32 + 32 + 32 * 10 + 10,):
        ex.fail("すべての重みを 1 列に並べた配列を返します（64×32 + 32 + 32×10 + 10 = 2410 個）。", inputs=inputs,
                expected="shape (2410,)", actual=f"shape {w1a.shape}")
    if w1a.dtype != np.float32:
        ex.fail("float32 の配列を返します。", inputs=inputs, expected="float32", actual=w1a.dtype)
    if not np.array_equal(w1a, w2a):
        k = int(np.argmax(w1a != w2a))  # 最初に食い違う重み
        ex.fail(f"同じ seed で 2 回学習した重みが、ビット単位で一致しません（{k} 番目から食い違います）。", inputs=inputs,
                expected=w1a[k:k + 4], actual=w2a[k:k + 4],
                hint="L.Linear(..., seed=...) の 2 つ、L.Dropout(..., seed=...)、DataLoader(..., seed=...) の"
                "すべてに seed から作った種を渡しましたか。np.random.seed には頼りません。")
    w3 = np.asarray(ex(seed + 1))
    if np.array_equal(w1a, w3):
        ex.fail("ちがう seed でも同じ重みになりました。", inputs=f"train_reproducibly({seed}) と ({seed + 1})",
                expected="ちがう重み", actual="同じ重み", hint="決まった数（0 など）ではなく、引数の seed を使います。")
