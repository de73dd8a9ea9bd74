"""第4章の隠しテスト。

練習のノートブックは、第4章の時点の Variable・Function・Add・Square・Exp を自分で定義しています。
テストも、パッケージではなくノートブックのそれを使います。
"""
import numpy as np

# float32 と float64 の両方で確かめます
DTYPES = [np.float64, np.float32, np.float32, np.float64]


def _chapter4(exercise, number, name):
    """ノートブックの準備のセルで定義された、第4章の時点のクラスと関数。"""
    return exercise(number, name).obj


def _random_shape(rng):
    return tuple(int(n) for n in rng.integers(1, 5, size=rng.integers(0, 3)))


def _uniform(rng, low, high, shape, dtype):
    return np.asarray(rng.uniform(low, high, size=shape), dtype=dtype)


def _head(a):
    return np.round(np.ravel(a)[:3].astype(np.float64), 3).tolist()


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-12)


def _close(a, b, dtype):
    try:
        return np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), **_tol(dtype))
    except (TypeError, ValueError):
        return False


DTYPE_HINT = ("float32 の入力には float32 を返します。np.float64 の値（np.array(1.0) など）を"
              "混ぜていませんか。")


# ---------------------------------------------------------------- 練習 4-1: Mul


MUL_RAISE_HINT = ("Mul の forward は x0 * x1 の配列を 1 つ、backward は配列 2 つのタプル (gy * x1, gy * x0) を返します。"
                  "入力の配列は self.inputs[0].data と self.inputs[1].data です（.grad ではありません）。")


def test_ex4_1_mul_forward_backward(exercise, rng):
    ex = exercise("4-1", "Mul")
    Variable = _chapter4(exercise, "4-1", "Variable")
    Mul = ex.check_subclass(_chapter4(exercise, "4-1", "Function"))
    for dtype in DTYPES:
        shape = _random_shape(rng)
        x0 = _uniform(rng, -2, 2, shape, dtype)
        x1 = _uniform(rng, -2, 2, shape, dtype)
        gy = _uniform(rng, 0.5, 2.0, shape, dtype)
        inputs = (f"shape={shape} の {np.dtype(dtype).name} の乱数 x0, x1 と上流の勾配 gy"
                  f"（x0 の先頭: {_head(x0)}、x1 の先頭: {_head(x1)}）")
        f = ex.run(Mul)
        with ex.context(inputs=inputs, hint=MUL_RAISE_HINT):
            y = ex.run(f, Variable(x0.copy()), Variable(x1.copy()))
        if not isinstance(y, Variable):
            ex.fail("Mul()(x0, x1) は Variable を 1 つ返すはずです。", inputs=inputs, expected="Variable",
                    actual=y, hint="forward は配列を 1 つ（x0 * x1）だけ返します。")
        ex.check_close(y.data, x0 * x1, **_tol(dtype), inputs=inputs, hint="forward は要素ごとの積 x0 * x1 を返します。")
        ex.check_close(y.data, x0 * x1, check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)

        with ex.context(inputs=inputs + "、f.backward(gy) を直接呼びました", hint=MUL_RAISE_HINT):
            gxs = ex.run(f.backward, gy)
        if not (isinstance(gxs, (tuple, list)) and len(gxs) == 2):
            ex.fail("backward は、2 つの入力それぞれの勾配をタプル (gx0, gx1) で返してください。", inputs=inputs,
                    expected="(gy * x1, gy * x0)", actual=gxs,
                    hint="`return gy * x1, gy * x0` のように、カンマで区切って 2 つ返します。")
        gx0, gx1 = gxs
        if _close(gx0, gy * x0, dtype) and _close(gx1, gy * x1, dtype):
            ex.fail("x0 と x1 の勾配が入れ替わっています。", inputs=inputs, expected=(gy * x1, gy * x0),
                    actual=(gx0, gx1),
                    hint="∂y/∂x0 = x1、∂y/∂x1 = x0 です。x0 の勾配には「もう一方の入力」x1 を掛けます。"
                         "x0 = x1 の例だけで確かめると、この間違いに気づけません。")
        if _close(gx0, x1, dtype) and _close(gx1, x0, dtype):
            ex.fail("上流の勾配 gy が掛けられていません。", inputs=inputs, expected=(gy * x1, gy * x0),
                    actual=(gx0, gx1), hint="backward は ∂y/∂x0 × gy と ∂y/∂x1 × gy を返します。")
        ex.check_close(gx0, gy * x1, **_tol(dtype), inputs=f"{inputs}、1 つ目の勾配 gx0 を確認",
                       hint="x0 の勾配は gy * x1 です。入力は self.inputs[0].data と self.inputs[1].data で取り出せます。")
        ex.check_close(gx1, gy * x0, **_tol(dtype), inputs=f"{inputs}、2 つ目の勾配 gx1 を確認",
                       hint="x1 の勾配は gy * x0 です。")
        ex.check_close(gx0, gy * x1, check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)
        ex.check_close(gx1, gy * x0, check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)


