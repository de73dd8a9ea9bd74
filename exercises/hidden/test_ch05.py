"""第5章の隠しテスト。

第5章の定義（Config・using_config・no_grad と、弱参照を使う Variable・Function）はパッケージの
``mini_dl`` に入っているので、練習のノートブックもテストも ``mini_dl`` を使います。
"""
import gc
import tracemalloc

import numpy as np

import mini_dl


def _not_implemented():
    raise NotImplementedError


class _Boom(Exception):
    """テストが with の中でわざと起こす例外。"""


def _raise_boom():
    raise _Boom("テストがわざと起こした例外")


# ---------------------------------------------------------------- 練習 5-1: temporary_attr


def _make_target(rng):
    """属性を 2 つ持つ、毎回ちがう名前・値のオブジェクト（クラスかインスタンス）。"""
    names = [f"setting_{int(n)}" for n in rng.choice(1000, size=2, replace=False)]
    values = [int(v) for v in rng.integers(-100, 100, size=2)]
    attrs = dict(zip(names, values))
    cls = type("Settings", (), dict(attrs))
    as_instance = bool(rng.integers(0, 2))
    obj = cls() if as_instance else cls
    kind = "インスタンス" if as_instance else "クラス（Config と同じく、クラス属性）"
    return obj, names, values, kind


def _context(ex, obj, name, value, inputs):
    cm = ex(obj, name, value)
    if not (hasattr(cm, "__enter__") and hasattr(cm, "__exit__")):
        ex.fail("with 文で使えるもの（コンテキストマネージャ）を返してください。", inputs=inputs,
                expected="コンテキストマネージャ", actual=cm,
                hint="関数に @contextlib.contextmanager を付け、値を変えたあとで yield します。")
    return cm


def test_ex5_1_temporary_attr_sets_and_restores(exercise, rng):
    ex = exercise("5-1", "temporary_attr")
    for _ in range(3):
        obj, (name, other), (old, other_value), kind = _make_target(rng)
        new = old + int(rng.integers(1, 50))
        inputs = f"{kind} の属性 {name}（元の値 {old}）を with temporary_attr(obj, {name!r}, {new}) で変える"
        cm = _context(ex, obj, name, new, inputs)

        def body():
            with cm:
                return getattr(obj, name), getattr(obj, other)

        inside, inside_other = ex.run(body)
        ex.check_equal(inside, new, inputs=inputs + "（with の中の値）",
                       hint="with の中では、setattr(obj, name, value) で変えた値になっているはずです。")
        ex.check_equal(inside_other, other_value, inputs=inputs + f"（関係ない属性 {other} の値）",
                       hint="変えるのは name で指定した属性だけです。")
        ex.check_equal(getattr(obj, name), old, inputs=inputs + "（with を抜けたあとの値）",
                       hint="yield のあとで、with に入る前に getattr で覚えておいた値を setattr で戻します。")


def test_ex5_1_temporary_attr_restores_after_exception(exercise, rng):
    ex = exercise("5-1", "temporary_attr")
    obj, (name, _), (old, _), kind = _make_target(rng)
    new = old - int(rng.integers(1, 50))
    inputs = f"{kind} の属性 {name}（元の値 {old}）を {new} にした with の中で、例外が起きる"
    cm = _context(ex, obj, name, new, inputs)
    try:
        with cm:
            _raise_boom()
    except _Boom:
        pass
    except NotImplementedError:
        ex.run(_not_implemented)
    except Exception as exc:  # 読者のコードが別の例外を出した
        ex.fail(f"with の中の例外の代わりに {type(exc).__name__}: {exc} が起きました。", inputs=inputs,
                show_values=False, hint="yield を try で囲み、finally で元の値に戻します。")
    else:
        ex.fail("with の中で起きた例外が、外に伝わりませんでした（握りつぶしています）。", inputs=inputs,
                expected="例外がそのまま外に伝わる", actual="例外が消えた",
                hint="except で例外を捕まえて何もしないと、エラーが見えなくなります。"
                     "try/except ではなく try/finally を使います。")
    ex.check_equal(getattr(obj, name), old, inputs=inputs + "（with を抜けたあとの値）",
                   hint="例外が起きると yield の次の行は実行されません。"
                        "yield を try で囲み、元に戻す処理を finally に書きます。")


