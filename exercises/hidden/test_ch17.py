"""第17章の隠しテスト（LSTM と GRU の 1 時刻・勾配のクリップ・パラメータの数・並んだ流れ）。

よくある間違い（ゲートの並び、tanh の付け忘れ、z と 1 - z の取り違え、r を掛ける場所、パラメータごとのクリップ、
その場での書き換え、PyTorch の 2 つのバイアス、流れの並べ方）は、テストの中で同じ間違いをした答えを作って見比べ、
当てはまればそのことをヒントで伝えます。正しい値は、mini_dl を使わずに NumPy（float64）で計算します。
"""
import math

import numpy as np

from grader import pick_hint


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _as_pair(ex, got, inputs):
    if not isinstance(got, tuple) or len(got) != 2:
        ex.fail("(h_new, c_new) の 2 つの組（タプル）を返してください。", inputs=inputs, expected="(h_new, c_new)",
                actual=got, hint="`return h_new, c_new` と書きます。")
    return got


# --- 練習 17-1: LSTM の 1 時刻 --------------------------------------------------------------------

def _lstm(x, h, c, Wx, Wh, b, order="ifgo", g_act=np.tanh, use_i=True, h_of_c=np.tanh):
    H = h.shape[1]
    a = x @ Wx + h @ Wh + b
    parts = {k: a[:, n * H:(n + 1) * H] for n, k in enumerate(order)}
    i, f, o = _sigmoid(parts["i"]), _sigmoid(parts["f"]), _sigmoid(parts["o"])
    g = g_act(parts["g"])
    c_new = f * c + (i * g if use_i else g)
    return o * h_of_c(c_new), c_new


def _lstm_inputs(rng, dtype=np.float64):
    N, D, H = int(rng.integers(2, 5)), int(rng.integers(2, 6)), int(rng.integers(2, 5))
    arrays = (rng.standard_normal((N, D)), 0.5 * rng.standard_normal((N, H)), rng.standard_normal((N, H)),
              0.5 * rng.standard_normal((D, 4 * H)), 0.5 * rng.standard_normal((H, 4 * H)), 0.3 * rng.standard_normal(4 * H))
    return [a.astype(dtype) for a in arrays], (N, D, H)


def _check_lstm(ex, args, inputs, rtol, atol, check_dtype=False):
    h_new, c_new = _as_pair(ex, ex.run(ex.obj, *[a.copy() for a in args]), inputs)
    args64 = [a.astype(np.float64) for a in args]
    h_ref, c_ref = _lstm(*args64)
    wrong = {
        "ゲートの並びは i, f, g, o です（PyTorch と同じ）。a の列を H 個ずつ、この順に切り分けます。":
            _lstm(*args64, order="ifog"),
        "候補 g は tanh です（シグモイドではありません）。i, f, o がシグモイドです。": _lstm(*args64, g_act=_sigmoid),
        "新しい候補は入力ゲートを掛けて i * g として足します。c_new = f * c + i * g です。": _lstm(*args64, use_i=False),
        "h_new = o * tanh(c_new) です。記憶セルに tanh を掛けてから出力ゲートを掛けます。":
            _lstm(*args64, h_of_c=lambda v: v),
        "忘却ゲートと入力ゲートが逆です。前の記憶に掛けるのが f（2 番目のかたまり）、候補に掛けるのが i（1 番目）です。":
            _lstm(*args64, order="figo"),
    }
    for k, (got, expected, default) in enumerate(((c_new, c_ref, "c_new = f * c + i * g です。"),
                                                   (h_new, h_ref, "h_new = o * tanh(c_new) です。"))):
        hint = pick_hint(got, {key: v[1 - k] for key, v in wrong.items()}, default, rtol=rtol, atol=atol)
        ex.check_close(got, expected, rtol=rtol, atol=atol, inputs=inputs, hint=hint)
        if check_dtype:
            ex.check_close(got, expected.astype(args[0].dtype), rtol=rtol, atol=atol, check_dtype=True, inputs=inputs,
                           hint="float32 の入力には float32 を返します。np.exp(-a) などは dtype を保ちます。"
                                "float64 の配列（np.zeros の既定など）を作って混ぜていませんか。")


def test_ex17_1_lstm_step_matches_the_equations(exercise, rng):
    ex = exercise("17-1", "lstm_step")
    for _ in range(3):
        args, (N, D, H) = _lstm_inputs(rng)
        _check_lstm(ex, args, f"N={N}, D={D}, H={H} の乱数の x, h, c, Wx (D, 4H), Wh (H, 4H), b (4H,)", 1e-6, 1e-8)


def test_ex17_1_lstm_step_keeps_float32(exercise, rng):
    ex = exercise("17-1", "lstm_step")
    args, (N, D, H) = _lstm_inputs(rng, np.float32)
    _check_lstm(ex, args, f"float32 の入力（N={N}, D={D}, H={H}）", 1e-4, 1e-5, check_dtype=True)


