"""第21章の隠しテスト（データの区間・リング allreduce の順番・通信の費用・ZeRO のメモリ・パイプラインのバブル）。

よくある間違い（余りを最後のランクに寄せる、切り上げで分ける、余りを捨てる、mod を忘れる、後半の歩の番号を
数え直さない、送る塊と受け取る塊の取り違え、2 を掛け忘れる、p と p - 1 の取り違え、ステージで分けるものの
取り違え、バブルを (p - 1) / m で近似する）は、テストの中で同じ間違いをした答えを作って見比べ、当てはまれば
そのことをヒントで伝えます。
"""
import numpy as np

from grader import pick_hint

# --- 練習 21-1: ランク r の区間 ----------------------------------------------------------------------


def _bounds(n, size):
    base, extra = divmod(n, size)
    out, lo = [], 0
    for r in range(size):
        hi = lo + base + (1 if r < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _bounds_mistakes(n, rank, size):
    base, extra = divmod(n, size)
    ceil = -(-n // size)
    return {
        "余りを最後のランクにまとめています。長さの違いが高々 1 になるように、余りは前のランクから 1 個ずつ配ります。":
            (rank * base, n if rank == size - 1 else (rank + 1) * base),
        "切り上げ（ceil(n / size)）の長さで分けています。それでは 10 個を 4 つに分けると 3, 3, 3, 1 になります。"
        "np.array_split と同じく、長さは 3, 3, 2, 2 にします。": (min(rank * ceil, n), min((rank + 1) * ceil, n)),
        "余り n % size の分を捨てています。余りは前のランクから 1 個ずつ多く持たせて、0 から n までをすべて覆います。":
            (rank * base, (rank + 1) * base),
        "余りを後ろのランクに配っています。前のランク（rank < n % size）が 1 個多く持ちます。":
            (rank * base + max(0, rank - (size - extra)), (rank + 1) * base + max(0, rank + 1 - (size - extra))),
    }


def test_ex21_1_shard_bounds(exercise, rng):
    ex = exercise("21-1", "shard_bounds")
    cases = [(10, 4), (3, 5), (8, 2), (0, 3), (7, 1)] + [(int(rng.integers(0, 60)), int(rng.integers(1, 9))) for _ in range(8)]
    for n, size in cases:
        expected = _bounds(n, size)
        for rank in range(size):
            inputs = f"shard_bounds({n}, {rank}, {size})"
            got = ex.run(ex.obj, n, rank, size)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                ex.fail("(lo, hi) の組を返してください。", inputs=inputs, expected=expected[rank], actual=got)
            got = (int(got[0]), int(got[1]))
            if got != expected[rank]:
                ex.fail("区間が違います。", inputs=inputs + f"（全ランクの正しい区間: {expected}）", expected=expected[rank],
                        actual=got, hint=pick_hint(np.array(got), {k: np.array(v) for k, v in _bounds_mistakes(n, rank, size).items()},
                                                   "base, extra = divmod(n, size) として、lo = rank * base + min(rank, extra)、"
                                                   "長さは base に、rank < extra なら 1 を足したものです。", rtol=0, atol=0))


# --- 練習 21-2: リング allreduce の順番 -------------------------------------------------------------


def _schedule(p, mode="ok"):
    r = np.arange(p)[:, None]
    s = np.arange(p - 1)[None, :]
    first = (r - s) % p
    if mode == "recv":
        return np.concatenate([(r - s - 1) % p, (r - s) % p], axis=1)
    if mode == "no_restart":
        s2 = np.arange(p - 1, 2 * (p - 1))[None, :]
        return np.concatenate([first, (r + 1 - s2) % p], axis=1)
    if mode == "plus":
        return np.concatenate([(r + s) % p, (r + 1 + s) % p], axis=1)
    if mode == "same":
        return np.concatenate([first, first], axis=1)
    return np.concatenate([first, (r + 1 - s) % p], axis=1)


def test_ex21_2_ring_schedule(exercise, rng):
    ex = exercise("21-2", "ring_schedule")
    for p in [1, 2, 4] + [int(v) for v in rng.choice(np.arange(3, 12), size=3, replace=False)]:
        expected = _schedule(p)
        inputs = f"ring_schedule({p})"
        got = ex.run(ex.obj, p)
        arr = np.asarray(got)
        if arr.shape != expected.shape:
            ex.fail(f"shape ({p}, {2 * (p - 1)}) の配列を返してください。", inputs=inputs, expected=expected, actual=got,
                    hint="行がランク（p 行）、列が歩（reduce-scatter の p - 1 歩と all-gather の p - 1 歩）です。")
        if np.any(arr < 0) or np.any(arr >= p):
            ex.fail(f"塊の番号は 0 から {p - 1} です（範囲の外の番号があります）。", inputs=inputs, expected=expected, actual=got,
                    hint="負の数を p で割った余りにするのを忘れていませんか（(r - s) % p）。")
        if not np.array_equal(arr, expected):
            ex.fail("送る塊の番号が違います。", inputs=inputs, expected=expected, actual=arr,
                    hint=pick_hint(arr, {
                        "受け取る塊の番号になっています。送るのは、前半が (r - s) % p、後半が (r + 1 - s') % p です。": _schedule(p, "recv"),
                        "後半（all-gather）の歩の番号は、s' = s - (p - 1) と 0 から数え直します。": _schedule(p, "no_restart"),
                        "歩が進むごとに、送る塊の番号は 1 つずつ **減り** ます（右隣に送り、左隣から受け取るからです）。": _schedule(p, "plus"),
                        "後半で送るのは、前半の終わりに和がそろった塊 (r + 1) % p から始まります。": _schedule(p, "same"),
                    }, "前半は (r - s) % p、後半は s' = s - (p - 1) として (r + 1 - s') % p です。", rtol=0, atol=0))
    table = np.asarray(ex.run(ex.obj, 5))
    for s in range(8):
        if sorted(table[:, s].tolist()) != list(range(5)):
            ex.fail("同じ歩では、全員が違う塊を送るはずです。", inputs=f"ring_schedule(5) の歩 {s}", expected=list(range(5)),
                    actual=sorted(table[:, s].tolist()))


# --- 練習 21-3: 通信の費用 -----------------------------------------------------------------------------


def _costs(n, p, a, bw):
    return 2 * (p - 1) * a + 2 * (p - 1) / p * n / bw, 2 * (p - 1) * (a + n / bw)


def test_ex21_3_allreduce_costs(exercise, rng):
    ex = exercise("21-3", "allreduce_costs")
    cases = [(4e9, 8, 5e-6, 12.5e9), (1024.0, 2, 1e-6, 1e9)]
    for _ in range(6):
        cases.append((float(10 ** rng.uniform(2, 10)), int(rng.integers(2, 65)), float(10 ** rng.uniform(-7, -4)),
                      float(10 ** rng.uniform(8, 12))))
    for n, p, a, bw in cases:
        ring, naive = _costs(n, p, a, bw)
        inputs = f"allreduce_costs({n:.4g}, {p}, alpha={a:.3g}, bandwidth={bw:.3g})"
        got = ex.run(ex.obj, n, p, a, bw)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            ex.fail("(ring, naive) の組を返してください。", inputs=inputs, expected=(ring, naive), actual=got)
        ring_hints = {
            "reduce-scatter と all-gather の 2 つぶんです（2 を掛け忘れていませんか）。": _costs(n, p, a, bw)[0] / 2,
            "1 歩で送るのは n / p バイトです。帯域幅の項は 2(p-1)/p · n/BW です。": 2 * (p - 1) * (a + n / bw),
            "歩の数は 2(p - 1) です（2p ではありません）。": 2 * p * a + 2 * p / p * n / bw,
            "α の項を忘れています。歩ごとに α がかかります。": 2 * (p - 1) / p * n / bw,
        }
        naive_hints = {
            "受け取る p - 1 本と送り返す p - 1 本の 2 つぶんです。": (p - 1) * (a + n / bw),
            "本数は p - 1 です（ランク 0 は自分には送りません）。": 2 * p * (a + n / bw),
            "1 本ごとに α もかかります。": 2 * (p - 1) * n / bw,
        }
        ex.check_close(got[0], ring, rtol=1e-9, atol=0, inputs=inputs + " のリング",
                       hint=pick_hint(got[0], ring_hints, "2(p-1)α + 2(p-1)/p · n/BW です。", rtol=1e-9, atol=0))
        ex.check_close(got[1], naive, rtol=1e-9, atol=0, inputs=inputs + " のランク 0 に集める方法",
                       hint=pick_hint(got[1], naive_hints, "2(p-1)(α + n/BW) です。", rtol=1e-9, atol=0))


# --- 練習 21-4: ZeRO のメモリ -------------------------------------------------------------------------


def _zero(n, p, stage):
    params, grads, states = 4.0 * n, 4.0 * n, 8.0 * n
    if stage >= 1:
        states /= p
    if stage >= 2:
        grads /= p
    if stage >= 3:
        params /= p
    return params + grads + states


def test_ex21_4_zero_bytes_per_rank(exercise, rng):
    ex = exercise("21-4", "zero_bytes_per_rank")
    cases = [(1_000_000_000, 8), (19210, 2), (7, 3)] + [(int(rng.integers(1, 10**9)), int(rng.integers(2, 129))) for _ in range(4)]
    for n, p in cases:
        for stage in range(4):
            expected = _zero(n, p, stage)
            inputs = f"zero_bytes_per_rank({n}, {p}, {stage})"
            got = ex.run(ex.obj, n, p, stage)
            hints = {
                "Adam の状態は m と v の 2 つで 8Ψ バイトです（4Ψ にしていませんか）。":
                    _zero(n, p, stage) - (8.0 * n / (p if stage >= 1 else 1)) + 4.0 * n / (p if stage >= 1 else 1),
                "ステージ 1 で分けるのは Adam の状態だけ、ステージ 2 で勾配、ステージ 3 でパラメータも分けます（分けるものがずれています）。":
                    _zero(n, p, min(stage + 1, 3)) if stage < 3 else _zero(n, p, 2),
                "分けないものは、全員が全部を持ちます。全体の 16Ψ を p で割っていませんか。":
                    16.0 * n / p,
                "p 等分したものを (p - 1) で割っています。": _zero(n, p - 1, stage) if p > 1 else -1.0,
            }
            ex.check_close(got, expected, rtol=1e-9, atol=0, inputs=inputs,
                           hint=pick_hint(got, {k: v for k, v in hints.items() if not np.isclose(v, expected, rtol=1e-9, atol=0)},
                                          "パラメータ 4Ψ・勾配 4Ψ・状態 8Ψ のうち、分けるものだけを p で割って足します。", rtol=1e-9, atol=0))
    ex.check_raises(ValueError, ex.obj, 100, 2, 4, inputs="zero_bytes_per_rank(100, 2, 4)",
                    hint="stage が 0, 1, 2, 3 のどれでもなければ raise ValueError(...) とします。")


# --- 練習 21-5: パイプラインのバブル ----------------------------------------------------------------


def test_ex21_5_pipeline_stats(exercise, rng):
    ex = exercise("21-5", "pipeline_stats")
    cases = [(4, 4, 1.0, 2.0), (1, 3, 0.5, 0.5), (2, 1, 1.0, 1.0)]
    for _ in range(6):
        cases.append((int(rng.integers(1, 17)), int(rng.integers(1, 65)), float(rng.uniform(0.1, 3)), float(rng.uniform(0.1, 3))))
    for p, m, tf, tb in cases:
        total = (m + p - 1) * (tf + tb)
        bubble = (p - 1) / (m + p - 1)
        inputs = f"pipeline_stats({p}, {m}, {tf:.3g}, {tb:.3g})"
        got = ex.run(ex.obj, p, m, tf, tb)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            ex.fail("(total_time, bubble_fraction) の組を返してください。", inputs=inputs, expected=(total, bubble), actual=got)
        ex.check_close(got[0], total, rtol=1e-9, atol=1e-12, inputs=inputs + " の全体の時間",
                       hint=pick_hint(got[0], {
                           "マイクロバッチを 1 つずつ全段に通して待つ（m·p 回）のではなく、段が重なって進むので (m + p - 1) 回です。": m * p * (tf + tb),
                           "パイプラインを満たす p - 1 回と空にする時間も入れます（m 回だけではありません）。": m * (tf + tb),
                           "順伝播と逆伝播の両方の時間 (t_f + t_b) を掛けます。": (m + p - 1) * tf,
                       }, "(m + p - 1)(t_f + t_b) です。", rtol=1e-9, atol=1e-12))
        ex.check_close(got[1], bubble, rtol=1e-9, atol=1e-12, inputs=inputs + " のバブルの割合",
                       hint=pick_hint(got[1], {
                           "(p - 1) / m は m が大きいときの近似です。正確には (p - 1) / (m + p - 1) です。": (p - 1) / m,
                           "働いている時間の割合になっています。バブルは 1 から引いた残りです。": m / (m + p - 1),
                       }, "1 - m(t_f + t_b) / 全体の時間 = (p - 1) / (m + p - 1) です。", rtol=1e-9, atol=1e-12))


# --- 練習 21-6: リング allreduce をなぞる ------------------------------------------------------------


def _ring(arrays, direction=1, split="array_split"):
    p, n = len(arrays), len(arrays[0])
    bufs = [np.array(a, copy=True) for a in arrays]
    if split == "array_split":
        sizes = [len(c) for c in np.array_split(np.arange(n), p)]
    else:
        c = -(-n // p)
        sizes = [max(0, min(c, n - i * c)) for i in range(p)]
    bounds = np.cumsum([0] + sizes)

    def chunk(r, c):
        c %= p
        return bufs[r % p][bounds[c]:bounds[c + 1]]

    d = direction
    for s in range(p - 1):
        sent = [chunk(r, r - d * s).copy() for r in range(p)]
        for r in range(p):
            chunk(r + d, r - d * s)[...] += sent[r]
    for s in range(p - 1):
        sent = [chunk(r, r + d * (1 - s)).copy() for r in range(p)]
        for r in range(p):
            chunk(r + d, r + d * (1 - s))[...] = sent[r]
    return bufs


def _ring_inputs(rng, p, n):
    """足す順番で最後のビットが変わるように、桁の違う値を混ぜた float32 の配列。"""
    return [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 5, size=n)).astype(np.float32) for _ in range(p)]


def test_ex21_6_simulate_ring_allreduce(exercise, rng):
    ex = exercise("21-6", "simulate_ring_allreduce")
    cases = [(2, 5), (3, 7), (4, 2), (1, 3)] + [(int(rng.integers(3, 8)), int(rng.integers(1, 40))) for _ in range(4)]
    for p, n in cases:
        arrays = _ring_inputs(rng, p, n)
        if p >= 3 and n >= p:  # sum(arrays) とリングの順番の違いが見えるまで作り直す
            for _ in range(50):
                if not np.array_equal(_ring(arrays)[0], sum(arrays)):
                    break
                arrays = _ring_inputs(rng, p, n)
        originals = [a.copy() for a in arrays]
        expected = _ring(arrays)
        inputs = f"p={p} 個のランク、長さ n={n}"
        got = ex.run(ex.obj, arrays)
        if not all(np.array_equal(a, b) for a, b in zip(arrays, originals)):
            ex.fail("渡された配列が書き換えられています。", inputs=inputs, show_values=False,
                    hint="各ランクの作業用のコピーを np.array(a, copy=True) で作ってから足します。")
        if not isinstance(got, (list, tuple)) or len(got) != p:
            ex.fail(f"ランクごとの結果 {p} 個のリストを返してください。", inputs=inputs, expected=f"長さ {p} のリスト", actual=got)
        for r in range(p):
            g = np.asarray(got[r])
            if g.shape != (n,):
                ex.fail(f"ランク {r} の結果の shape が違います。", inputs=inputs, expected=expected[r], actual=got[r])
            if not np.allclose(g, expected[r], rtol=1e-4, atol=1e-3):
                ex.fail(f"ランク {r} の結果が全員の和になっていません。", inputs=inputs, expected=expected[r], actual=g,
                        hint="reduce-scatter の p - 1 歩のあと、all-gather の p - 1 歩で、和のそろった塊を全員に配ります。"
                             "all-gather では足さずに置き換えます。")
            if g.dtype != np.float32:
                ex.fail(f"ランク {r} の結果の dtype が float32 ではありません。", inputs=inputs, expected="float32", actual=g.dtype)
            if not np.array_equal(g, expected[r]):
                if np.array_equal(g, sum(arrays)):
                    hint = "値は和に近いですが、sum(arrays) の順番で足しています。リングの手順どおりに、送られた塊を自分の塊に足していきます。"
                elif np.array_equal(g, _ring(arrays, direction=-1)[r]):
                    hint = "左隣に送っています。ランク r は右隣 (r + 1) % p に送り、左隣から受け取ります。"
                elif np.array_equal(g, _ring(arrays, split="ceil")[r]):
                    hint = "塊の分け方が違います。np.array_split と同じく、長さの違いが高々 1 になるように分けます（練習 21-1）。"
                else:
                    hint = "値は和に近いですが、足す順番がリングと違います。塊 c には、ランク c から順に右回りで足されていきます。"
                diff = np.abs(g.astype(np.float64) - expected[r].astype(np.float64))
                ex.fail(f"ランク {r} の結果が、リングの順番で足した和とビットまで一致しません"
                        f"（違う要素 {int(np.sum(diff > 0))} 個、最大の差 {diff.max():.3g}）。", inputs=inputs,
                        expected=expected[r], actual=g, hint=hint)