def test_ex5_1_temporary_attr_nested(exercise, rng):
    ex = exercise("5-1", "temporary_attr")
    obj, (name, _), (old, _), kind = _make_target(rng)
    outer, inner = old + 1000, old + 2000
    inputs = (f"{kind} の属性 {name}（元の値 {old}）で、with temporary_attr(obj, name, {outer}) の中に "
              f"with temporary_attr(obj, name, {inner}) を入れ子にする")

    def body():
        with _context(ex, obj, name, outer, inputs):
            with _context(ex, obj, name, inner, inputs):
                innermost = getattr(obj, name)
            between = getattr(obj, name)
        return innermost, between

    innermost, between = ex.run(body)
    ex.check_equal(innermost, inner, inputs=inputs + "（内側の with の中の値）")
    ex.check_equal(between, outer, inputs=inputs + "（内側の with を抜けたあとの値）",
                   hint="抜けるときに戻すのは「その with に入る直前の値」です。"
                        "最初の値や決まった値に戻していませんか。")
    ex.check_equal(getattr(obj, name), old, inputs=inputs + "（外側の with も抜けたあとの値）")


def test_ex5_1_temporary_attr_rejects_unknown_name(exercise, rng):
    ex = exercise("5-1", "temporary_attr")
    obj, (name, _), _, kind = _make_target(rng)
    typo = name + "x"
    inputs = f"{kind} に無い属性 {typo!r} を指定する（打ち間違い）"

    def body():
        with ex(obj, typo, 1):
            pass

    ex.check_raises(AttributeError, body, inputs=inputs,
                    hint="with に入るとき、hasattr(obj, name) が False なら AttributeError を送出します。"
                         "そうしないと setattr が黙って新しい属性を作り、打ち間違いに気づけません。")
    if typo in vars(obj) or (isinstance(obj, type) and hasattr(obj, typo)):
        ex.fail("AttributeError を出す前に、属性を作ってしまっています。", inputs=inputs,
                expected="属性は作られない", actual=f"{typo} = {getattr(obj, typo)!r}",
                hint="名前を確かめてから setattr します。")


def test_ex5_1_temporary_attr_works_with_config(exercise):
    ex = exercise("5-1", "temporary_attr")
    inputs = "with temporary_attr(mini_dl.Config, 'enable_backprop', False) の中で mini_dl.square を呼ぶ"

    def body():
        with ex(mini_dl.Config, "enable_backprop", False):
            return mini_dl.square(mini_dl.Variable(2.0)).creator

    try:
        creator = ex.run(body)
        if creator is not None:
            ex.fail("with の中でも計算グラフが作られました。", inputs=inputs, expected=None, actual=creator,
                    hint="Config のようなクラスのクラス属性も、setattr(obj, name, value) で変えられます。")
        ex.check_equal(mini_dl.Config.enable_backprop, True, inputs=inputs + "（with を抜けたあと）")
    finally:
        mini_dl.Config.enable_backprop = True


# ---------------------------------------------------------------- 練習 5-2: graph_is_freed


def _builder(rng, cyclic_at=None):
    """mini_dl で n 段の計算グラフを作る関数を返します。cyclic_at 段目の出力に第4章と同じ循環参照を作ります。"""
    n = int(rng.integers(3, 7))
    ops = [str(s) for s in rng.choice(["square", "sin", "tanh", "exp_small", "branch"], size=n)]
    x_data = rng.uniform(-0.5, 0.5, size=int(rng.integers(2, 6))).astype(np.float32)
    if cyclic_at is not None:
        cyclic_at = min(cyclic_at, n - 1)

    def build():
        build.gc_enabled.append(gc.isenabled())
        h = mini_dl.Variable(x_data.copy())
        for i, op in enumerate(ops):
            if op == "square":
                h = mini_dl.square(h)
            elif op == "sin":
                h = mini_dl.sin(h)
            elif op == "tanh":
                h = mini_dl.tanh(h)
            elif op == "exp_small":
                h = mini_dl.exp(h * 0.1)
            else:  # 枝分かれして合流する
                h = mini_dl.add(mini_dl.sin(h), mini_dl.cos(h))
            if i == cyclic_at:
                h.creator.kept_output = h  # 関数 → 出力の強い参照（第4章の設計と同じ循環）
        return h

    build.gc_enabled = []  # build が呼ばれたときに、自動の GC が動いていたか
    where = "循環なし" if cyclic_at is None else (
        "出力を作った関数と出力の間に循環参照" if cyclic_at == n - 1 else f"途中（{cyclic_at + 1} 段目）の関数と変数の間に循環参照")
    return build, f"{n} 段の計算グラフ {ops}（{where}）"