def test_ex4_1_mul_in_a_graph(exercise, rng):
    ex = exercise("4-1", "mul")
    Variable = _chapter4(exercise, "4-1", "Variable")
    Mul = _chapter4(exercise, "4-1", "Mul")
    add = _chapter4(exercise, "4-1", "add")
    for dtype in DTYPES:
        shape = _random_shape(rng)
        a_data = _uniform(rng, -2, 2, shape, dtype)
        b_data = _uniform(rng, -2, 2, shape, dtype)
        gz = _uniform(rng, 0.5, 2.0, shape, dtype)
        a, b = Variable(a_data.copy()), Variable(b_data.copy())
        inputs = (f"z = add(mul(a, b), mul(a, a))、z.grad = gy で z.backward()。shape={shape}、"
                  f"{np.dtype(dtype).name}（a の先頭: {_head(a_data)}、b の先頭: {_head(b_data)}）")
        with ex.context(inputs=inputs, hint=MUL_RAISE_HINT):
            y = ex(a, b)
        if not (isinstance(y, Variable) and isinstance(Mul, type) and isinstance(y.creator, Mul)):
            ex.fail("mul(x0, x1) は、Mul で計算した Variable を返してください。", inputs=inputs,
                    expected="creator が Mul の Variable", actual=y,
                    hint="`return Mul()(x0, x1)` と書きます。np の掛け算で済ませると、計算グラフが記録されません。")
        ex.check_close(y.data, a_data * b_data, **_tol(dtype), inputs=inputs, hint="mul(a, b) は a * b です。")
        with ex.context(inputs=inputs, hint=MUL_RAISE_HINT):
            z = add(y, ex(a, a))
            z.grad = gz.copy()
            ex.run(z.backward)
        for var, name, ref, hint in [
            (a, "a", gz * (b_data + 2 * a_data),
             "dz/da = b + 2a です。mul(a, a) のように同じ変数を 2 回使っても、backward が 2 つの勾配を返せば"
             " Variable.backward が足し合わせます。x0 と x1 の勾配を取り違えていませんか。"),
            (b, "b", gz * a_data, "dz/db = a です。b の勾配には、もう一方の入力 a を掛けます。"),
        ]:
            if var.grad is None:
                ex.fail(f"{name}.grad が None のままです。", inputs=inputs, expected=ref, actual=None,
                        hint="backward は 2 つの入力それぞれの勾配を返します。")
            ex.check_close(var.grad, ref, **_tol(dtype), inputs=f"{inputs}、{name}.grad を確認", hint=hint)
            ex.check_close(var.grad, ref, check_dtype=True, **_tol(dtype), inputs=f"{inputs}、{name}.grad を確認",
                           hint=DTYPE_HINT)


# ---------------------------------------------------------------- 練習 4-2: SinCos


