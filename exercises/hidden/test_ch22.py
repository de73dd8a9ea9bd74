"""第22章の隠しテスト（JAX の形の学習 1 ステップ・データごとの勾配・PyTorch の重みの変換・時間の見積もり・アムダールの法則）。

よくある間違い（N で割り忘れる、ReLU の逆伝播を忘れる、最後の層にも ReLU を置く、params を書き換える、
平均をとってしまう、重みを転置し忘れる、名前を文字列で並べる、逆伝播の計算量を数え忘れる、
アムダールの式の f と 1 - f を入れ替える）は、テストの中で同じ間違いをした答えを作って見比べ、当てはまればヒントで伝えます。
"""
import numpy as np

from grader import pick_hint

# --- 練習 22-1: JAX の形の学習 1 ステップ ----------------------------------------------------------------


def _mlp(params, x, t, mode="ok"):
    """float64 の参照の実装。mode で、よくある間違いを再現します。"""
    params = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]
    x = x.astype(np.float64)
    hs = [x]
    for W, b in params[:-1]:
        hs.append(np.maximum(hs[-1] @ W + b, 0))
    W, b = params[-1]
    y = hs[-1] @ W + b
    if mode == "relu_last":
        y = np.maximum(y, 0)
    y = y - y.max(axis=1, keepdims=True)
    p = np.exp(y)
    s = p.sum(axis=1, keepdims=True)
    p /= s
    n = len(x)
    loss = -(y - np.log(s))[np.arange(n), t].mean()
    g = p.copy()
    g[np.arange(n), t] -= 1
    if mode != "no_mean":
        g /= n
    if mode == "relu_last":
        g = g * ((hs[-1] @ W + b) > 0)
    grads = []
    for i in reversed(range(len(params))):
        W, _ = params[i]
        grads.append((hs[i].T @ g, g.sum(axis=0)))
        if i > 0:
            g = g @ W.T
            if mode != "no_relu_grad":
                g = g * (hs[i] > 0)
    return loss, grads[::-1]


def _random_mlp(rng, big=False):
    sizes = [int(rng.integers(2, 7)) for _ in range(int(rng.integers(2, 5)))]
    if big:
        sizes[-1] = max(sizes[-1], 3)
    params = [(rng.standard_normal((a, b)).astype(np.float32), (rng.standard_normal(b) * 0.3).astype(np.float32))
              for a, b in zip(sizes, sizes[1:])]
    if big:  # 最後の層のバイアスで、ロジットの差を数百にする（確率が float32 で 0 に丸められる）
        b_last = np.zeros(sizes[-1], dtype=np.float32)
        b_last[0] = 500.0
        params[-1] = (params[-1][0], b_last)
    n = int(rng.integers(2, 9))
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    t = rng.integers(0, sizes[-1], size=n)
    return params, x, t