def _call_freed(ex, build, inputs):
    was_enabled = gc.isenabled()
    try:
        result = ex(build)
        still_enabled = gc.isenabled()
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()
    if not isinstance(result, (bool, np.bool_)):
        ex.fail("True か False を返してください。", inputs=inputs, expected="bool", actual=result,
                hint="all(ref() is None for ref in refs) のように、bool を返します。")
    if was_enabled and not still_enabled:
        ex.fail("自動のガベージコレクションを止めたまま戻っています。", inputs=inputs,
                expected="gc.isenabled() が True", actual=False,
                hint="最後に（例外が起きても）gc.enable() で元に戻します。try/finally を使いましょう。")
    return bool(result)


def test_ex5_2_graph_is_freed_acyclic(exercise, rng):
    ex = exercise("5-2", "graph_is_freed")
    for _ in range(4):
        build, inputs = _builder(rng)
        got = _call_freed(ex, build, inputs)
        if not got:
            ex.fail("循環参照のないグラフなのに、解放されないと判定しました。", inputs=inputs,
                    expected=True, actual=got,
                    hint="関数への強い参照が残っていませんか。グラフをたどるループの変数（f や x）や、"
                         "たどった関数を入れたリスト・集合も、関数を指したままです。"
                         "弱参照だけを残し、たどる処理は別の関数に分けるか del します。")


def test_ex5_2_graph_is_freed_cyclic(exercise, rng):
    ex = exercise("5-2", "graph_is_freed")
    positions = [99, int(rng.integers(0, 2)), 99, int(rng.integers(1, 3))]  # 99: 最後の段
    for pos in positions:
        build, inputs = _builder(rng, cyclic_at=pos)
        got = _call_freed(ex, build, inputs)
        if got:
            ex.fail("循環参照のあるグラフなのに、解放されたと判定しました。", inputs=inputs,
                    expected=False, actual=got,
                    hint="(1) gc.disable() で自動の GC を止めてから調べていますか（gc.collect() を呼ぶと循環も"
                         "解放されてしまいます）。(2) 出力を作った関数だけでなく、グラフをさかのぼって"
                         "途中の関数もすべて弱参照で見張っていますか。")


def test_ex5_2_graph_is_freed_disables_gc_while_building(exercise, rng):
    """GC がたまたま動いても結果が変わらないよう、グラフは GC を止めてから作る。"""
    ex = exercise("5-2", "graph_is_freed")
    build, inputs = _builder(rng, cyclic_at=99)
    _call_freed(ex, build, inputs)
    if not build.gc_enabled:
        ex.fail("build が呼ばれませんでした。", inputs=inputs, expected="build() を 1 回呼ぶ", actual="呼ばれない",
                hint="y = build() で計算グラフを作ります。")
    if build.gc_enabled[0]:
        ex.fail("自動のガベージコレクションが動いたまま、グラフを作っています。", inputs=inputs,
                expected="build() の中で gc.isenabled() が False", actual=True,
                hint="自動の GC がたまたま動くと、循環参照も解放されて「解放された」に見えます。"
                     "y = build() の前に gc.disable() で止め、調べ終わってから gc.enable() で戻します。")


# ---------------------------------------------------------------- 練習 5-3: peak_memory_mb


def _check_not_tracing(ex, inputs):
    if tracemalloc.is_tracing():
        tracemalloc.stop()
        ex.fail("tracemalloc を止めずに戻っています。", inputs=inputs, expected="tracemalloc.is_tracing() が False",
                actual=True, hint="測り終わったら（例外が起きても）tracemalloc.stop() を呼びます。")