def _sincos_outputs(ex, Variable, x, inputs):
    """SinCos()(x) を呼び、出力が Variable 2 つであることを確かめて返します。"""
    f = ex.run(ex.obj)
    outs = ex.run(f, x)
    if not (isinstance(outs, (list, tuple)) and len(outs) == 2 and all(isinstance(v, Variable) for v in outs)):
        ex.fail("SinCos()(x) は、出力の Variable 2 つ（のリスト）を返すはずです。", inputs=inputs,
                expected="[Variable(sin x), Variable(cos x)]", actual=outs,
                hint="forward は `return np.sin(x), np.cos(x)` のように、2 つの配列をタプルで返します。")
    return outs


def _sincos_backward(ex, func, *args, inputs=None):
    """SinCos の逆伝播を呼びます。出力の grad（None のことがある）を読んだときは、そう伝えます。"""
    try:
        return ex.run(func, *args)
    except AssertionError as exc:
        if "NoneType" in str(exc):
            ex.fail("逆伝播の途中で None を計算に使いました。", inputs=inputs, show_values=False,
                    hint="backward の中で self.outputs[i].grad を読んでいませんか。使われなかった出力や、"
                         "backward を直接呼んだときの出力の grad は None です。引数の gy_sin・gy_cos を使います"
                         "（使われなかった出力の分は、Variable.backward が 0 の配列にして渡します）。")
        raise


def test_ex4_2_sincos_forward_backward(exercise, rng):
    ex = exercise("4-2", "SinCos")
    Variable = _chapter4(exercise, "4-2", "Variable")
    SinCos = ex.check_subclass(_chapter4(exercise, "4-2", "Function"))
    for dtype in DTYPES:
        shape = _random_shape(rng)
        x = _uniform(rng, -3, 3, shape, dtype)
        gs = _uniform(rng, 0.5, 2.0, shape, dtype)
        gc = _uniform(rng, 0.5, 2.0, shape, dtype)
        inputs = (f"shape={shape} の {np.dtype(dtype).name} の乱数 x と、2 つの出力の勾配 gy_sin, gy_cos"
                  f"（x の先頭: {_head(x)}）")
        f = ex.run(SinCos)
        v = Variable(x.copy())
        outs = ex.run(f, v)
        if not (isinstance(outs, (list, tuple)) and len(outs) == 2 and all(isinstance(o, Variable) for o in outs)):
            ex.fail("SinCos()(x) は、出力の Variable 2 つ（のリスト）を返すはずです。", inputs=inputs,
                    expected="[Variable(sin x), Variable(cos x)]", actual=outs,
                    hint="forward は `return np.sin(x), np.cos(x)` のように、2 つの配列をタプルで返します。")
        y1, y2 = outs
        ex.check_close(y1.data, np.sin(x), **_tol(dtype), inputs=f"{inputs}、1 つ目の出力",
                       hint="1 つ目の出力は sin x、2 つ目は cos x です。")
        ex.check_close(y2.data, np.cos(x), **_tol(dtype), inputs=f"{inputs}、2 つ目の出力",
                       hint="1 つ目の出力は sin x、2 つ目は cos x です。")
        ex.check_close(y1.data, np.sin(x), check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)
        ex.check_close(y2.data, np.cos(x), check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)

        gx = _sincos_backward(ex, f.backward, gs, gc, inputs=inputs)
        expected = gs * np.cos(x) - gc * np.sin(x)
        if isinstance(gx, (tuple, list)):
            if len(gx) != 1:
                ex.fail(f"backward が勾配を {len(gx)} 個返しました。入力は x の 1 つなので、勾配も 1 つです。",
                        inputs=inputs, expected=expected, actual=gx,
                        hint="2 つの出力を通る道の勾配は、別々に返さずに足し合わせます: "
                             "gy_sin * cos(x) - gy_cos * sin(x)。")
            gx = gx[0]
        if _close(gx, gs * np.cos(x) + gc * np.sin(x), dtype):
            ex.fail("cos x 側の勾配の符号が逆です。", inputs=inputs, expected=expected, actual=gx,
                    hint="cos x の微分は -sin x なので、gy_cos の項は引き算です: gy_sin * cos(x) - gy_cos * sin(x)。")
        if _close(gx, np.cos(x) - np.sin(x), dtype):
            ex.fail("上流の勾配 gy_sin, gy_cos が掛けられていません。", inputs=inputs, expected=expected, actual=gx,
                    hint="それぞれの道の微分に、その出力の勾配を掛けてから足します。")
        ex.check_close(gx, expected, **_tol(dtype), inputs=inputs,
                       hint="backward(gy_sin, gy_cos) は gy_sin * cos(x) - gy_cos * sin(x) を返します。"
                            "x は self.inputs[0].data です。")
        ex.check_close(gx, expected, check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)