def test_ex22_1_mlp_loss_and_grads(exercise, rng):
    ex = exercise("22-1", "mlp_loss_and_grads")
    for trial in range(6):
        params, x, t = _random_mlp(rng, big=trial == 5)  # 最後は大きなロジット（あふれの確認）
        if trial == 5:
            t[:] = rng.integers(1, params[-1][0].shape[1], size=len(t))  # 正解の確率は e^-500 ほど
        copies = [(W.copy(), b.copy()) for W, b in params]
        sizes = [params[0][0].shape[0]] + [W.shape[1] for W, _ in params]
        inputs = f"層の大きさ {sizes}、N={len(x)}" + ("（大きなロジット）" if trial == 5 else "")
        got = ex.run(ex.obj, copies, x.copy(), t.copy())
        loss, grads = _mlp(params, x, t)
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(loss, grads) の組を返してください。", inputs=inputs, expected="(float, [(gW, gb), ...])", actual=got)
        g_loss, g_grads = got
        for (W, b), (W0, b0) in zip(copies, params):
            if not (np.array_equal(W, W0) and np.array_equal(b, b0)):
                ex.fail("params の配列が書き換えられました。純粋な関数にします。", inputs=inputs, show_values=False,
                        hint="W -= ... や W[...] = ... は、渡された配列そのものを変えます。新しい配列を作って返します。")
        if not isinstance(g_loss, float):
            ex.fail("loss は Python の float で返します。", inputs=inputs, expected=loss, actual=g_loss,
                    hint="float(loss) で変換します（NumPy のスカラーや 0 次元の配列ではなく）。")
        if not np.isfinite(g_loss):
            ex.fail("loss が inf か nan になりました。", inputs=inputs, expected=loss, actual=g_loss,
                    hint="行ごとの最大値 m を引いてから exp をとり、損失は (y - m) - log Σ exp(y - m) の形で計算します。"
                         "確率を求めてから log をとると、0 に丸められた確率で -log(0) = inf になります。")
        ex.check_close(g_loss, loss, rtol=1e-4, atol=1e-5, inputs=inputs + " の loss",
                       hint="損失はバッチの平均です: -log(softmax(y)[n, t[n]]) の平均。")
        if not isinstance(g_grads, (list, tuple)) or len(g_grads) != len(params):
            ex.fail(f"grads は層の数（{len(params)} 個）の (gW, gb) のリストにします。", inputs=inputs,
                    expected=f"{len(params)} 個の組", actual=g_grads)
        wrong = {mode: _mlp(params, x, t, mode)[1] for mode in ("no_mean", "no_relu_grad", "relu_last")}
        for k, ((gW, gb), (rW, rb)) in enumerate(zip(g_grads, grads)):
            for name, got_g, ref, idx in (("gW", gW, rW, 0), ("gb", gb, rb, 1)):
                hint = pick_hint(got_g, {
                    "勾配が N 倍になっています。損失は平均なので、出力の勾配を N で割ります。": wrong["no_mean"][k][idx],
                    "前の層へ送る勾配に、ReLU の逆伝播（出力が 0 だった場所を 0 にする）を掛け忘れています。":
                        wrong["no_relu_grad"][k][idx],
                    "最後の層の後には ReLU を置きません（ロジットはそのままソフトマックスへ）。": wrong["relu_last"][k][idx],
                }, "出力の勾配 (softmax(y) - onehot(t)) / N から始め、gW = h^T G、gb = G の和、前へは (G W^T) * (h > 0) です。")
                ex.check_close(got_g, ref, rtol=1e-3, atol=1e-5, inputs=f"{inputs} の {k + 1} 層目の {name}", hint=hint)
                if np.asarray(got_g).dtype != np.float32:
                    ex.fail(f"{k + 1} 層目の {name} の dtype が float32 ではありません。", inputs=inputs,
                            expected="float32", actual=np.asarray(got_g).dtype,
                            hint="NumPy のスカラー（np.float64 など）や float64 の配列を掛けると float64 に上がります。"
                                 "Python の数（len(x) など）で割れば float32 のままです。")


# --- 練習 22-2: データごとの勾配 -------------------------------------------------------------------------