def test_ex5_3_peak_memory_single_array(exercise, rng):
    ex = exercise("5-3", "peak_memory_mb")
    for _ in range(3):
        n = int(rng.integers(200_000, 1_500_000))
        dtype = [np.float32, np.float64][int(rng.integers(0, 2))]
        expected = n * np.dtype(dtype).itemsize / 1e6
        inputs = f"fn = lambda: np.ones({n}, dtype=np.{np.dtype(dtype).name})（{expected:.3f} MB の配列を 1 つ作る）"
        got = ex(lambda: np.ones(n, dtype=dtype))
        _check_not_tracing(ex, inputs)
        ex.check_close(got, expected, rtol=0.01, atol=0.02, inputs=inputs,
                       hint="tracemalloc.get_traced_memory() の 2 つ目（ピーク）を 1e6 で割ります"
                            "（1 MB = 10^6 バイト。2^20 で割ると MiB になり、約 5% 小さくなります）。")


def test_ex5_3_peak_memory_counts_freed_arrays(exercise, rng):
    ex = exercise("5-3", "peak_memory_mb")
    n = int(rng.integers(500_000, 1_000_000))
    k = int(rng.integers(2, 5))
    expected = k * n * 4 / 1e6

    def fn():
        arrays = [np.ones(n, dtype=np.float32) for _ in range(k)]  # k 個を同時に持つ
        total = float(sum(a[0] for a in arrays))
        del arrays  # 返る前に解放する
        return total

    inputs = f"float32 で {n} 要素の配列を {k} 個同時に作り、返る前に解放する関数（ピークは {expected:.3f} MB）"
    got = ex(fn)
    _check_not_tracing(ex, inputs)
    ex.check_close(got, expected, rtol=0.01, atol=0.02, inputs=inputs,
                   hint="返ったあとに「いま確保されている量」（get_traced_memory() の 1 つ目）を見ると、"
                        "解放された配列は数えられません。2 つ目のピークを使います。")


def test_ex5_3_peak_memory_each_call_is_independent(exercise, rng):
    ex = exercise("5-3", "peak_memory_mb")
    big = int(rng.integers(1_500_000, 2_500_000))
    small = int(rng.integers(100_000, 400_000))
    expected = small * 4 / 1e6
    inputs = (f"先に {big * 4 / 1e6:.3f} MB の配列を作る関数を測り、続けて {expected:.3f} MB の配列を作る関数を測る"
              f"（2 回目の答えを確認）")
    ex(lambda: np.ones(big, dtype=np.float32))
    _check_not_tracing(ex, inputs)
    got = ex(lambda: np.ones(small, dtype=np.float32))
    _check_not_tracing(ex, inputs)
    ex.check_close(got, expected, rtol=0.01, atol=0.02, inputs=inputs,
                   hint="呼ぶたびに tracemalloc.start() から測り直し、前の呼び出しのピークを持ち越さないようにします。")


def test_ex5_3_peak_memory_stops_tracing_after_exception(exercise, rng):
    ex = exercise("5-3", "peak_memory_mb")
    inputs = "fn が途中で例外を送出する"

    def fn():
        np.ones(1000)
        _raise_boom()

    try:
        ex.obj(fn)
    except _Boom:
        pass
    except NotImplementedError:
        ex.run(_not_implemented)
    except Exception as exc:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        ex.fail(f"fn の例外の代わりに {type(exc).__name__}: {exc} が起きました。", inputs=inputs, show_values=False,
                hint="fn の例外はそのまま外に伝えます。")
    else:
        _check_not_tracing(ex, inputs)
        ex.fail("fn が送出した例外が外に伝わりませんでした。", inputs=inputs, expected="例外が伝わる",
                actual="例外が消えた", hint="try/except で握りつぶさず、try/finally で tracemalloc.stop() します。")
    _check_not_tracing(ex, inputs + "（例外のあと）")


# ---------------------------------------------------------------- 練習 5-4: predict


def _model(rng, record):
    """mini_dl の演算でできた小さなモデル（1 入力 → 1 出力）と、NumPy で計算した答えを返します。"""
    w = rng.uniform(0.5, 1.5, size=4).astype(np.float32)

    def model(v):
        record.append({"mode": mini_dl.Config.enable_backprop, "is_variable": isinstance(v, mini_dl.Variable)})
        if not isinstance(v, mini_dl.Variable):
            v = mini_dl.Variable(np.asarray(v))
        h = mini_dl.tanh(v * w[0] + w[1])
        y = h * h * w[2] - w[3]
        record[-1]["output"] = y
        return y

    def reference(x):
        h = np.tanh(x * w[0] + w[1])
        return h * h * w[2] - w[3]

    return model, reference