def test_ex4_2_sincos_both_outputs_in_a_graph(exercise, rng):
    ex = exercise("4-2", "SinCos")
    Variable = _chapter4(exercise, "4-2", "Variable")
    add = _chapter4(exercise, "4-2", "add")
    ex.check_subclass(_chapter4(exercise, "4-2", "Function"))
    for i, dtype in enumerate(DTYPES):
        shape = () if i % 2 == 0 else _random_shape(rng)
        x_data = _uniform(rng, -3, 3, shape, dtype)
        x = Variable(x_data.copy())
        inputs = (f"y1, y2 = SinCos()(x)、z = add(y1, y2)、z.backward()。shape={shape}、{np.dtype(dtype).name}"
                  f"（x の先頭: {_head(x_data)}）")
        y1, y2 = _sincos_outputs(ex, Variable, x, inputs)
        z = add(y1, y2)
        if z.data.size != 1:
            z.grad = np.ones_like(z.data)
        _sincos_backward(ex, z.backward, inputs=inputs)
        expected = np.cos(x_data) - np.sin(x_data)
        if x.grad is None:
            ex.fail("x.grad が None のままです。", inputs=inputs, expected=expected, actual=None,
                    hint="backward は x の勾配を 1 つ返します。")
        ex.check_close(x.grad, expected, **_tol(dtype), inputs=inputs,
                       hint="dz/dx = cos x - sin x です。cos x の微分は -sin x です。")
        ex.check_close(x.grad, expected, check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)


def test_ex4_2_sincos_unused_output(exercise, rng):
    ex = exercise("4-2", "SinCos")
    Variable = _chapter4(exercise, "4-2", "Variable")
    ex.check_subclass(_chapter4(exercise, "4-2", "Function"))
    for i, dtype in enumerate(DTYPES):
        shape = () if i < 2 else _random_shape(rng)
        x_data = _uniform(rng, -3, 3, shape, dtype)
        for used in (0, 1):
            name, other = ("y1（sin x）", "y2（cos x）") if used == 0 else ("y2（cos x）", "y1（sin x）")
            x = Variable(x_data.copy())
            y = _sincos_outputs(ex, Variable, x, f"shape={shape}、{np.dtype(dtype).name} の x（先頭: {_head(x_data)}）")[used]
            gy = None
            if y.data.size != 1:
                gy = _uniform(rng, 0.5, 2.0, shape, dtype)
                y.grad = gy.copy()
            inputs = (f"{name} だけを使って逆伝播（{other} は使わない）。shape={shape}、{np.dtype(dtype).name}"
                      f"（x の先頭: {_head(x_data)}）")
            _sincos_backward(ex, y.backward, inputs=inputs)
            ref = np.cos(x_data) if used == 0 else -np.sin(x_data)
            if gy is not None:
                ref = gy * ref
            hint = ("使われなかった出力の勾配は、Variable.backward が 0 の配列にして渡します。"
                    "self.outputs の grad を読まずに、引数の gy_sin・gy_cos を使います。")
            if used == 1:
                hint = "y2 = cos x の微分は -sin x です（符号に注意）。" + hint
            if x.grad is None:
                ex.fail("x.grad が None のままです。", inputs=inputs, expected=ref, actual=None, hint=hint)
            ex.check_close(x.grad, ref, **_tol(dtype), inputs=inputs, hint=hint)
            ex.check_close(x.grad, ref, check_dtype=True, **_tol(dtype), inputs=inputs, hint=DTYPE_HINT)


