"""第8章の隠しテスト（テンソルの形を扱う演算）。

第8章の定義はすべて mini_dl パッケージに入っているので、練習のノートブックもテストもパッケージの
Variable・Function・関数（F.sum、F.reshape など）と gradient_check を使います。
よくある間違い（バッチの軸を消す、全要素数で割る、a[idx] += v で足し込む、最大値を引き忘れる）は、
テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import numpy as np

from grader import ExerciseFailure, pick_hint
from mini_dl import Function, Variable, gradient_check

F32_HINT = ("float32 の入力には float32 を返します。np.float64(...) や np.prod(...)・np.int64 のような NumPy の値を"
            "割る数に使うと、NumPy 2 の規則で float64 に昇格します。int(...) で Python の数にしましょう。")


def _head(a):
    return np.round(np.ravel(np.asarray(a, dtype=np.float64))[:3], 3).tolist()


def _random_shape(rng, min_ndim, max_ndim, low=1, high=5):
    return tuple(int(n) for n in rng.integers(low, high, size=rng.integers(min_ndim, max_ndim + 1)))


def _reraise(exc):
    raise exc


def _describe(a):
    """配列を 1 行で短く表します（採点結果の表示が長くなりすぎないように）。"""
    a = np.asarray(a)
    head = np.round(a.astype(np.float64).ravel()[:4], 4).tolist()
    return f"shape {a.shape}、dtype {a.dtype}、先頭の値 {head}{' …' if a.size > 4 else ''}"


def _check_close(ex, actual, expected, *, rtol=1e-5, atol=1e-6, inputs=None, hint=None, check_dtype=False):
    """``ex.check_close`` と同じ判定を、短い表示で行います（最も外れた要素の位置と値を示します）。"""
    expected = np.asarray(expected)
    try:
        got = np.asarray(actual)
        numeric = np.issubdtype(got.dtype, np.number)
    except Exception:
        numeric = False
    if not numeric:
        ex.fail("数値の配列を返してください。", inputs=inputs, expected=_describe(expected), actual=actual, hint=hint)
    if not check_dtype and got.dtype == np.float32 and expected.dtype == np.float64:
        expected = expected.astype(np.float32)  # float32 の答えには、期待値も float32 で見せて比べます
    if got.shape != expected.shape:
        ex.fail(f"shape が違います（期待 {expected.shape}、実際 {got.shape}）。", inputs=inputs,
                expected=_describe(expected), actual=_describe(got), hint=hint)
    if check_dtype and got.dtype != expected.dtype:
        ex.fail(f"dtype が違います（期待 {expected.dtype}、実際 {got.dtype}）。", inputs=inputs,
                expected=_describe(expected), actual=_describe(got), hint=hint)
    if not np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        idx = np.unravel_index(int(np.argmax(np.where(np.isfinite(diff), diff, np.inf))), got.shape)
        idx = tuple(int(i) for i in idx)
        ex.fail(f"値が違います（いちばん外れた要素 {idx}: 期待 {float(expected[idx]):.6g}、実際 {float(got[idx]):.6g}。"
                f"許容 rtol={rtol:g}, atol={atol:g}）。", inputs=inputs,
                expected=_describe(expected), actual=_describe(got), hint=hint)


def _run(ex, hint, func, *args, **kwargs):
    """``ex.run`` と同じですが、例外が起きたときにヒントを書き足します。"""
    try:
        return ex.run(func, *args, **kwargs)
    except ExerciseFailure as e:
        if "NotImplementedError" in str(e) or hint is None:
            raise
        raise ExerciseFailure(f"{e}\n  ヒント:     {hint}") from None


def _variable(ex, value, inputs, what):
    if not isinstance(value, Variable):
        ex.fail(f"{what} は Variable で返してください。", inputs=inputs, expected="Variable", actual=value,
                hint="Function を呼ぶと Variable が返ります。F.sum や演算子（+ - * /）で計算すれば、結果も Variable です。")
    return value


def _backward(ex, y, gy, inputs, shape_hint):
    """y.grad = gy から逆伝播します。勾配の shape の食い違いは、ヒントを添えて不合格にします。"""
    y.grad = Variable(gy)
    try:
        y.backward()
    except Exception as e:
        if isinstance(e, ValueError) and "shape" in str(e):
            ex.fail("逆伝播した勾配の shape が入力の shape と違います。", inputs=inputs,
                    expected="入力と同じ shape の勾配", actual=str(e), hint=shape_hint)
        ex.run(_reraise, e)


def _grad_of(ex, x, inputs):
    if x.grad is None:
        ex.fail("x.grad が None のままです（勾配が流れていません）。", inputs=inputs, expected="勾配", actual=None,
                hint=".data を取り出して NumPy で計算すると、計算グラフが途切れて勾配が流れません。"
                     "Variable の関数（F.sum、F.exp など）と演算子だけで書きます。")
    return x.grad


def _check_gradient(ex, f, *arrays, inputs, hint):
    """mini_dl の gradient_check に通るか。通らなければ、そのメッセージを添えて不合格にします。"""
    try:
        gradient_check(f, *arrays)
    except AssertionError as e:
        if not str(e).startswith("gradient_check:"):
            ex.run(_reraise, e)
        ex.fail("gradient_check に通りません（逆伝播が数値微分と合いません）。\n  " + str(e).replace("\n", "\n  "),
                inputs=inputs, hint=hint, show_values=False)
    except Exception as e:  # NotImplementedError やその他の例外も、読者向けの説明にします（ヒントも添えて）
        _run(ex, hint, _reraise, e)


# ---------------------------------------------------------------- 練習 8-1: Flatten

FLATTEN_SHAPE_HINT = ("バッチの軸（最初の軸）は残して、残りの軸だけを 1 つにまとめます: x.reshape(x.shape[0], -1)。"
                      "x.reshape(-1) だとバッチの軸まで消えて 1 次元になります。")
FLATTEN_BACK_HINT = "backward では、gy を入力の shape（self.inputs[0].shape）に reshape して返します。"


def test_ex8_1_flatten_forward_and_backward(exercise, rng):
    ex = exercise("8-1", "flatten")
    exercise("8-1", "Flatten").check_subclass(Function, "mini_dl の Function")
    shapes = [_random_shape(rng, 3, 4, 2, 5), (int(rng.integers(2, 6)),), (1,) + _random_shape(rng, 2, 2, 2, 4),
              _random_shape(rng, 2, 2, 2, 6)]
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        n = shape[0]
        expected = x.reshape(n, -1)
        inputs = f"flatten(Variable(x))、x は shape {shape} の float32"
        xv = Variable(x.copy())
        y = _variable(ex, ex(xv), inputs, "flatten(x)")
        _check_close(ex, y.data, expected, inputs=inputs, hint=FLATTEN_SHAPE_HINT)
        _check_close(ex, y.data, expected, check_dtype=True, inputs=inputs, hint="forward は reshape だけで、dtype は変わりません。")
        gy = rng.standard_normal(expected.shape).astype(np.float32)
        _backward(ex, y, gy, inputs, FLATTEN_BACK_HINT)
        g = _grad_of(ex, xv, inputs)
        _check_close(ex, g.data, gy.reshape(shape), check_dtype=True, inputs=f"{inputs}、x.grad を確認",
                       hint=FLATTEN_BACK_HINT)


def test_ex8_1_flatten_gradient_check(exercise, rng):
    ex = exercise("8-1", "flatten")
    shape = _random_shape(rng, 3, 4, 2, 4)
    x = rng.standard_normal(shape)
    _check_gradient(ex, lambda v: ex.obj(v) ** 2, x, inputs=f"gradient_check(lambda x: flatten(x) ** 2, x)、x の shape {shape}",
                    hint=FLATTEN_BACK_HINT)


def _check_second_order(ex, make, x, inputs, hint):
    """``y = sum(make(x) ** 3)`` の 2 階微分を create_graph=True で求め、backward が Variable で
    計算していること（配列を返すと計算グラフが途切れて 2 階微分が求まらないこと）を確かめます。"""
    import mini_dl.functions as F
    xv = Variable(x.copy())
    with ex.context(inputs=inputs, hint=hint):
        y = F.sum(ex.run(make, xv) ** 3)
        ex.run(y.backward, create_graph=True)
    gx = _grad_of(ex, xv, inputs)
    if not isinstance(gx, Variable) or gx.creator is None:
        ex.fail("create_graph=True で逆伝播しても、勾配に計算グラフが付いていません（2 階微分が求まりません）。",
                inputs=inputs, show_values=False, hint=hint)
    xv.cleargrad()
    with ex.context(inputs=inputs, hint=hint):
        ex.run(F.sum(gx).backward)
    if xv.grad is None:
        ex.fail("2 階微分が求まりません（勾配の計算グラフが x まで届いていません）。", inputs=inputs,
                show_values=False, hint=hint)
    _check_close(ex, xv.grad.data, 6 * x, rtol=1e-7, atol=1e-9, inputs=f"{inputs}、2 階微分 d/dx Σ(3 x^2) = 6x を確認",
                 hint=hint)


def _check_backward_returns_variable(ex, cls_args, x, inputs, hint):
    """backward を Variable の gy で直接呼び、Variable が返ること（配列でないこと）を確かめます。"""
    cls, args = cls_args
    f = ex.run(cls, *args)
    y = ex.run(f, Variable(x.copy()))
    gy = Variable(np.ones(np.asarray(y.data).shape, dtype=x.dtype))
    with ex.context(inputs=inputs, hint=hint):
        gx = ex.run(f.backward, gy)
    if isinstance(gx, (list, tuple)) and len(gx) == 1:
        gx = gx[0]
    if not isinstance(gx, Variable):
        ex.fail(f"backward は Variable を返してください（{type(gx).__name__} が返りました）。", inputs=inputs,
                expected="Variable", actual=_describe(gx) if isinstance(gx, np.ndarray) else gx, hint=hint)


BACKWARD_VARIABLE_HINT = ("backward の gy は Variable です。gy.data を取り出して NumPy で計算すると、勾配の計算グラフが"
                          "途切れ、create_graph=True の 2 階微分が求まりません。F.reshape や自分の Function など、"
                          "Variable の演算で計算して Variable を返します。")


def test_ex8_1_flatten_backward_is_differentiable(exercise, rng):
    ex = exercise("8-1", "flatten")
    cls = exercise("8-1", "Flatten").check_subclass(Function, "mini_dl の Function")
    shape = _random_shape(rng, 2, 4, 2, 4)
    x = rng.standard_normal(shape)
    inputs = f"flatten(Variable(x))、x は shape {shape} の float64"
    _check_backward_returns_variable(ex, (cls, ()), x, inputs + "、Flatten().backward(Variable(gy)) を直接呼びました",
                                     BACKWARD_VARIABLE_HINT)
    _check_second_order(ex, ex.obj, x, f"y = sum(flatten(x) ** 3) の 2 階微分、x は shape {shape}",
                        BACKWARD_VARIABLE_HINT)


# ---------------------------------------------------------------- 練習 8-2: mean

MEAN_N_HINT = ("割る数は「足し合わせた要素の数」です。axis=None なら x.size ですが、axis を指定したときは、"
               "足した軸の長さの積（x.size // y.size）です。")


def _mean_cases(rng):
    cases = [((), None, False)]
    for _ in range(6):
        shape = _random_shape(rng, 1, 4, 2, 5)
        nd = len(shape)
        kind = rng.integers(0, 4)
        if kind == 0:
            axis = None
        elif kind == 1:
            axis = int(rng.integers(-nd, nd))
        elif kind == 2:
            axis = -1
        else:
            axis = tuple(int(a) for a in rng.choice(nd, size=min(2, nd), replace=False)) if nd >= 2 else 0
        cases.append((shape, axis, bool(rng.integers(0, 2))))
    shape = _random_shape(rng, 3, 3, 2, 5)
    cases.append((shape, (0, -1), False))  # 負の軸を含むタプル
    cases.append((shape, 1, True))
    return cases


def test_ex8_2_mean_values_and_dtype(exercise, rng):
    ex = exercise("8-2", "mean")
    for shape, axis, keepdims in _mean_cases(rng):
        x = rng.standard_normal(shape).astype(np.float32)
        inputs = f"mean(Variable(x), axis={axis}, keepdims={keepdims})、x は shape {shape} の float32（先頭: {_head(x)}）"
        hint_exc = "axis は None・整数（負の数も）・整数のタプルのどれかです。F.sum(x, axis, keepdims) はどれも受け取れます。"
        y = _variable(ex, _run(ex, hint_exc, ex.obj, Variable(x.copy()), axis=axis, keepdims=keepdims), inputs,
                      "mean(x)")
        expected = np.mean(x.astype(np.float64), axis=axis, keepdims=keepdims)
        s = np.sum(x.astype(np.float64), axis=axis, keepdims=keepdims)
        candidates = {
            "全要素数 x.size で割っていませんか。" + MEAN_N_HINT: s / x.size,
            "和のままで、割り算を忘れていませんか。": s,
        }
        hint = pick_hint(y.data, candidates, MEAN_N_HINT)
        if np.asarray(y.data).shape != expected.shape:
            hint = "keepdims=True なら足した軸を長さ 1 で残し、False なら消します。F.sum(x, axis=axis, keepdims=keepdims) に渡しましょう。"
        _check_close(ex, y.data, expected, rtol=1e-5, atol=1e-6, inputs=inputs, hint=hint)
        _check_close(ex, y.data, expected.astype(np.float32), rtol=1e-5, atol=1e-6, check_dtype=True, inputs=inputs,
                       hint=F32_HINT)


def test_ex8_2_mean_gradient(exercise, rng):
    ex = exercise("8-2", "mean")
    for shape, axis, keepdims in _mean_cases(rng)[1:5]:
        x = rng.standard_normal(shape).astype(np.float32)
        inputs = f"mean(Variable(x), axis={axis}, keepdims={keepdims})、x は shape {shape} の float32"
        xv = Variable(x.copy())
        y = _variable(ex, ex(xv, axis=axis, keepdims=keepdims), inputs, "mean(x)")
        gy = rng.uniform(0.5, 1.5, size=np.asarray(y.data).shape).astype(np.float32)
        _backward(ex, y, gy, inputs, "F.sum と割り算（Variable の演算）だけで書けば、勾配の shape は自動で合います。")
        n = x.size // max(1, np.asarray(y.data).size)
        kd_shape = np.sum(x, axis=axis, keepdims=True).shape
        expected = np.broadcast_to(gy.reshape(kd_shape), shape) / n
        g = _grad_of(ex, xv, inputs)
        _check_close(ex, g.data, expected, rtol=1e-5, atol=1e-7, inputs=f"{inputs}、x.grad を確認",
                       hint=f"平均の勾配は、どの要素も gy / n（ここでは n = {n}）です。" + MEAN_N_HINT)
        _check_close(ex, g.data, expected.astype(np.float32), rtol=1e-5, atol=1e-7, check_dtype=True,
                       inputs=f"{inputs}、x.grad を確認", hint=F32_HINT)
    shape = _random_shape(rng, 3, 3, 2, 4)
    axis = (0, 2)
    _check_gradient(ex, lambda v: ex.obj(v, axis=axis) ** 2, rng.standard_normal(shape),
                    inputs=f"gradient_check(lambda x: mean(x, axis={axis}) ** 2, x)、x の shape {shape}", hint=MEAN_N_HINT)


# ---------------------------------------------------------------- 練習 8-3: Swapaxes

SWAP_BACK_HINT = ("2 つの軸の入れ替えは、もう一度同じ 2 つの軸を入れ替えると元に戻ります。backward は gy の axis1 と axis2 を"
                  "入れ替えて返します（transpose(gy) のように軸をすべて逆にするのとは違います）。")


def _swap_cases(rng):
    cases = [((2, 3, 4, 5), 0, 1), ((2, 3, 4, 5), 1, -1)]
    for _ in range(3):
        shape = _random_shape(rng, 2, 4, 2, 5)
        nd = len(shape)
        a1, a2 = (int(a) for a in rng.integers(-nd, nd, size=2))
        cases.append((shape, a1, a2))
    return cases


def test_ex8_3_swapaxes_forward_and_backward(exercise, rng):
    ex = exercise("8-3", "Swapaxes")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    for shape, a1, a2 in _swap_cases(rng):
        x = rng.standard_normal(shape).astype(np.float32)
        inputs = f"Swapaxes({a1}, {a2})(Variable(x))、x は shape {shape} の float32"
        f = ex.run(cls, a1, a2)
        xv = Variable(x.copy())
        y = _variable(ex, ex.run(f, xv), inputs, "Swapaxes(...)(x)")
        expected = np.swapaxes(x, a1, a2)
        _check_close(ex, y.data, expected, check_dtype=True, inputs=inputs,
                       hint="forward は xp.swapaxes(x, self.axis1, self.axis2) を返します。")
        gy = rng.standard_normal(expected.shape).astype(np.float32)
        _backward(ex, y, gy, inputs, SWAP_BACK_HINT)
        g = _grad_of(ex, xv, inputs)
        _check_close(ex, g.data, np.swapaxes(gy, a1, a2), check_dtype=True, inputs=f"{inputs}、x.grad を確認",
                       hint=SWAP_BACK_HINT)


def test_ex8_3_swapaxes_gradient_check_and_function(exercise, rng):
    ex = exercise("8-3", "swapaxes")
    cls = exercise("8-3", "Swapaxes").check_subclass(Function, "mini_dl の Function")
    shape, a1, a2 = (2, 3, 4), 0, -2
    x = rng.standard_normal(shape)
    _check_gradient(ex, lambda v: cls(a1, a2)(v) ** 3, x,
                    inputs=f"gradient_check(lambda x: Swapaxes({a1}, {a2})(x) ** 3, x)、x の shape {shape}",
                    hint=SWAP_BACK_HINT)
    x32 = rng.standard_normal((3, 2)).astype(np.float32)
    inputs = "swapaxes(Variable(x), 0, 1)、x は shape (3, 2) の float32"
    y = _variable(ex, ex(Variable(x32), 0, 1), inputs, "swapaxes(x, 0, 1)")
    _check_close(ex, y.data, x32.T, check_dtype=True, inputs=inputs, hint="swapaxes は Swapaxes(axis1, axis2)(x) を返します。")


def test_ex8_3_swapaxes_backward_is_differentiable(exercise, rng):
    ex = exercise("8-3", "Swapaxes")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    shape, a1, a2 = (2, 3, 4), 0, -1
    x = rng.standard_normal(shape)
    hint = BACKWARD_VARIABLE_HINT.replace("F.reshape", "Swapaxes(self.axis1, self.axis2)(gy)")
    _check_backward_returns_variable(ex, (cls, (a1, a2)), x,
                                     f"Swapaxes({a1}, {a2})、x は shape {shape}、backward(Variable(gy)) を直接呼びました", hint)
    _check_second_order(ex, lambda v: cls(a1, a2)(v), x,
                        f"y = sum(Swapaxes({a1}, {a2})(x) ** 3) の 2 階微分、x は shape {shape}", hint)


# ---------------------------------------------------------------- 練習 8-4: EmbedID

EMBED_ADD_HINT = ("同じ番号が何回も出てくると、gW[ids] += gy は 1 回分しか足しません（本文 8.6 節）。"
                  "xp.add.at(gW, ids, gy)（CPU なら np.add.at）で足し込みます。")


def _ids_with_repeats(rng, vocab, shape):
    ids = rng.integers(0, vocab, size=shape)
    flat = ids.reshape(-1)
    flat[-1] = flat[0]  # 必ず同じ番号を 2 回以上含める
    if flat.size > 2:
        flat[1] = flat[0]
    return ids


def test_ex8_4_embed_forward_and_repeated_ids(exercise, rng):
    ex = exercise("8-4", "EmbedID")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    for ids_shape in [(int(rng.integers(4, 8)),), (int(rng.integers(2, 4)), int(rng.integers(3, 5)))]:
        vocab, dim = int(rng.integers(3, 7)), int(rng.integers(2, 5))
        W = rng.standard_normal((vocab, dim)).astype(np.float32)
        ids = _ids_with_repeats(rng, vocab, ids_shape)
        inputs = f"EmbedID(ids)(Variable(W))、W は shape {(vocab, dim)} の float32、ids={ids.tolist()}"
        f = ex.run(cls, ids)
        Wv = Variable(W.copy())
        y = _variable(ex, ex.run(f, Wv), inputs, "EmbedID(ids)(W)")
        _check_close(ex, y.data, W[ids], check_dtype=True, inputs=inputs,
                       hint="forward は W[self.ids] です（shape は ids.shape + (D,)）。")
        gy = rng.standard_normal(ids_shape + (dim,)).astype(np.float32)
        _backward(ex, y, gy, inputs, "backward は W と同じ shape (V, D) の 0 の配列に、gy の行を足し込んで返します。")
        expected = np.zeros_like(W)
        np.add.at(expected, ids, gy)
        wrong = np.zeros_like(W)
        wrong[ids] += gy
        g = _grad_of(ex, Wv, inputs)
        hint = pick_hint(g.data, {EMBED_ADD_HINT: wrong}, "使われた行にだけ、その回数分の gy の行が足されます。"
                          "使われなかった行の勾配は 0 です。")
        _check_close(ex, g.data, expected, rtol=1e-5, atol=1e-6, inputs=f"{inputs}、W.grad を確認", hint=hint)
        _check_close(ex, g.data, expected, rtol=1e-5, atol=1e-6, check_dtype=True, inputs=f"{inputs}、W.grad を確認",
                       hint="勾配の配列は gy.dtype（float32）で作ります: np.zeros(W.shape, dtype=gy.dtype)。")


def test_ex8_4_embed_does_not_delegate_to_the_library(exercise, rng):
    import mini_dl.functions.tensor as T
    ex = exercise("8-4", "EmbedID")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    vocab, dim = 4, 3
    W = rng.standard_normal((vocab, dim)).astype(np.float32)
    ids = _ids_with_repeats(rng, vocab, (5,))
    inputs = f"EmbedID(ids)(Variable(W))、W は shape {(vocab, dim)} の float32、ids={ids.tolist()}"
    with ex.spy(T.GetItem, "forward") as get, ex.spy(T.GetItemGrad, "forward") as grad:
        Wv = Variable(W.copy())
        with ex.context(inputs=inputs):
            y = _variable(ex, ex.run(ex.run(cls, ids), Wv), inputs, "EmbedID(ids)(W)")
            y.grad = Variable(np.ones(np.asarray(y.data).shape, dtype=np.float32))
            ex.run(y.backward)
    if get or grad:
        used = "F.get_item（添字 W[...] を含む）" if get else "ライブラリの GetItemGrad"
        ex.fail(f"{used} に計算を任せています。この練習では、勾配を足し込む処理を自分で書きます。", inputs=inputs,
                show_values=False,
                hint="forward は配列の W[self.ids]、backward は xp.zeros(W.shape, dtype=gy.dtype) の配列に "
                     "xp.add.at(gW, self.ids, gy.data) で足し込み、Variable にして返します。")


def test_ex8_4_embed_gradient_check(exercise, rng):
    ex = exercise("8-4", "EmbedID")
    cls = ex.check_subclass(Function, "mini_dl の Function")
    vocab, dim = int(rng.integers(3, 6)), int(rng.integers(2, 4))
    ids = _ids_with_repeats(rng, vocab, (6,))
    _check_gradient(ex, lambda W: cls(ids)(W) ** 2, rng.standard_normal((vocab, dim)),
                    inputs=f"gradient_check(lambda W: EmbedID(ids)(W) ** 2, W)、W の shape {(vocab, dim)}、ids={ids.tolist()}",
                    hint=EMBED_ADD_HINT)


# ---------------------------------------------------------------- 練習 8-5: logsumexp

LSE_STABLE_HINT = ("exp(x) がオーバーフロー（inf）かアンダーフロー（0 になって log(0) = -inf）していませんか。"
                   "軸ごとの最大値 m を引いて exp(x - m) を足し、最後に m を足し戻します。")


def _lse_ref(x, axis):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.exp(x - m).sum(axis=axis))


def test_ex8_5_logsumexp_values(exercise, rng):
    ex = exercise("8-5", "logsumexp")
    for _ in range(4):
        shape = _random_shape(rng, 1, 3, 2, 5)
        nd = len(shape)
        axis = int(rng.integers(-nd, nd))
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        inputs = f"logsumexp(Variable(x), axis={axis})、x は shape {shape} の float32（先頭: {_head(x)}）"
        y = _variable(ex, ex(Variable(x.copy()), axis=axis), inputs, "logsumexp(x)")
        expected = _lse_ref(x, axis)
        x64 = x.astype(np.float64)
        m = np.max(x64, axis=axis)
        hint = pick_hint(y.data, {
            "最大値 m を足し戻すのを忘れていませんか: log Σ exp(x) = m + log Σ exp(x - m)。": expected - m,
            "log を取り忘れていませんか。": np.exp(expected),
        }, "log(Σ exp(x)) を axis に沿って計算します。結果の shape は F.sum(x, axis) と同じです。")
        _check_close(ex, y.data, expected, rtol=1e-5, atol=1e-5, inputs=inputs, hint=hint)
        _check_close(ex, y.data, expected.astype(np.float32), rtol=1e-5, atol=1e-5, check_dtype=True, inputs=inputs,
                       hint=F32_HINT)


def test_ex8_5_logsumexp_large_values_are_stable(exercise, rng):
    ex = exercise("8-5", "logsumexp")
    for offset in [1000.0, -1000.0]:
        x = (rng.standard_normal((3, 4)) + offset).astype(np.float32)
        inputs = f"logsumexp(Variable(x), axis=1)、x は shape (3, 4) の float32（先頭: {_head(x)}、どれも {offset:+.0f} 前後）"
        with np.errstate(all="ignore"):
            y = _variable(ex, ex(Variable(x.copy()), axis=1), inputs, "logsumexp(x)")
        if not np.all(np.isfinite(np.asarray(y.data, dtype=np.float64))):
            ex.fail("結果に inf か nan が含まれています。", inputs=inputs, expected=_lse_ref(x, 1), actual=y.data,
                    hint=LSE_STABLE_HINT)
        expected = _lse_ref(x, 1)
        hint = pick_hint(y.data, {"最大値 m を足し戻すのを忘れていませんか: log Σ exp(x) = m + log Σ exp(x - m)。":
                                   expected - x.astype(np.float64).max(axis=1)}, LSE_STABLE_HINT)
        _check_close(ex, y.data, expected, rtol=1e-5, atol=1e-3, inputs=inputs, hint=hint)


def test_ex8_5_logsumexp_rows_far_below_the_global_maximum(exercise, rng):
    ex = exercise("8-5", "logsumexp")
    hint = ("最大値 m は、軸ごとに F.max(x, axis=axis, keepdims=True) で求めます。全体の最大値を 1 つだけ引くと、"
            "最大値よりずっと小さい行（列）では exp(x - m) がすべて 0 になり、log(0) = -inf になります。")
    for axis in (1, 0, -1):
        offsets = np.array([0.0, -300.0, 200.0])  # 行（axis=0 なら列）ごとに大きさがまったく違う
        if axis == 0:
            x = (rng.standard_normal((4, 3)) + offsets[None, :]).astype(np.float32)
        else:
            x = (rng.standard_normal((3, 4)) + offsets[:, None]).astype(np.float32)
        inputs = (f"logsumexp(Variable(x), axis={axis})、x は shape {x.shape} の float32。"
                  f"{'行' if axis != 0 else '列'}ごとの大きさが 0・-300・+200 前後とまったく違います")
        with np.errstate(all="ignore"):
            y = _variable(ex, _run(ex, hint, ex.obj, Variable(x.copy()), axis=axis), inputs, "logsumexp(x)")
        expected = _lse_ref(x, axis)
        _check_close(ex, y.data, expected, rtol=1e-5, atol=1e-3, inputs=inputs, hint=hint)


def test_ex8_5_logsumexp_gradient_is_softmax(exercise, rng):
    ex = exercise("8-5", "logsumexp")
    shape = _random_shape(rng, 2, 3, 2, 5)
    axis = -1
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    x.reshape(-1)[1] = x.reshape(-1)[0]  # 同点の最大値があっても勾配は softmax のまま
    xv = Variable(x.copy())
    inputs = f"logsumexp(Variable(x), axis={axis})、x は shape {shape} の float32"
    y = _variable(ex, ex(xv, axis=axis), inputs, "logsumexp(x)")
    gy = rng.uniform(0.5, 1.5, size=np.asarray(y.data).shape).astype(np.float32)
    _backward(ex, y, gy, inputs, "F.max・F.exp・F.sum・F.log（Variable の関数）で書けば、勾配の shape は自動で合います。")
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    expected = e / e.sum(axis=axis, keepdims=True) * np.expand_dims(gy, axis)
    g = _grad_of(ex, xv, inputs)
    _check_close(ex, g.data, expected, rtol=1e-4, atol=1e-6, inputs=f"{inputs}、x.grad を確認",
                   hint="logsumexp の勾配は softmax（exp(x - lse)）× gy です。最大値 m を定数（配列）として引くなら "
                        "m は x.data から求め、Variable として引くなら F.max(x, axis, keepdims=True) を使います。")
    _check_close(ex, g.data, expected.astype(np.float32), rtol=1e-4, atol=1e-6, check_dtype=True,
                   inputs=f"{inputs}、x.grad を確認", hint=F32_HINT)
    x = rng.standard_normal((3, 4)) * 2
    _check_gradient(ex, lambda v: ex.obj(v, axis=0), x, inputs="gradient_check(lambda x: logsumexp(x, axis=0), x)、x の shape (3, 4)",
                    hint="logsumexp の勾配は softmax です。")
