"""第18章の隠しテスト（因果マスク・オンラインソフトマックス・KV キャッシュの 1 ステップ・位置エンコーディング・GQA の費用）。

よくある間違い（左上にそろえる、対角を含めない、向きが逆、それまでの和を直し忘れる、最大値の初期値を 0 にする、
新しいキーをつなぎ忘れる、√D で割り忘れる、sin と cos の入れ替え、2i ではなく i を使う、バイアスの数え忘れ、
キーと値の 2 を掛け忘れる）は、テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import numpy as np

import mini_dl.layers as L
from grader import pick_hint

# --- 練習 18-1: 因果マスク --------------------------------------------------------------------------


def _mask_mistakes(Lq, Lk):
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    right = j <= i + (Lk - Lq)
    return {
        "左上にそろえています（np.tril(np.ones((Lq, Lk)))）。KV キャッシュのように Lq < Lk のときは、右下にそろえて"
        "クエリ i がキー j ≤ i + (Lk - Lq) を見るようにします。": j <= i,
        "対角（自分自身）も見てよい場所です。< ではなく <= で比べます。": j < i + (Lk - Lq),
        "向きが逆です。True は「見てよい場所」（過去と自分）で、未来が False です。": ~right,
        "上三角になっています。行がクエリ i、列がキー j です（i と j の役割を入れ替えていませんか）。": (i <= j + (Lk - Lq)) if Lq == Lk else ~right,
    }


def test_ex18_1_causal_mask(exercise, rng):
    ex = exercise("18-1", "causal_mask")
    cases = [(1, 1), (3, 3), (2, 5), (1, 6)] + [(int(a), int(a + b)) for a, b in zip(rng.integers(1, 8, 6), rng.integers(0, 5, 6))]
    for Lq, Lk in cases:
        expected = np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + (Lk - Lq)
        got = ex.run(ex.obj, Lq, Lk)
        inputs = f"causal_mask({Lq}, {Lk})"
        arr = np.asarray(got) if got is not None else None
        if arr is None or arr.shape != expected.shape:
            ex.fail(f"shape ({Lq}, {Lk}) の配列を返してください。", inputs=inputs, expected=expected, actual=got)
        if arr.dtype != bool:
            ex.fail("dtype が bool ではありません。", inputs=inputs, expected=expected, actual=got,
                    hint="比較（<=）の結果はそのまま bool の配列です。astype(int) や np.tril(np.ones(...)) は float や int になります。"
                    if not np.array_equal(arr.astype(bool), expected) else
                    "値は合っています。np.tril(np.ones(...)) は float なので、.astype(bool) で真偽値にします。")
        if not np.array_equal(arr, expected):
            ex.fail("答えが違います。", inputs=inputs, expected=expected.astype(int), actual=arr.astype(int),
                    hint=pick_hint(arr, {k: v.astype(np.float64) for k, v in _mask_mistakes(Lq, Lk).items()},
                                   "クエリ i はキー j ≤ i + (Lk - Lq) を見ます（右下にそろえる）。", rtol=0, atol=0))


# --- 練習 18-2: オンラインソフトマックス -----------------------------------------------------------------


def _split(x, rng):
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=min(len(x) - 1, int(rng.integers(1, 5))), replace=False))
    return np.split(x, cuts)


def _stats_mistakes(blocks):
    x = np.concatenate(blocks)
    m = x.max()
    wrong = {}
    # それまでの和を直し忘れる
    mm, ll = -np.inf, 0.0
    for b in blocks:
        mn = max(mm, b.max())
        ll = ll + np.exp(b - mn).sum()
        mm = mn
    wrong["最大値が増えたら、それまでの和 l に exp(m - m_new) を掛けて新しい最大値に合わせます（掛け忘れていませんか）。"] = (mm, ll)
    # 最後のブロックの最大値だけ
    last = blocks[-1]
    wrong["m は最後のブロックだけでなく、すべての値の最大値です。"] = (last.max(), np.exp(x - last.max()).sum())
    wrong["和は exp(x - m) の和です（最大値を引かずに exp(x) を足していませんか）。"] = (m, np.exp(x).sum())
    return float(m), float(np.exp(x - m).sum()), wrong


def _check_stats(ex, got, m, l, inputs, wrong):
    if not isinstance(got, tuple) or len(got) != 2:
        ex.fail("(m, l) の組（タプル）を返してください。", inputs=inputs, expected=(m, l), actual=got)
    gm, gl = got
    hint = pick_hint(np.array([float(gm), float(gl)]), {k: np.array(v, dtype=np.float64) for k, v in wrong.items()},
                     "m' = max(m, ブロックの最大値)、l' = exp(m - m') l + Σ exp(x - m') です。初期値は m = -inf、l = 0 です。",
                     rtol=1e-6, atol=0)
    if not np.isfinite(float(gl)):
        ex.fail("l が inf か nan になりました。", inputs=inputs, expected=(m, l), actual=got,
                hint="exp を計算する前に、最大値を引きます（exp(x - m)）。大きな値の exp はあふれます。")
    if float(gm) != m:
        ex.fail("m が最大値と違います。", inputs=inputs, expected=(m, l), actual=got,
                hint=hint if hint.startswith(("m は", "最大値")) else
                "m は、すべての値の最大値です。初期値を 0 にすると、すべての値が負のとき最大値になりません（-np.inf から始めます）。")
    if not np.isclose(float(gl), l, rtol=1e-6, atol=0):
        ex.fail("l が違います。", inputs=inputs, expected=(m, l), actual=got, hint=hint)


def test_ex18_2_online_softmax_stats(exercise, rng):
    ex = exercise("18-2", "online_softmax_stats")
    for trial in range(12):
        n = int(rng.integers(2, 20))
        scale = [1.0, 10.0, 300.0][trial % 3]
        x = rng.standard_normal(n) * scale + (1000.0 if trial % 4 == 3 else -50.0 if trial % 4 == 2 else 0.0)
        blocks = _split(x, rng)
        m, l, wrong = _stats_mistakes(blocks)
        inputs = f"ブロック {[np.round(b, 2).tolist() for b in blocks]}"
        got = ex.run(ex.obj, (b.copy() for b in blocks))  # ジェネレータ: 1 回しか読めない
        _check_stats(ex, got, m, l, inputs, wrong)


def test_ex18_2_online_softmax_gives_the_softmax(exercise, rng):
    ex = exercise("18-2", "online_softmax_stats")
    x = rng.standard_normal(50) * 5
    m, l = ex.run(ex.obj, iter(np.array_split(x, 7)))
    p = np.exp(x - float(m)) / float(l)
    ref = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    if not np.allclose(p, ref, rtol=1e-6, atol=1e-12):
        ex.fail("exp(x - m) / l がソフトマックスになりません。", inputs="50 個の値を 7 つのブロックで", expected=ref[:4],
                actual=p[:4], hint="l は exp(x - m) の和です。m と l が同じ最大値を基準にしているか確かめます。")


# --- 練習 18-3: KV キャッシュの 1 ステップ ------------------------------------------------------------


def _attend(q, k, v, scale=True):
    s = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 2, 1)
    if scale:
        s = s / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v.astype(np.float64)


def test_ex18_3_kv_cache_step(exercise, rng):
    ex = exercise("18-3", "kv_cache_step")
    for _ in range(4):
        H, D, steps = int(rng.integers(1, 4)), int(rng.integers(2, 9)), int(rng.integers(2, 6))
        ks, vs = [], []
        kc = vc = None
        for t in range(steps):
            q, k, v = (rng.standard_normal((H, 1, D)).astype(np.float32) * 2 for _ in range(3))
            old_k = None if kc is None else np.array(kc)
            old_v = None if vc is None else np.array(vc)
            ks.append(k)
            vs.append(v)
            K, V = np.concatenate(ks, axis=1), np.concatenate(vs, axis=1)
            inputs = f"H={H}, D={D}, {t + 1} ステップ目（キャッシュ {t} 個）"
            got = ex.run(ex.obj, q, k, v, kc, vc)
            if not isinstance(got, tuple) or len(got) != 3:
                ex.fail("(out, k_cache, v_cache) の 3 つの組を返してください。", inputs=inputs, expected="3 つの組", actual=got)
            out, kc, vc = got
            ex.check_close(kc, K, rtol=0, atol=0, inputs=inputs + " の k_cache",
                           hint="新しいキーはキャッシュの後ろ（軸 1、トークンの軸）につなぎます: np.concatenate([k_cache, k_new], axis=1)。")
            ex.check_close(vc, V, rtol=0, atol=0, inputs=inputs + " の v_cache",
                           hint="新しい値も、キャッシュの後ろ（軸 1）につなぎます。")
            expected = _attend(q, K, V)
            wrong = {"スコアを √D で割り忘れていませんか。": _attend(q, K, V, scale=False)}
            if old_k is not None:
                wrong["新しいキーと値をつなぐ前のキャッシュで注意をとっています。先につないでから、すべてのキーを見ます。"] = \
                    _attend(q, old_k, old_v)
            ex.check_close(out, expected, rtol=1e-4, atol=1e-5, inputs=inputs + " の out",
                           hint=pick_hint(out, wrong, "softmax(q k^T / √D) v を、つないだ後のすべてのキーと値で計算します。", atol=1e-4))
            if np.asarray(out).dtype != np.float32:
                ex.fail("out の dtype が float32 ではありません。", inputs=inputs, expected="float32", actual=np.asarray(out).dtype,
                        hint="np.sqrt(D) は float64 なので、float32 の配列を割ると NumPy 2 でも float32 のままですが、"
                             "float64 の配列を作っていないか確かめます（.astype(q.dtype)）。")


# --- 練習 18-4: 位置エンコーディング -------------------------------------------------------------------


def _pe(length, dim, mode="ok"):
    p = np.arange(length)[:, None]
    k = np.arange(dim // 2)[None, :]
    expo = k / dim if mode == "i" else 2 * k / dim
    angle = p / 10000 ** expo
    pe = np.zeros((length, dim))
    a, b = (np.cos, np.sin) if mode == "swap" else (np.sin, np.cos)
    pe[:, 0::2] = a(angle)
    pe[:, 1::2] = b(angle)
    return pe


def test_ex18_4_positional_encoding(exercise, rng):
    ex = exercise("18-4", "positional_encoding")
    for length, dim in [(1, 2), (4, 6), (int(rng.integers(5, 40)), 2 * int(rng.integers(2, 17)))]:
        got = ex.run(ex.obj, length, dim)
        inputs = f"positional_encoding({length}, {dim})"
        ex.check_close(got, _pe(length, dim), rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint=pick_hint(got, {"偶数番目の成分が sin、奇数番目が cos です（入れ替わっています）。": _pe(length, dim, "swap"),
                                            "指数は 2i/D です（i は組の番号、2i が偶数番目の成分の番号）。i/D になっていませんか。":
                                                _pe(length, dim, "i")},
                                      "PE[p, 2i] = sin(p / 10000^(2i/D))、PE[p, 2i+1] = cos(同じ角度) です。", atol=1e-4))
        if np.asarray(got).dtype != np.float32:
            ex.fail("dtype が float32 ではありません。", inputs=inputs, expected="float32", actual=np.asarray(got).dtype,
                    hint="np.zeros((length, dim), dtype=np.float32) で作るか、最後に .astype(np.float32) します。")


# --- 練習 18-5: GQA の費用 ------------------------------------------------------------------------------


def _costs(D, H, Hkv, layers, tokens, nbytes):
    kv = Hkv * (D // H)
    return 2 * (D * D + D) + 2 * (D * kv + kv), 2 * layers * kv * tokens * nbytes


def test_ex18_5_gqa_costs(exercise, rng):
    ex = exercise("18-5", "gqa_costs")
    cases = [(64, 4, 4, 2, 32, 4), (64, 4, 1, 2, 32, 4), (8192, 64, 8, 80, 4096, 2)]
    for _ in range(5):
        H = int(rng.choice([2, 4, 8]))
        Hkv = int(rng.choice([h for h in (1, 2, 4, 8) if H % h == 0]))
        cases.append((H * int(rng.integers(2, 17)), H, Hkv, int(rng.integers(1, 13)), int(rng.integers(1, 2000)),
                      int(rng.choice([1, 2, 4]))))
    for D, H, Hkv, layers, tokens, nbytes in cases:
        expected = _costs(D, H, Hkv, layers, tokens, nbytes)
        inputs = f"gqa_costs({D}, {H}, {Hkv}, layers={layers}, tokens={tokens}, bytes_per_value={nbytes})"
        got = ex.run(ex.obj, D, H, Hkv, layers, tokens, nbytes)
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(params, cache_bytes) の組を返してください。", inputs=inputs, expected=expected, actual=got)
        kv = Hkv * (D // H)
        p_hints = {"バイアスも数えます（4 つの写像それぞれに出力の長さぶん）。": 2 * D * D + 2 * D * kv,
                   "キーと値の写像の出力は D ではなく H_kv・D_h です（GQA ではキーと値が小さくなります）。": 4 * (D * D + D)}
        c_hints = {"キーと値の 2 つぶんを数えます（2 を掛け忘れていませんか）。": layers * kv * tokens * nbytes,
                   "キャッシュに入るのはキーと値のヘッド H_kv 個ぶんです（H 個ではありません）。": 2 * layers * D * tokens * nbytes,
                   "バイト数は、数の個数に bytes_per_value を掛けます。": 2 * layers * kv * tokens}
        if got[0] != expected[0]:
            ex.fail("パラメータの数が違います。", inputs=inputs, expected=expected, actual=got,
                    hint=pick_hint(got[0], p_hints, "W^Q と W^O は D×D + D、W^K と W^V は D×(H_kv D_h) + H_kv D_h です。", rtol=0, atol=0))
        if got[1] != expected[1]:
            ex.fail("KV キャッシュのバイト数が違います。", inputs=inputs, expected=expected, actual=got,
                    hint=pick_hint(got[1], c_hints, "2（キーと値）× 層 × H_kv × D_h × トークン × バイトです。", rtol=0, atol=0))
    # mini_dl の層と同じ数になること
    mha = L.MultiHeadAttention(16, 4, num_kv_heads=2, seed=0)
    mha(np.zeros((1, 3, 16), dtype=np.float32))
    n = int(np.sum([p.size for p in mha.params()]))
    got = ex.run(ex.obj, 16, 4, 2, 1, 1, 4)
    if got[0] != n:
        ex.fail("L.MultiHeadAttention(16, 4, num_kv_heads=2) のパラメータの数と違います。", inputs="gqa_costs(16, 4, 2, 1, 1, 4)",
                expected=n, actual=got[0])