# ---------------------------------------------------------------- 練習 4-3: backward_order


def _test_functions(Function):
    """ランダムなグラフを作るための関数（値が大きくなりすぎないもの）。"""

    class Half(Function):
        def forward(self, x):
            return x * 0.5

        def backward(self, gy):
            return gy * 0.5

    class Mean2(Function):
        def forward(self, x0, x1):
            return (x0 + x1) * 0.5

        def backward(self, gy):
            return gy * 0.5, gy * 0.5

    class Mean3(Function):
        def forward(self, x0, x1, x2):
            return (x0 + x1 + x2) / 3

        def backward(self, gy):
            return gy / 3, gy / 3, gy / 3

    class Split2(Function):
        def forward(self, x):
            return x * 0.5, x * -0.5

        def backward(self, gy0, gy1):
            return (gy0 - gy1) * 0.5

    return Half, Mean2, Mean3, Split2


def _name(f):
    return f"{type(f).__name__}（世代 {getattr(f, 'generation', '?')}）"


def _reachable(y):
    """y の計算に使われた関数（id → 関数）。"""
    found = {}
    stack = [y.creator] if y.creator is not None else []
    while stack:
        f = stack.pop()
        if id(f) in found:
            continue
        found[id(f)] = f
        stack += [x.creator for x in f.inputs if x.creator is not None]
    return found


def _one_valid_order(y):
    funcs = list(_reachable(y).values())
    return sorted(funcs, key=lambda f: -f.generation)


ORDER_HINT = ("関数の backward は、出力への勾配がすべて届いてから呼びます。リストの末尾から取り出す（pop）だけでは"
              "この順番が崩れます。本文 4.6 節のように、世代の大きい関数から heapq で取り出します"
              "（優先度は -generation）。")


def _call_order(ex, y, inputs):
    try:
        return ex(y)
    except AssertionError as exc:
        if "AttributeError" in str(exc) and "outputs" in str(exc):
            ex.fail("関数の outputs を使わずに求めてください。", inputs=inputs, show_values=False,
                    hint="使ってよいのは、変数の creator、関数の inputs と generation だけです。"
                         "出力側から入力側へたどるだけなので、outputs は要りません。")
        raise