# --- 練習 17-2: GRU の 1 時刻 ---------------------------------------------------------------------

def _gru(x, h, Wx, Wh, b, bh, swap_z=False, r_before=False, no_bh=False):
    H = h.shape[1]
    bh = np.zeros_like(bh) if no_bh else bh
    gx, gh = x @ Wx + b, h @ Wh + bh
    r = _sigmoid(gx[:, :H] + gh[:, :H])
    z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    if r_before:
        n = np.tanh(gx[:, 2 * H:] + (r * h) @ Wh[:, 2 * H:] + bh[2 * H:])
    else:
        n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    return z * n + (1 - z) * h if swap_z else (1 - z) * n + z * h


def test_ex17_2_gru_step_matches_pytorch_equations(exercise, rng):
    ex = exercise("17-2", "gru_step")
    for _ in range(3):
        N, D, H = int(rng.integers(2, 5)), int(rng.integers(2, 6)), int(rng.integers(2, 5))
        args = (rng.standard_normal((N, D)), 0.5 * rng.standard_normal((N, H)), 0.5 * rng.standard_normal((D, 3 * H)),
                0.5 * rng.standard_normal((H, 3 * H)), 0.3 * rng.standard_normal(3 * H), 0.3 * rng.standard_normal(3 * H))
        inputs = f"N={N}, D={D}, H={H} の乱数の x, h, Wx (D, 3H), Wh (H, 3H), b (3H,), bh (3H,)"
        got = ex.run(ex.obj, *[a.copy() for a in args])
        wrong = {
            "h_new = (1 - z) * n + z * h です（z が 1 に近いと前の状態を残します）。z と 1 - z が逆です。":
                _gru(*args, swap_z=True),
            "PyTorch の GRU では、r は状態側の行列積のあとに掛けます: r * (h @ Wh_n + bh_n)。"
            "(r * h) @ Wh_n は、元の論文の別の形です。": _gru(*args, r_before=True),
            "状態側のバイアス bh も足します（gh = h @ Wh + bh）。": _gru(*args, no_bh=True),
        }
        hint = pick_hint(got, wrong, "r, z, n の順に 3 つのかたまりに切り分け、本文 17.7 節の式のとおりに計算します。")
        ex.check_close(got, _gru(*args), rtol=1e-6, atol=1e-8, inputs=inputs, hint=hint)


# --- 練習 17-3: 勾配のノルムのクリップ ------------------------------------------------------------

def _grads(rng, scale):
    shapes = [tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 3)))) for _ in range(int(rng.integers(2, 5)))]
    return [(scale * rng.standard_normal(s)).astype(np.float32) for s in shapes]


def _clip_ref(grads, max_norm):
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    rate = max_norm / (total + 1e-6)
    return [g * rate if rate < 1 else g for g in grads], total


def _check_clip(ex, grads, max_norm, label):
    originals = [g.copy() for g in grads]
    inputs = f"{label}: shape {[g.shape for g in grads]} の float32 の勾配、max_norm={max_norm}"
    got = ex.run(ex.obj, grads, max_norm)
    if not isinstance(got, tuple) or len(got) != 2:
        ex.fail("(縮めた勾配のリスト, クリップ前のノルム) の組を返してください。", inputs=inputs,
                expected="(list, float)", actual=got)
    new, total = got
    expected, total_ref = _clip_ref(originals, max_norm)
    if any(not np.array_equal(g, o) for g, o in zip(grads, originals)):
        ex.fail("渡された勾配の配列を書き換えています。", inputs=inputs, show_values=False,
                hint="勾配は別のパラメータと共有されていることがあるので、g *= rate ではなく g * rate で新しい配列を作ります。")
    ex.check_close(total, total_ref, rtol=1e-5, inputs=inputs,
                   hint=pick_hint(total, {"返すノルムは、縮める **前** のノルムです。": min(total_ref, max_norm)},
                                  "すべての勾配の 2 乗の和の平方根です（パラメータごとのノルムではありません）。"))
    if not isinstance(new, (list, tuple)) or len(new) != len(expected):
        ex.fail(f"勾配を {len(expected)} 個のリストで返してください。", inputs=inputs, expected=f"{len(expected)} 個の配列",
                actual=new)
    per_param = [g * min(1.0, max_norm / (np.sqrt((g.astype(np.float64) ** 2).sum()) + 1e-6)) for g in originals]
    always = [g * (max_norm / (total_ref + 1e-6)) for g in originals]
    for k, (g, e) in enumerate(zip(new, expected)):
        hint = pick_hint(g, {
            "パラメータごとに縮めています。すべての勾配をまとめた 1 つのノルムで、全体を同じ倍率で縮めます（向きを変えないため）。":
                per_param[k],
            "ノルムが max_norm 以下のときは、勾配を変えずにそのまま返します（大きくはしません）。": always[k],
        }, "倍率は max_norm / (ノルム + 1e-6) で、1 より小さいときだけ掛けます。")
        ex.check_close(g, e, rtol=1e-5, atol=1e-7, inputs=inputs + f"（{k} 番目の勾配）", hint=hint)