def test_ex5_4_predict_returns_data_without_graph(exercise, rng):
    ex = exercise("5-4", "predict")
    for _ in range(3):
        record = []
        model, reference = _model(rng, record)
        shape = tuple(int(n) for n in rng.integers(1, 5, size=rng.integers(1, 3)))
        x = rng.uniform(-2, 2, size=shape).astype(np.float32)
        inputs = f"float32 の配列 x（shape={shape}）と、mini_dl の tanh・掛け算・引き算でできたモデル"
        got = ex(model, x.copy())
        if not record:
            ex.fail("モデルが呼ばれていません。", inputs=inputs, expected="model(Variable(x))", actual=got,
                    hint="predict の中で model(...) を呼びます。")
        if not record[0]["is_variable"]:
            ex.fail("モデルに Variable ではないものを渡しました。", inputs=inputs, expected="mini_dl.Variable",
                    actual=got, hint="x を mini_dl.Variable(x) に包んでから model に渡します。")
        if isinstance(got, mini_dl.Variable):
            ex.fail("Variable ではなく、中身の配列を返してください。", inputs=inputs, expected="np.ndarray",
                    actual=got, hint="model の出力 y の .data を返します。")
        ex.check_close(got, reference(x), rtol=1e-5, atol=1e-6, inputs=inputs, hint="model(Variable(x)).data を返します。")
        ex.check_close(got, reference(x), check_dtype=True, rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint="float32 の x は float32 のまま Variable に包みます（np.float64 に変換していませんか）。")
        if record[0]["mode"] is not False:
            ex.fail("モデルを呼んでいる間、逆伝播が有効なままでした。", inputs=inputs,
                    expected="model の中で mini_dl.Config.enable_backprop が False", actual=record[0]["mode"],
                    hint="with mini_dl.no_grad(): の中で model を呼びます。")
        if record[0]["output"].creator is not None:
            ex.fail("計算グラフが作られています。", inputs=inputs, expected="出力の creator が None",
                    actual=record[0]["output"].creator, hint="with mini_dl.no_grad(): の中で model を呼びます。")
        if mini_dl.Config.enable_backprop is not True:
            mini_dl.Config.enable_backprop = True
            ex.fail("predict から戻ったあと、逆伝播が無効のままです。", inputs=inputs,
                    expected=True, actual=False, hint="with mini_dl.no_grad(): を使えば、抜けるときに元に戻ります。")


def test_ex5_4_predict_restores_mode_after_exception(exercise, rng):
    ex = exercise("5-4", "predict")

    def broken_model(v):
        raise ValueError("モデルの中でエラー（テストがわざと起こしました）")

    inputs = "model が ValueError を送出する"
    x = rng.uniform(-1, 1, size=3).astype(np.float32)
    try:
        ex.check_raises(ValueError, ex.obj, broken_model, x, inputs=inputs,
                        hint="モデルの例外は握りつぶさずに、そのまま外に伝えます。")
        if mini_dl.Config.enable_backprop is not True:
            ex.fail("モデルで例外が起きたあと、逆伝播が無効のままです。", inputs=inputs,
                    expected=True, actual=mini_dl.Config.enable_backprop,
                    hint="Config.enable_backprop = False と直接書くと、例外のときに元に戻せません。"
                         "with mini_dl.no_grad(): を使います。")
    finally:
        mini_dl.Config.enable_backprop = True


def test_ex5_4_predict_keeps_outer_mode(exercise, rng):
    ex = exercise("5-4", "predict")
    record = []
    model, reference = _model(rng, record)
    x = rng.uniform(-1, 1, size=3).astype(np.float32)
    inputs = "with mini_dl.no_grad(): の中で predict を呼ぶ（入れ子）"
    try:
        with mini_dl.no_grad():
            got = ex(model, x)
            after = mini_dl.Config.enable_backprop
        ex.check_close(got, reference(x), rtol=1e-5, atol=1e-6, inputs=inputs)
        if after is not False:
            ex.fail("外側の no_grad の中なのに、predict のあとで逆伝播が有効に変わりました。", inputs=inputs,
                    expected=False, actual=after,
                    hint="戻すのは「predict を呼ぶ前の値」です。最後に True を代入すると、外側の設定を壊します。"
                         "with mini_dl.no_grad(): を使えば、前の値に戻ります。")
    finally:
        mini_dl.Config.enable_backprop = True