def _check_order(ex, Function, order, y, variables, inputs):
    """order が y.backward() の呼ぶ順番として正しい（トポロジカル順序の 1 つ）か確かめます。"""
    reach = _reachable(y)
    expected = [_name(f) for f in _one_valid_order(y)]
    if not isinstance(order, (list, tuple)):
        ex.fail("Function のリストを返してください。", inputs=inputs, expected=f"例: {expected}", actual=order,
                hint="空のリスト order = [] を作り、取り出した関数を order.append(f) で足していきます。")
    order = list(order)
    for i, f in enumerate(order):
        if not isinstance(f, Function):
            ex.fail(f"リストの {i + 1} 番目が Function ではありません。", inputs=inputs, expected=f"例: {expected}",
                    actual=order,
                    hint="入れるのは変数ではなく関数です。y.creator が None のとき（y をユーザが作ったとき）は、"
                         "None を入れずに空のリスト [] を返します。")
    names = [_name(f) for f in order]
    ids = [id(f) for f in order]
    for i, f in enumerate(order):
        if ids.index(id(f)) != i:
            ex.fail(f"同じ関数 {_name(f)} が 2 回以上入っています（{ids.index(id(f)) + 1} 番目と {i + 1} 番目）。",
                    inputs=inputs, expected=f"例: {expected}", actual=names,
                    hint="1 つの関数が、いくつかの変数の creator になっていることがあります（同じ変数を 2 回使う、"
                         "出力が 2 つある、など）。追加した関数を集合 seen で覚え、2 回目は追加しません。")
    missing = [f for key, f in reach.items() if key not in set(ids)]
    if missing:
        ex.fail(f"y の計算に使われた関数が {len(missing)} 個足りません（たとえば {_name(missing[0])}）。",
                inputs=inputs, expected=f"例: {expected}", actual=names,
                hint="入力が 2 つ以上の関数では、すべての入力（f.inputs）の creator をたどります。"
                     "別の道から届く関数も、すでに追加していなければ追加します。")
    extra = [f for f in order if id(f) not in reach]
    if extra:
        ex.fail(f"y の計算に使われていない関数 {_name(extra[0])} が入っています。", inputs=inputs,
                expected=f"例: {expected}", actual=names,
                hint="y.creator から、入力の creator を順にたどって見つかる関数だけを入れます。")
    position = {key: i for i, key in enumerate(ids)}
    for i, f in enumerate(order):
        for x in f.inputs:
            if x.creator is not None and position[id(x.creator)] < i:
                j = position[id(x.creator)]
                ex.fail(f"トポロジカル順序になっていません: {j + 1} 番目の {_name(x.creator)} は、{i + 1} 番目の "
                        f"{_name(f)} の入力を作った関数なので、{_name(f)} より後に呼ばなければなりません。",
                        inputs=inputs, expected=f"例: {expected}", actual=names, hint=ORDER_HINT)
    for i in range(1, len(order)):
        if order[i].generation > order[i - 1].generation:
            ex.fail(f"世代が大きい順になっていません（{i} 番目が {_name(order[i - 1])}、{i + 1} 番目が "
                    f"{_name(order[i])}）。", inputs=inputs, expected=f"例: {expected}", actual=names, hint=ORDER_HINT)
    for v in variables:
        if v.grad is not None:
            ex.fail("backward_order を呼んだら、変数の grad が変わりました。", inputs=inputs, show_values=False,
                    hint="backward を呼ばずに、関数をたどって順番だけを求めます。")


def test_ex4_3_backward_order_chain(exercise, rng):
    ex = exercise("4-3", "backward_order")
    Variable = _chapter4(exercise, "4-3", "Variable")
    Function = _chapter4(exercise, "4-3", "Function")
    Half = _test_functions(Function)[0]
    square = _chapter4(exercise, "4-3", "square")
    exp = _chapter4(exercise, "4-3", "exp")

    x = Variable(np.array(0.5))
    no_creator = "y = Variable(np.array(0.5))（ユーザが作った変数なので y.creator は None。関数は 1 つもない）"
    try:
        order = _call_order(ex, x, no_creator)
    except AssertionError as exc:
        if "NoneType" in str(exc):
            ex.fail("y.creator が None のときに、None を関数として扱いました。", inputs=no_creator, expected=[],
                    actual="例外", hint="y.creator が None なら、最初の関数をキューに入れずに、空のリスト [] を返します。")
        raise
    if order is None or not isinstance(order, (list, tuple)) or list(order) != []:
        ex.fail("y をユーザが作った（y.creator が None の）ときは、空のリストを返してください。",
                inputs=no_creator, expected=[], actual=order,
                hint="y.creator が None なら、最初の関数をキューに入れません。")

    for _ in range(4):
        n = int(rng.integers(1, 9))
        x = Variable(_uniform(rng, -0.5, 0.5, _random_shape(rng), np.float32))
        variables, h, kinds = [x], x, []
        for _ in range(n):
            kind = ["square", "exp", "half"][int(rng.integers(3))] if h.data.max() < 3 else "half"
            h = {"square": square, "exp": exp, "half": lambda v: Half()(v)}[kind](h)
            variables.append(h)
            kinds.append(kind)
        inputs = f"一直線のグラフ y = {'('.join(reversed(kinds))}(x{')' * n}（関数 {n} 個）"
        order = _call_order(ex, h, inputs)
        _check_order(ex, Function, order, h, variables, inputs)