def _per_example(W, b, x, t):
    y = x.astype(np.float64) @ W + b
    p = np.exp(y - y.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = p.copy()
    g[np.arange(len(x)), t] -= 1
    return np.einsum("nd,nc->ndc", x, g), g, p


def test_ex22_2_per_example_grads(exercise, rng):
    ex = exercise("22-2", "per_example_grads")
    for trial in range(5):
        N, D, C = int(rng.integers(1, 9)), int(rng.integers(1, 7)), int(rng.integers(2, 6))
        W = rng.standard_normal((D, C)).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        x = rng.standard_normal((N, D)).astype(np.float32)
        t = rng.integers(0, C, size=N)
        gW_ref, gb_ref, p = _per_example(W, b, x, t)
        inputs = f"N={N}, D={D}, C={C}"
        got = ex.run(ex.obj, W.copy(), b.copy(), x.copy(), t.copy())
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(gW, gb) の組を返してください。", inputs=inputs, expected="(gW, gb)", actual=got)
        gW, gb = (np.asarray(a) for a in got)
        shape_hint = ("データごとの勾配なので、バッチの軸 N を残します（gW は (N, D, C)、gb は (N, C)）。"
                      "バッチで和や平均をとると、(D, C) になります。")
        ex.check_close(gb, gb_ref, rtol=1e-4, atol=1e-5, inputs=inputs + " の gb",
                       hint=pick_hint(gb, {"N で割っています。データごとの勾配は、平均の前の 1 つ 1 つの勾配です。": gb_ref / N,
                                           "ソフトマックスの確率から正解の 1 を引きます（softmax(y) - onehot(t)）。": p}, shape_hint))
        ex.check_close(gW, gW_ref, rtol=1e-4, atol=1e-5, inputs=inputs + " の gW",
                       hint=pick_hint(gW, {"N で割っています。データごとの勾配は、平均の前の 1 つ 1 つの勾配です。": gW_ref / N,
                                           "軸の順番が違います。gW[n] は x[n] と g[n] の外積 (D, C) です（einsum なら 'nd,nc->ndc'）。":
                                               gW_ref.transpose(0, 2, 1) if D != C else gW_ref * np.nan},
                                      shape_hint))
    # データについてのループがないこと（N が大きくても、実行される行の数が増えない）
    N, D, C = 300, 5, 4
    W = rng.standard_normal((D, C)).astype(np.float32)
    b = np.zeros(C, np.float32)
    x = rng.standard_normal((N, D)).astype(np.float32)
    t = rng.integers(0, C, size=N)
    _, lines = ex.traced(ex.obj, W, b, x, t)
    if lines > 100:
        ex.fail(f"N={N} で答えのセルの行が {lines} 回実行されました。データについてのループを使わずに書きます。",
                inputs=f"N={N}, D={D}, C={C}", show_values=False,
                hint="np.einsum('nd,nc->ndc', x, g) か、x[:, :, None] * g[:, None, :] で、全データの外積を一度に作れます。")


# --- 練習 22-3: PyTorch の重みを mini_dl の並びに ----------------------------------------------------------


def test_ex22_3_torch_state_to_params(exercise, rng):
    ex = exercise("22-3", "torch_state_to_params")
    for n_layers in [1, 2, int(rng.integers(3, 5)), 7]:
        sizes = [int(rng.integers(2, 7)) for _ in range(n_layers + 1)]
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers.append((rng.standard_normal((b, a)).astype(np.float32), rng.standard_normal(b).astype(np.float32)))
        items = []
        for k, (w, bias) in enumerate(layers):
            items += [(f"{2 * k}.weight", w), (f"{2 * k}.bias", bias)]
        order = rng.permutation(len(items))
        state = {items[i][0]: items[i][1].copy() for i in order}  # 辞書の順番はばらばら
        inputs = f"層の大きさ {sizes}、名前 {list(state)}"
        got = ex.run(ex.obj, state)
        if not isinstance(got, (list, tuple)) or len(got) != n_layers:
            ex.fail(f"{n_layers} 個の (W, b) の組のリストを返してください。", inputs=inputs,
                    expected=f"{n_layers} 個の組", actual=got)
        for k, ((w, bias), pair) in enumerate(zip(layers, got)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                ex.fail(f"{k + 1} 番目の要素は (W, b) の組にします。", inputs=inputs, expected="(W, b)", actual=pair)
            W, b = (np.asarray(a) for a in pair)
            if W.shape == w.shape and W.shape != w.T.shape:
                ex.fail(f"{k + 1} 層目の W の shape が (out, in) のままです。", inputs=inputs, expected=w.T.shape,
                        actual=W.shape, hint="PyTorch の weight は (out, in) です。mini_dl の (in, out) にするには .T で転置します。")
            if W.shape != w.T.shape:
                hint = ("層の順番が違います。名前を文字列のまま並べると '10.weight' が '2.weight' より前に来ます。"
                        "'.' の前の数を int にして並べます。") if any(W.shape == v.T.shape for v, _ in layers) else None
                ex.fail(f"{k + 1} 層目の W の shape が違います。", inputs=inputs, expected=w.T.shape, actual=W.shape, hint=hint)
            ex.check_close(W, w.T, rtol=0, atol=0, inputs=f"{inputs} の {k + 1} 層目の W",
                           hint="層の順番は、名前の数（0, 2, 4, …）の小さい順です。文字列のままではなく int にして並べます。"
                           if n_layers > 5 else "W は weight.T です（正方行列なら、転置し忘れても shape は合います）。")
            ex.check_close(b, bias, rtol=0, atol=0, inputs=f"{inputs} の {k + 1} 層目の b",
                           hint="b は '.bias' の配列そのものです（同じ層の番号のもの）。")
            if W.dtype != np.float32 or b.dtype != np.float32:
                ex.fail("dtype を float32 にします。", inputs=inputs, expected="float32", actual=(W.dtype, b.dtype))
        # 写した重みで、PyTorch と同じ出力になる
        x = rng.standard_normal((3, sizes[0])).astype(np.float32)
        h_t, h_m = x, x
        for k, ((w, bias), (W, b)) in enumerate(zip(layers, got)):
            h_t, h_m = h_t @ w.T + bias, h_m @ np.asarray(W) + np.asarray(b)
            if k < n_layers - 1:
                h_t, h_m = np.maximum(h_t, 0), np.maximum(h_m, 0)
        ex.check_close(h_m, h_t, rtol=1e-5, atol=1e-5, inputs=inputs + " の MLP の出力")


# --- 練習 22-4: 1 ステップの時間の見積もり ----------------------------------------------------------------


def test_ex22_4_step_time_model(exercise, rng):
    ex = exercise("22-4", "step_time_model")
    cases = [(30, 2e-6, (784, 100, 10), 100, 50e9), (30, 2e-6, (784, 1000, 1000, 10), 100, 50e9)]
    for _ in range(6):
        sizes = tuple(int(v) for v in rng.integers(2, 2000, size=int(rng.integers(2, 6))))
        cases.append((int(rng.integers(1, 200)), float(rng.uniform(0.2, 20)) * 1e-6, sizes, int(rng.integers(1, 512)),
                      float(rng.uniform(1, 500)) * 1e9))
    for n_ops, per_op, sizes, batch, speed in cases:
        macs = sum(a * b for a, b in zip(sizes, sizes[1:]))
        over = n_ops * per_op
        sec = over + 6 * batch * macs / speed
        inputs = f"step_time_model({n_ops}, {per_op:.3g}, {sizes}, {batch}, {speed:.3g})"
        got = ex.run(ex.obj, n_ops, per_op, sizes, batch, speed)
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(seconds, overhead_fraction) の組を返してください。", inputs=inputs, expected=(sec, over / sec), actual=got)
        wrong = {"順伝播の 2·batch·in·out だけを数えています。逆伝播の 2 つの行列積（gW と gx）も足して、6 倍にします。":
                 over + 2 * batch * macs / speed,
                 "逆伝播の行列積は 2 つ（gW = x^T G と gx = G W^T）です。合わせて順伝播の 3 倍（6·batch·in·out）です。":
                 over + 4 * batch * macs / speed,
                 "1 回の積和を 2 FLOP（掛け算と足し算）と数えます。": over + 3 * batch * macs / speed,
                 "オーバーヘッドの項（n_ops × per_op_s）を足し忘れています。": 6 * batch * macs / speed}
        ex.check_close(got[0], sec, rtol=1e-6, atol=0, inputs=inputs + " の seconds",
                       hint=pick_hint(got[0], wrong, "seconds = n_ops·per_op_s + 6·batch·Σ(in·out) / flops_per_s です。",
                                      rtol=1e-6, atol=0))
        ex.check_close(got[1], over / sec, rtol=1e-6, atol=1e-12, inputs=inputs + " の overhead_fraction",
                       hint=pick_hint(got[1], {"計算の割合を返しています。オーバーヘッドの割合は n_ops·per_op_s / seconds です。":
                                               1 - over / sec,
                                               "割合は 0〜1 です（オーバーヘッド ÷ 全体の時間）。": sec / over},
                                      "overhead_fraction = (n_ops·per_op_s) / seconds です。", rtol=1e-6, atol=0))


# --- 練習 22-5: アムダールの法則 -------------------------------------------------------------------------


def test_ex22_5_amdahl_speedup(exercise, rng):
    ex = exercise("22-5", "amdahl_speedup")
    cases = [(0.8, np.inf), (0.8, 10.0), (0.0, 5.0), (1.0, 4.0), (0.5, 1.0)]
    cases += [(float(rng.uniform(0, 0.99)), float(rng.uniform(1, 100))) for _ in range(6)]
    cases += [(float(rng.uniform(0, 0.99)), np.inf)]
    for f, s in cases:
        expected = 1 / ((1 - f) + (0 if np.isinf(s) else f / s))
        inputs = f"amdahl_speedup({f:.4g}, {s})"
        got = ex.run(ex.obj, f, s)
        wrong = {"f と 1 - f が入れ替わっています。速くなるのは割合 f の部分で、残りの 1 - f はそのままです。":
                 1 / (f + (0 if np.isinf(s) else (1 - f) / s)),
                 "倍率は時間の比の逆数です。新しい時間 (1 - f) + f/s で 1 を割ります。":
                 (1 - f) + (0 if np.isinf(s) else f / s)}
        if not isinstance(got, (float, np.floating)):
            ex.fail("float を返してください。", inputs=inputs, expected=expected, actual=got)
        ex.check_close(got, expected, rtol=1e-9, atol=0, inputs=inputs,
                       hint=pick_hint(got, wrong, "1 / ((1 - f) + f / s) です。s が inf なら f / s は 0 です。", rtol=1e-9, atol=0))
    with ex.context(inputs="amdahl_speedup(1.0, inf)", hint="f = 1、s = inf では分母が 0 になります。0 で割らずに np.inf を返します。"):
        got = ex.run(ex.obj, 1.0, np.inf)
    if not (isinstance(got, (float, np.floating)) and np.isinf(got) and got > 0):
        ex.fail("f = 1、s = inf なら、全体が 0 秒になるので np.inf を返します。", inputs="amdahl_speedup(1.0, inf)",
                expected=np.inf, actual=got, hint="分母が 0 になるときは、0 で割らずに np.inf を返します。")
