"""第20章の隠しテスト（グラフの評価器・定数畳み込み・層正規化のノード・動的な量子化の全結合・レイテンシとバッチ）。

よくある間違い（Softmax で最大値を引かない、Transpose の perm を無視する、Gemm の C を足し忘れる、
定数の結果を続くノードに伝えない、使われない定数を残す、分散を中心化しないで求める、ε を平方根の外に足す、
ゼロ点を引き忘れる、int8 のまま足し込む、レイテンシの上限を切り上げる、スループットを 1/レイテンシ にする）は、
テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import numpy as np

from grader import pick_hint

# --- 採点用の正しい評価器（練習 20-1 の答えとは別に持つ） ---------------------------------------------


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _apply(op, xs, attrs):
    if op == "MatMul":
        return xs[0] @ xs[1]
    if op == "Add":
        return xs[0] + xs[1]
    if op == "Sub":
        return xs[0] - xs[1]
    if op == "Mul":
        return xs[0] * xs[1]
    if op == "Div":
        return xs[0] / xs[1]
    if op == "Sqrt":
        return np.sqrt(xs[0])
    if op == "Relu":
        return np.maximum(xs[0], 0)
    if op == "Transpose":
        return np.transpose(xs[0], attrs.get("perm"))
    if op == "Softmax":
        return _softmax(xs[0], attrs.get("axis", -1))
    if op == "Gemm":
        return xs[0] @ xs[1] + xs[2]
    if op == "ReduceMean":
        return xs[0].mean(axis=tuple(attrs.get("axes", range(xs[0].ndim))), keepdims=bool(attrs.get("keepdims", 1)))
    raise ValueError(f"採点器の知らない演算です: {op}")


def _evaluate(node, values):
    op, inputs, _, attrs = node
    return [_apply(op, [values[name] for name in inputs], attrs)]


def _run(nodes, values):
    values = dict(values)
    for node in nodes:
        values.update(zip(node[2], _evaluate(node, values)))
    return values


# --- 練習 20-1: 評価器 --------------------------------------------------------------------------------


def _f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _single_cases(rng):
    """演算ごとの 1 ノードのグラフと、よくある間違いの答え。"""
    N, D, H = (int(v) for v in rng.integers(2, 6, size=3))
    x, W, b = _f32(rng, N, D), _f32(rng, D, H), _f32(rng, H)
    t = _f32(rng, 2, 3, 4)
    big = _f32(rng, N, H, scale=300.0)
    perm = [int(a) for a in rng.permutation(3)]
    while perm == [2, 1, 0]:
        perm = [int(a) for a in rng.permutation(3)]
    axis = int(rng.integers(0, 2))
    return [
        (("MatMul", ["x", "W"], ["y"], {}), {"x": x, "W": W}, {}),
        (("Add", ["h", "b"], ["y"], {}), {"h": x @ W, "b": b}, {}),
        (("Mul", ["h", "b"], ["y"], {}), {"h": x @ W, "b": b}, {}),
        (("Relu", ["x"], ["y"], {}), {"x": x}, {}),
        (("Transpose", ["t"], ["y"], {"perm": perm}), {"t": t},
         {"Transpose の属性 perm のとおりに軸を並べ替えます（np.transpose(x, perm)）。perm を無視していませんか。":
          np.transpose(t)}),
        (("Transpose", ["t"], ["y"], {}), {"t": t}, {}),
        (("Softmax", ["s"], ["y"], {"axis": axis}), {"s": big},
         {"Softmax の属性 axis の軸について和が 1 になるようにします（axis を無視して -1 にしていませんか）。":
          _softmax(big, -1)}),
        (("Softmax", ["s"], ["y"], {}), {"s": big}, {}),
        (("Gemm", ["x", "W", "b"], ["y"], {}), {"x": x, "W": W, "b": b},
         {"Gemm は A B + C です。3 つ目の入力 C を足し忘れていませんか。": x @ W}),
    ]


def test_ex20_1_each_op(exercise, rng):
    ex = exercise("20-1", "run_graph")
    for node, values, wrong in _single_cases(rng):
        expected = _evaluate(node, values)[0]
        inputs = f"ノード {node}、入力の shape {{{', '.join(f'{k}: {v.shape}' for k, v in values.items())}}}"
        with ex.context(inputs=inputs):
            got = ex.run(ex.obj, [node], {k: v.copy() for k, v in values.items()})
        if not isinstance(got, dict) or "y" not in got:
            ex.fail("すべての値の名前から配列への辞書を返し、ノードの出力の名前 'y' も入れてください。",
                    inputs=inputs, expected="{..., 'y': 配列}", actual=got)
        default = "ONNX の定義のとおりに計算します。"
        if node[0] == "Softmax":
            default = "最大値を引いてから exp をとります（大きな値で inf や nan になっていませんか）。"
        ex.check_close(got["y"], expected, rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint=pick_hint(got["y"], wrong, default, atol=1e-5))
        for name, value in values.items():
            if name not in got:
                ex.fail(f"返した辞書に、入力の '{name}' がありません。入力も含めたすべての値を返します。",
                        inputs=inputs, expected=sorted(values) + ["y"], actual=sorted(got))


def test_ex20_1_random_chain(exercise, rng):
    ex = exercise("20-1", "run_graph")
    for _ in range(3):
        N, D, H, K = (int(v) for v in rng.integers(2, 7, size=4))
        values = {"x": _f32(rng, N, D), "W1": _f32(rng, D, H), "b1": _f32(rng, H), "W2": _f32(rng, H, K),
                  "b2": _f32(rng, K), "s": np.float32(rng.uniform(0.5, 2.0))}
        nodes = [("MatMul", ["x", "W1"], ["h1"], {}), ("Add", ["h1", "b1"], ["h2"], {}), ("Relu", ["h2"], ["h3"], {}),
                 ("Gemm", ["h3", "W2", "b2"], ["h4"], {}), ("Mul", ["h4", "s"], ["h5"], {}),
                 ("Transpose", ["h5"], ["h6"], {"perm": [1, 0]}), ("Softmax", ["h6"], ["y"], {"axis": 0})]
        expected = _run(nodes, values)
        inputs = f"7 ノードの列 {[n[0] for n in nodes]}（N={N}, D={D}, H={H}, K={K}）"
        with ex.context(inputs=inputs):
            got = ex.run(ex.obj, nodes, dict(values))
        if not isinstance(got, dict):
            ex.fail("辞書を返してください。", inputs=inputs, expected="dict", actual=got)
        for name in ["h1", "h3", "h4", "h6", "y"]:
            if name not in got:
                ex.fail(f"途中の値 '{name}' が返した辞書にありません。各ノードの出力を、その名前で辞書に加えます。",
                        inputs=inputs, expected=sorted(expected), actual=sorted(got))
            ex.check_close(got[name], expected[name], rtol=1e-5, atol=1e-6, inputs=inputs + f" の '{name}'")


# --- 練習 20-2: 定数畳み込み ------------------------------------------------------------------------------


def _fold_graph(rng):
    D, H, V = (int(v) for v in rng.integers(2, 6, size=3))
    consts = {"E": _f32(rng, V, D), "W": _f32(rng, D, H), "b": _f32(rng, H), "unused": _f32(rng, 3),
              "scale": np.float32(rng.uniform(0.5, 2.0))}
    nodes = [
        ("Transpose", ["E"], ["Et"], {}),              # 定数だけ -> 畳める (D, V)
        ("Mul", ["W", "scale"], ["Ws"], {}),           # 定数だけ -> 畳める (D, H)
        ("MatMul", ["x", "Ws"], ["h"], {}),            # x は入力 -> 残る (N, H)
        ("Add", ["h", "b"], ["h2"], {}),               # 残る
        ("Transpose", ["Ws"], ["WsT"], {}),            # 畳んだ結果だけ -> 畳める (H, D)
        ("MatMul", ["WsT", "Et"], ["P"], {}),          # 畳んだ結果どうし -> 畳める (H, V)
        ("Relu", ["h2"], ["h3"], {}),                  # 残る
        ("MatMul", ["h3", "P"], ["y"], {}),            # 残る (N, V)
    ]
    return nodes, consts


def _fold_reference(nodes, consts, outputs):
    consts = dict(consts)
    kept = []
    for node in nodes:
        if node[1] and all(n in consts for n in node[1]):
            consts.update(zip(node[2], _evaluate(node, consts)))
        else:
            kept.append(node)
    used = {n for node in kept for n in node[1]} | set(outputs)
    return kept, {k: v for k, v in consts.items() if k in used}


def test_ex20_2_fold_constants(exercise, rng):
    ex = exercise("20-2", "fold_constants")
    for trial in range(3):
        nodes, consts = _fold_graph(rng)
        outputs = ["y"] if trial != 2 else ["y", "P"]  # 畳んだ値がグラフの出力なら、定数として残す
        exp_nodes, exp_consts = _fold_reference(nodes, consts, outputs)
        nodes_copy, consts_copy = list(nodes), {k: v.copy() for k, v in consts.items()}
        inputs = f"ノード {[(n[0], n[1], n[2]) for n in nodes]}、定数 {sorted(consts)}、出力 {outputs}"
        with ex.context(inputs=inputs):
            got = ex.run(ex.obj, nodes, consts, outputs, _evaluate)
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(残ったノードのリスト, 定数の辞書) の組を返してください。", inputs=inputs,
                    expected="(nodes, consts)", actual=got)
        got_nodes, got_consts = got
        if nodes != nodes_copy or sorted(consts) != sorted(consts_copy) or not all(
                np.array_equal(consts[k], consts_copy[k]) for k in consts):
            ex.fail("引数の nodes か consts を書き換えています。コピー（list(nodes)、dict(consts)）を作ってから変えます。",
                    inputs=inputs, show_values=False)
        got_outs = [n[2][0] for n in got_nodes]
        exp_outs = [n[2][0] for n in exp_nodes]
        if got_outs != exp_outs:
            single_pass = [n[2][0] for n in nodes if not (n[1] and all(i in consts for i in n[1]))]
            hint = ("畳んだノードの結果も定数に加えます。そうすれば、その結果を使うノード（MatMul(WsT, Et) など）も"
                    "続けて畳めます。" if got_outs == single_pass else
                    "入力がすべて定数のノードだけを外し、残りは元の順番のまま返します。")
            ex.fail("残ったノード（出力の名前）が違います。", inputs=inputs, expected=exp_outs, actual=got_outs, hint=hint)
        if not isinstance(got_consts, dict):
            ex.fail("2 つ目は定数の辞書にしてください。", inputs=inputs, expected=sorted(exp_consts), actual=got_consts)
        if sorted(got_consts) != sorted(exp_consts):
            extra = sorted(set(got_consts) - set(exp_consts))
            missing = sorted(set(exp_consts) - set(got_consts))
            hint = ("使われなくなった定数（" + ", ".join(extra) + "）を消します。残ったノードの入力かグラフの出力に"
                    "使われる名前だけを残します。") if extra and not missing else (
                "残ったノードの入力やグラフの出力に使う定数（" + ", ".join(missing) + "）が足りません。")
            ex.fail("定数の名前が違います。", inputs=inputs, expected=sorted(exp_consts), actual=sorted(got_consts),
                    hint=hint)
        for name, value in exp_consts.items():
            ex.check_close(got_consts[name], value, rtol=1e-6, atol=1e-6, inputs=inputs + f" の定数 '{name}'")
        x = _f32(rng, 2, consts["W"].shape[0])
        folded = _run(got_nodes, {**got_consts, "x": x})["y"]
        ex.check_close(folded, _run(nodes, {**consts, "x": x})["y"], rtol=1e-5, atol=1e-6,
                       inputs=inputs + " の畳んだグラフの出力")


# --- 練習 20-3: 層正規化のノード ----------------------------------------------------------------------------

_ALLOWED = {"ReduceMean", "Sub", "Mul", "Add", "Div", "Sqrt"}


def _ln(x, g, b, eps, mode="ok"):
    x = x.astype(np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = (x * x).mean(axis=-1, keepdims=True) if mode == "raw" else ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    std = np.sqrt(var) + eps if mode == "eps_out" else np.sqrt(var + eps)
    xhat = (x - mu) / std
    if mode == "nosub":
        xhat = x / std
    return g * xhat + b


def test_ex20_3_layer_norm_nodes(exercise, rng):
    ex = exercise("20-3", "layer_norm_nodes")
    for trial in range(3):
        shape = [(3, 5), (2, 4, 6), (1, 7)][trial]
        eps = float([1e-5, 0.3, 1e-2][trial])
        x = _f32(rng, *shape, scale=2.0) + np.float32(rng.uniform(-3, 3))
        g, b = _f32(rng, shape[-1]), _f32(rng, shape[-1])
        names = ("inp", "gam", "bet", "out") if trial else ("x", "gamma", "beta", "y")
        inputs = f"layer_norm_nodes{names[:4] + (eps,)}、x の shape {shape}"
        got = ex.run(ex.obj, *names, eps)
        if not isinstance(got, tuple) or len(got) != 2 or not isinstance(got[1], dict):
            ex.fail("(ノードのリスト, 定数の辞書) の組を返してください。", inputs=inputs, expected="(nodes, consts)",
                    actual=got)
        nodes, consts = got
        for node in nodes:
            if not (isinstance(node, tuple) and len(node) == 4):
                ex.fail("ノードは (op_type, inputs, outputs, attrs) の 4 つの組にします。", inputs=inputs,
                        expected="('Sub', ['x', 'mu'], ['xc'], {})", actual=node)
            if node[0] not in _ALLOWED:
                ex.fail(f"使えない演算 {node[0]} があります。", inputs=inputs, expected=sorted(_ALLOWED), actual=node[0],
                        hint="LayerNormalization の無い opset を想定しています。ReduceMean・Sub・Mul・Add・Div・Sqrt で書きます。")
            if node[0] == "ReduceMean" and list(node[3].get("axes", [])) not in ([-1], [len(shape) - 1]):
                ex.fail("ReduceMean は最後の軸について平均します。", inputs=inputs, expected={"axes": [-1], "keepdims": 1},
                        actual=node[3])
        values = {**{k: np.asarray(v) for k, v in consts.items()}, names[0]: x, names[1]: g, names[2]: b}
        try:
            out = _run(nodes, values)
        except KeyError as e:
            ex.fail(f"値 {e} が、入力・定数・前のノードの出力のどれにもありません。", inputs=inputs, show_values=False,
                    hint="ε は定数の辞書に入れ、ノードは使う値が先にできる順番に並べます。")
        except ValueError:
            ex.fail("ノードを計算すると shape が合いません。", inputs=inputs, show_values=False,
                    hint='ReduceMean に {"axes": [-1], "keepdims": 1} を付けて、平均の軸を長さ 1 で残します。')
        if names[3] not in out:
            ex.fail(f"出力の名前 '{names[3]}' を作るノードがありません。", inputs=inputs, expected=names[3],
                    actual=[n[2] for n in nodes])
        got_y = out[names[3]]
        wrong = {"分散は中心化した値の 2 乗の平均 mean((x - μ)^2) です（x^2 の平均をとっていませんか）。": _ln(x, g, b, eps, "raw"),
                 "ε は平方根の中（σ^2 + ε）に足します。": _ln(x, g, b, eps, "eps_out"),
                 "正規化する前に、平均 μ を引きます。": _ln(x, g, b, eps, "nosub")}
        ex.check_close(got_y, _ln(x, g, b, eps), rtol=1e-4, atol=1e-4, inputs=inputs,
                       hint=pick_hint(got_y, wrong, "y = γ (x - μ) / sqrt(σ^2 + ε) + β です。", rtol=1e-4, atol=1e-4))
        if np.asarray(got_y).dtype != np.float32:
            ex.fail("出力が float32 ではありません。", inputs=inputs, expected="float32", actual=np.asarray(got_y).dtype,
                    hint="ε の定数を np.array(eps, dtype=np.float32) にします（float64 の配列は相手を float64 にします）。")


# --- 練習 20-4: 動的な量子化の全結合 ------------------------------------------------------------------------


def _qlinear(x, W, b, mode="ok"):
    x_min, x_max = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    sx = (x_max - x_min) / 255
    zx = int(np.round(-x_min / sx))
    qx = np.clip(np.round(x / sx) + zx, 0, 255)
    sw = float(np.abs(W).max()) / 127
    qw = np.clip(np.round(W / sw), -127, 127)
    if mode == "nozp":
        acc = qx @ qw
    elif mode == "int8":
        acc = ((qx - zx).astype(np.int64) @ qw.astype(np.int64) + 128) % 256 - 128
    else:
        acc = (qx - zx) @ qw
    return (acc * (sx * sw) + b).astype(np.float32)


def test_ex20_4_quantized_linear(exercise, rng):
    ex = exercise("20-4", "quantized_linear")
    for trial in range(4):
        N, D, H = int(rng.integers(1, 6)), int(rng.integers(16, 80)), int(rng.integers(1, 6))
        shift = [0.0, 2.0, -1.0, 0.5][trial]
        x = _f32(rng, N, D) + np.float32(shift)
        W, b = _f32(rng, D, H, scale=0.3), _f32(rng, H)
        inputs = f"x {x.shape}（平均 {shift}）、W {W.shape}、b {b.shape}"
        got = ex.run(ex.obj, x.copy(), W.copy(), b.copy())
        expected = _qlinear(x, W, b)
        wrong = {"活性のゼロ点 z_x を引いてから掛けます（(q_x - z_x) q_W）。": _qlinear(x, W, b, "nozp"),
                 "積の和が int8 の範囲であふれています。掛ける前に .astype(np.int32) にして、int32 に足し込みます。":
                     _qlinear(x, W, b, "int8")}
        ex.check_close(got, expected, rtol=1e-5, atol=1e-5, inputs=inputs,
                       hint=pick_hint(got, wrong, "手順 1〜4 のとおりに計算します。round は np.round、s_x は範囲に 0 を含めて求めます。",
                                      rtol=1e-5, atol=1e-5))
        if np.asarray(got).dtype != np.float32:
            ex.fail("dtype が float32 ではありません。", inputs=inputs, expected="float32", actual=np.asarray(got).dtype,
                    hint="最後に .astype(np.float32) します。")
        # 量子化の誤差が、float の答えに比べて小さいこと（本文の主張: 正解率はほとんど変わらない）
        err = np.abs(np.asarray(got, dtype=np.float64) - (x.astype(np.float64) @ W + b)).max()
        bound = D * (np.abs(x).max() + 1) * np.abs(W).max() * (1 / 255 + 1 / 127)
        assert err <= bound, (err, bound)


# --- 練習 20-5: レイテンシとバッチ ----------------------------------------------------------------------------------


def _best(t0, c, limit):
    B = int(np.floor((limit + 1e-12 - t0) / c))
    return (0, 0.0) if B < 1 else (B, B / (t0 + c * B))


def test_ex20_5_best_batch(exercise, rng):
    ex = exercise("20-5", "best_batch")
    cases = [(1e-3, 1e-4, 10e-3), (1e-3, 1e-4, 0.5e-3), (2e-3, 1e-3, 3e-3), (5e-4, 2e-5, 5e-4 + 2e-5 * 37)]
    for _ in range(6):
        t0, c = float(rng.uniform(1e-4, 5e-3)), float(rng.uniform(1e-6, 1e-3))
        cases.append((t0, c, t0 + c * float(rng.uniform(0.5, 500))))
    for t0, c, limit in cases:
        inputs = f"best_batch({t0!r}, {c!r}, {limit!r})"
        got = ex.run(ex.obj, t0, c, limit)
        B, thr = _best(t0, c, limit)
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(B, throughput) の組を返してください。", inputs=inputs, expected=(B, thr), actual=got)
        gB, gthr = got
        if not isinstance(gB, (int, np.integer)) or int(gB) != B:
            ceil_B = int(np.ceil((limit - t0) / c))
            hint = ("レイテンシが上限を超えないように、バッチは切り捨て（floor）で求めます。" if isinstance(gB, (int, np.integer, float))
                    and int(gB) == ceil_B and ceil_B != B else
                    "B = 1 でも上限を超えるときは (0, 0.0) を返します。" if B == 0 else
                    "t0 + c B <= max_latency + 1e-12 を満たす最大の整数 B です。B は int で返します。")
            ex.fail("B が違います。", inputs=inputs, expected=(B, thr), actual=got, hint=hint)
        wrong = {"スループットは B / (t0 + c B) です（1 回の時間の逆数ではなく、B 個ぶん）。": 1 / (t0 + c * B) if B else -1.0}
        ex.check_close(float(gthr), thr, rtol=1e-9, atol=0, inputs=inputs,
                       hint=pick_hint(float(gthr), wrong, "スループットは B / (t0 + c B) です。", rtol=1e-9, atol=0))