def test_ex4_3_backward_order_diamond(exercise, rng):
    ex = exercise("4-3", "backward_order")
    Variable = _chapter4(exercise, "4-3", "Variable")
    Function = _chapter4(exercise, "4-3", "Function")
    square = _chapter4(exercise, "4-3", "square")
    add = _chapter4(exercise, "4-3", "add")
    for dtype in (np.float64, np.float32):
        x = Variable(np.asarray(rng.uniform(-1, 1), dtype=dtype))
        a = square(x)
        b, c = square(a), square(a)
        y = add(b, c)
        inputs = "本文 4.6 節のひし形のグラフ: a = square(x)、y = add(square(a), square(a))"
        order = _call_order(ex, y, inputs)
        _check_order(ex, Function, order, y, [x, a, b, c, y], inputs)
        # 2 重のひし形: a を 2 回使った add と、同じ変数を 2 回入力にした add
        x = Variable(np.asarray(rng.uniform(-1, 1), dtype=dtype))
        a = square(x)
        b = add(a, a)
        c = add(square(b), b)
        y = add(c, a)
        inputs = "b = add(a, a)、c = add(square(b), b)、y = add(c, a)（a = square(x)）"
        order = _call_order(ex, y, inputs)
        _check_order(ex, Function, order, y, [x, a, b, c, y], inputs)


def _random_dag(rng, Variable, Function):
    """ランダムな計算グラフを作り、(出力 y, すべての変数, すべての関数) を返します。"""
    Half, Mean2, Mean3, Split2 = _test_functions(Function)
    variables = [Variable(rng.uniform(-1, 1, size=3)) for _ in range(int(rng.integers(1, 4)))]
    funcs = []

    def pick():
        # 最近の変数を選びやすくして、深いグラフにします
        k = len(variables)
        return variables[k - 1 - min(int(rng.geometric(0.35)) - 1, k - 1)]

    for _ in range(int(rng.integers(6, 18))):
        kind = int(rng.integers(4))
        f = [Half, Mean2, Mean3, Split2][kind]()
        args = [pick() for _ in range([1, 2, 3, 1][kind])]
        out = f(*args)
        funcs.append(f)
        variables += out if isinstance(out, list) else [out]
    f = Mean3()
    y = f(variables[-1], pick(), pick())
    funcs.append(f)
    variables.append(y)
    return y, variables, funcs


def test_ex4_3_backward_order_random_graph(exercise, rng):
    ex = exercise("4-3", "backward_order")
    Variable = _chapter4(exercise, "4-3", "Variable")
    Function = _chapter4(exercise, "4-3", "Function")
    for trial in range(6):
        y, variables, funcs = _random_dag(rng, Variable, Function)
        reach = _reachable(y)
        inputs = (f"ランダムなグラフ {trial + 1}（関数 {len(funcs)} 個、そのうち y の計算に使われたもの {len(reach)} 個。"
                  f"入力が 1〜3 個の関数、出力が 2 つの関数、同じ変数を何度も使う関数を含む。"
                  f"関数の outputs は消してあります）")
        for f in funcs:
            del f.outputs  # outputs は使わずに求めます
        order = _call_order(ex, y, inputs)
        _check_order(ex, Function, order, y, variables, inputs)


# ---------------------------------------------------------------- 練習 4-4: grad_of_two_calculations