def test_ex17_3_clips_large_gradients(exercise, rng):
    ex = exercise("17-3", "clip_grads")
    for _ in range(3):
        _check_clip(ex, _grads(rng, 10.0), float(rng.uniform(0.5, 2.0)), "大きな勾配")


def test_ex17_3_leaves_small_gradients_alone(exercise, rng):
    ex = exercise("17-3", "clip_grads")
    _check_clip(ex, _grads(rng, 0.01), 5.0, "小さな勾配")


# --- 練習 17-4: パラメータの数 --------------------------------------------------------------------

def test_ex17_4_counts_parameters_of_mini_dl_layers(exercise, rng):
    ex = exercise("17-4", "count_params")
    gates = {"rnn": 1, "lstm": 4, "gru": 3}
    for _ in range(6):
        kind = ["rnn", "lstm", "gru"][int(rng.integers(0, 3))]
        D, H = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        G = gates[kind]
        expected = G * (D * H + H * H + H) + (G * H if kind == "gru" else 0)
        got = ex.run(ex.obj, kind, D, H)
        wrong = {
            "ゲートの数を掛けていません。LSTM は 4 つ、GRU は 3 つのかたまりを横に並べた行列です。": D * H + H * H + H,
            "mini_dl の LSTM と RNN のバイアスは b の 1 つだけです（PyTorch は b_ih と b_hh の 2 つ）。":
                G * (D * H + H * H + 2 * H),
            "GRU は状態側のバイアス bh (3H,) も持ちます。": G * (D * H + H * H + H),
            "Wx は (D, G·H)、Wh は (H, G·H) です。Wh の H * H を忘れていませんか。": G * (D * H + H),
        }
        wrong = {k: v for k, v in wrong.items() if v != expected}
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)) or got != expected:
            ex.fail("答えが違います。", inputs=f"count_params({kind!r}, in_size={D}, hidden_size={H})",
                    expected=expected, actual=got,
                    hint=pick_hint(got, wrong, "Wx (D, G·H)・Wh (H, G·H)・b (G·H,) の要素の数を足します（G はゲートの数）。",
                                   rtol=0, atol=0))


# --- 練習 17-5: 並んだ流れ ------------------------------------------------------------------------

def _streams_ref(ids, B):
    jump = (len(ids) - 1) // B
    k = np.arange(jump)[:, None] + (np.arange(B) * jump)[None, :]
    return ids[k], ids[k + 1]


def test_ex17_5_splits_a_sequence_into_parallel_streams(exercise, rng):
    ex = exercise("17-5", "to_streams")
    for trial in range(4):
        B = int(rng.integers(2, 6))
        n = B * int(rng.integers(5, 15)) if trial == 0 else int(rng.integers(20, 60))  # 割り切れる長さも試す
        ids = rng.integers(0, 1000, size=n)
        inputs = f"長さ {n} の番号の列、batch_size={B}"
        with ex.context(inputs=inputs, hint="1 本の長さは jump = (n - 1) // B です。ts は 1 つ先なので、"
                                            "ids[1:jump * B + 1] を (B, jump) にしてから転置します。"):
            got = ex.run(ex.obj, ids.copy(), B)
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(xs, ts) の組を返してください。", inputs=inputs, expected="(xs, ts)", actual=got)
        xs, ts = got
        x_ref, t_ref = _streams_ref(ids, B)
        jump = (n - 1) // B
        wrong_x = {
            "b 本目の流れは b * jump から始まる続きの区間です。ids[:jump * B] を (B, jump) にしてから転置し、(jump, B) にします。":
                ids[:jump * B].reshape(jump, B),
            "正解は 1 つ先の番号なので、入力に使えるのは最後の 1 つを除いた n - 1 個です。jump = (n - 1) // B です。":
                ids[:(n // B) * B].reshape(B, n // B).T,
        }
        wrong_x_keys = list(wrong_x)
        hint = pick_hint(xs, wrong_x, "xs[k, b] = ids[b * jump + k] です。")
        if np.shape(xs) == (n // B, B) and n // B != jump:
            hint = wrong_x_keys[1]
        ex.check_close(xs, x_ref, rtol=0, atol=0, inputs=inputs, hint=hint)
        ex.check_close(ts, t_ref, rtol=0, atol=0, inputs=inputs,
                       hint=pick_hint(ts, {"ts は xs の 1 つ先（ids[b * jump + k + 1]）です。": x_ref},
                                      "ts[k, b] = ids[b * jump + k + 1] です。"))