def _check_two_grads(ex, Variable, rng, stale):
    for dtype in DTYPES:
        shape = _random_shape(rng)
        x_data = _uniform(rng, -1.5, 1.5, shape, dtype)
        x = Variable(x_data.copy())
        inputs = f"shape={shape} の {np.dtype(dtype).name} の x（先頭: {_head(x_data)}）"
        old = None
        if stale:
            old = _uniform(rng, 1.0, 3.0, shape, dtype)
            x.grad = old.copy()
            inputs += f"。x.grad には前の計算の勾配が残っています（先頭: {_head(old)}）"
        out = ex(x)
        g1_ref, g2_ref = 2 * x_data, np.exp(x_data)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            ex.fail("2 つの勾配を、タプル (dy1/dx, dy2/dx) で返してください。", inputs=inputs,
                    expected=(g1_ref, g2_ref), actual=out, hint="最後に `return gx1, gx2` と書きます。")
        g1, g2 = out
        if g1 is None or g2 is None:
            ex.fail("返した勾配が None です。", inputs=inputs, expected=(g1_ref, g2_ref), actual=out,
                    hint="backward を呼んだあとの x.grad を、cleargrad で消す前に変数に取っておきます。")
        if stale and _close(g1, old + g1_ref, dtype):
            ex.fail("1 つ目の勾配に、前の計算の勾配が足されています。", inputs=inputs, expected=g1_ref, actual=g1,
                    hint="x には前の計算の勾配が残っていることがあります。最初の backward の前にも x.cleargrad() を呼びます。")
        if _close(g2, g1_ref + g2_ref, dtype) or (stale and _close(g2, old + g1_ref + g2_ref, dtype)):
            ex.fail("2 つ目の勾配に、1 つ目の計算の勾配 2x が足されています。", inputs=inputs, expected=g2_ref,
                    actual=g2,
                    hint="勾配は足し合わされるので、2 つ目の計算を微分する前に x.cleargrad() で 1 つ目の勾配を消します。")
        if _close(g1, g2_ref, dtype) and _close(g2, g2_ref, dtype):
            ex.fail("1 つ目の勾配が dy2/dx と同じになっています。", inputs=inputs, expected=(g1_ref, g2_ref),
                    actual=out,
                    hint="1 つ目の backward のあとの x.grad を、すぐに別の変数（gx1 など）に取っておきます。")
        ex.check_close(g1, g1_ref, **_tol(dtype), inputs=f"{inputs}、dy1/dx を確認",
                       hint="y1 = square(x) の微分は 2x です。" + ("" if not stale else "前の勾配を消しましたか。"))
        ex.check_close(g2, g2_ref, **_tol(dtype), inputs=f"{inputs}、dy2/dx を確認",
                       hint="y2 = exp(x) の微分は e^x です。x.cleargrad() を呼んでから y2 を逆伝播します。")
        dtype_hint = ("勾配は x.data と同じ dtype にします。出発点の勾配は np.ones_like(y.data) で作ります"
                      "（np.array(1.0) は float64 です）。")
        ex.check_close(g1, g1_ref, check_dtype=True, **_tol(dtype), inputs=inputs, hint=dtype_hint)
        ex.check_close(g2, g2_ref, check_dtype=True, **_tol(dtype), inputs=inputs, hint=dtype_hint)
        if x.grad is None or not _close(x.grad, g2_ref, dtype):
            ex.fail("関数から戻ったとき、渡した x の x.grad が dy2/dx になっていません。", inputs=inputs,
                    expected=g2_ref, actual=x.grad,
                    hint="新しい Variable を作らずに、渡された x そのもので 2 つの計算をします。"
                         "最後に x.cleargrad() を呼んで消してしまうのもいけません。")


def test_ex4_4_two_calculations_on_a_fresh_variable(exercise, rng):
    ex = exercise("4-4", "grad_of_two_calculations")
    Variable = _chapter4(exercise, "4-4", "Variable")
    _check_two_grads(ex, Variable, rng, stale=False)


def test_ex4_4_two_calculations_with_an_old_gradient_left(exercise, rng):
    ex = exercise("4-4", "grad_of_two_calculations")
    Variable = _chapter4(exercise, "4-4", "Variable")
    _check_two_grads(ex, Variable, rng, stale=True)
