"""第13章の隠しテスト（カーネルを書く）。

カーネル（練習 13-1）は、GPU が無ければ numba の CUDA シミュレータで動かします。シミュレータは 1 スレッドを
Python のスレッド 1 つで動かすので、行列は小さく（数十スレッド）します。
よくある間違い（x と y の取り違え、境界チェックの忘れ・``<=`` の差、転置せずに写す、段の数の 1 ずれ、
切り捨ての割り算、算術強度の式の取り違え、上限の見落とし、途中の配列の読み書きの数え忘れ）は、
同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import functools

import numpy as np

from grader import pick_hint
from mini_dl.kernels import blocks_for, load_numba_cuda

_pick_hint = functools.partial(pick_hint, equal_nan=True)


def _reraise(exc):
    raise exc


# --- 練習 13-1: 転置のカーネル ------------------------------------------------------------------

BOUNDARY_HINT = ("はみ出したスレッドが、配列の外を読み書きしています。`if row < x.shape[0] and col < x.shape[1]:` の"
                 "境界チェックで守ります（`<=` では 1 つはみ出します）。境界チェックがあっても起きるなら、out の shape は (C, R) なので、"
                 "out[col, row] の順に書いているか確かめてください。")


def _launch(obj, x, block):
    cuda = load_numba_cuda()
    fn = getattr(obj, "py_func", None) or getattr(obj, "fn", None) or obj  # @cuda.jit 付きでもよい
    kernel = cuda.jit(fn)
    out = np.full((x.shape[1], x.shape[0]), np.nan, dtype=np.float32)
    grid = (blocks_for(x.shape[1], block[0]), blocks_for(x.shape[0], block[1]))
    kernel[grid, block](x, out)
    return out


def _transpose_mistakes(x, block):
    R, C = x.shape
    bx, by = block
    gx, gy = blocks_for(C, bx) * bx, blocks_for(R, by) * by  # x 方向と y 方向のスレッドの数
    swapped = np.full((C, R), np.nan, dtype=np.float32)
    rr, cc = min(R, gx), min(C, gy)  # x 方向を行、y 方向を列にしたときに書ける範囲
    swapped[:cc, :rr] = x[:rr, :cc].T
    mistakes = {
        "x 方向（blockIdx.x・threadIdx.x）は x の **列** です。行と列を取り違えると、形が正方でないときに書かれない要素が残ります。": swapped,
    }
    if R == C:
        mistakes["out[c, r] = x[r, c] と、添字を入れ替えて書きます（out[r, c] = x[r, c] では写すだけです）。"] = x.copy()
    return mistakes


def _check_transpose(ex, x, block):
    inputs = f"x: shape {x.shape} の float32、ブロック {block}、グリッド ({blocks_for(x.shape[1], block[0])}, {blocks_for(x.shape[0], block[1])})"
    try:
        out = _launch(ex.obj, x, block)
    except IndexError as e:
        ex.fail(f"カーネルの中で IndexError が起きました（{str(e)[:120]}）。", inputs=inputs, hint=BOUNDARY_HINT,
                show_values=False)
    except Exception as e:  # NotImplementedError なども、採点器の説明に変えます
        ex.run(_reraise, e)
    default = ("NaN のまま残った要素は、どのスレッドも書かなかった所です。行と列の番号の式を見直してください。"
               if np.isnan(out).any() else None)
    ex.check_close(out, x.T, rtol=0, atol=0, inputs=inputs,
                   hint=_pick_hint(out, _transpose_mistakes(x, block), default, rtol=0, atol=0))


def test_ex13_1_transpose_rectangular(exercise, rng):
    ex = exercise("13-1", "transpose_kernel")
    for block in [(4, 2), (2, 4)]:
        R, C = int(rng.integers(3, 7)), int(rng.integers(3, 7))
        while R == C:
            C = int(rng.integers(3, 7))
        _check_transpose(ex, rng.standard_normal((R, C)).astype(np.float32), block)


def test_ex13_1_transpose_square_and_tiny(exercise, rng):
    ex = exercise("13-1", "transpose_kernel")
    n = int(rng.integers(3, 6))
    _check_transpose(ex, rng.standard_normal((n, n)).astype(np.float32), (2, 2))
    _check_transpose(ex, rng.standard_normal((1, 1)).astype(np.float32), (2, 2))
    _check_transpose(ex, rng.standard_normal((1, int(rng.integers(2, 6)))).astype(np.float32), (4, 1))


# --- 練習 13-2: リダクションの段と起動の回数 ---------------------------------------------------------

def _plan(n, threads):
    launches = 0
    while True:
        n = -(-n // threads)
        launches += 1
        if n == 1:
            return launches, threads.bit_length() - 1


def _plan_mistakes(n, threads):
    launches, steps = _plan(n, threads)
    floor_launches, m = 0, n
    while m > 1:
        m //= threads
        floor_launches += 1
    return {
        "木の段の数は log2(threads) です（threads = 8 なら 4→2→1 の 3 段）。1 つ多く数えていませんか。": (launches, steps + 1),
        "木の段の数は、stride を半分にしていく回数 log2(threads) です（threads // 2 ではありません）。": (launches, threads // 2),
        "ブロックの数は切り上げの割り算 ceil(n / threads) です（切り捨てでは、はみ出した要素が数えられません）。":
            (floor_launches, steps),
        "n が 1 でも、カーネルは 1 回起動します（起動の回数は 1 以上）。": (launches - 1, steps),
    }


def _check_plan(ex, n, threads):
    inputs = f"n={n}, threads={threads}"
    got = ex(n, threads)
    if not isinstance(got, tuple) or len(got) != 2:
        ex.fail("(launches, steps) の 2 つ組のタプルを返してください。", inputs=inputs, expected=_plan(n, threads), actual=got)
    hint = next((h for h, v in _plan_mistakes(n, threads).items() if tuple(got) == v), None)
    ex.check_equal(tuple(int(g) for g in got), _plan(n, threads), inputs=inputs, hint=hint)


def test_ex13_2_reduction_plan_random(exercise, rng):
    ex = exercise("13-2", "reduction_plan")
    for _ in range(12):
        threads = 2 ** int(rng.integers(1, 11))
        _check_plan(ex, int(rng.integers(1, 10**7)), threads)


def test_ex13_2_reduction_plan_exact_powers_and_one(exercise, rng):
    ex = exercise("13-2", "reduction_plan")
    threads = 2 ** int(rng.integers(2, 9))
    for n in [1, threads, threads + 1, threads ** 2, threads ** 3, threads ** 3 + 1]:
        _check_plan(ex, n, threads)


# --- 練習 13-3: タイルの選び方 ------------------------------------------------------------------

def _usable(shared_bytes, max_threads, limit_threads=True, limit_shared=True):
    tiles, t = [], 1
    while (not limit_threads or t * t <= max_threads) and (not limit_shared or 8 * t * t <= shared_bytes) and t <= 4096:
        tiles.append(t)
        t *= 2
    return tiles


def _choose(peak, bw, shared, max_threads, intensity=lambda t: t / 4, **limits):
    usable = _usable(shared, max_threads, **limits)
    return next((t for t in usable if intensity(t) >= peak / bw), usable[-1])


def _tile_mistakes(peak, bw, shared, max_threads):
    usable = _usable(shared, max_threads)
    return {
        "尾根に届く **最小の** タイルを返します（届かないときだけ最大のタイル）。": usable[-1],
        "算術強度は T/4 FLOP/バイトです（読むのは 1 FLOP あたり 4/T バイト）。": _choose(peak, bw, shared, max_threads, lambda t: 4 / t),
        "算術強度は T/4 です（T/2 や 4T ではありません）。": _choose(peak, bw, shared, max_threads, lambda t: t / 2),
        "共有メモリの上限（2 枚のタイル 2 × T² × 4 バイト）も確かめます。": _choose(peak, bw, shared, max_threads, limit_shared=False),
        "1 ブロックのスレッドの数 T² の上限（max_threads）も確かめます。": _choose(peak, bw, shared, max_threads, limit_threads=False),
        "算術強度が尾根 **以上** なら届いています（ちょうど等しいときも含めます）。":
            _choose(peak, bw, shared, max_threads, lambda t: t / 4 - 1e-9),
    }


def _check_tile(ex, peak, bw, shared, max_threads):
    inputs = f"peak_flops={peak:.3g}, bandwidth={bw:.3g}, shared_bytes={shared}, max_threads={max_threads}"
    expected = _choose(peak, bw, shared, max_threads)
    got = ex(peak, bw, shared, max_threads)
    if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
        ex.fail("タイルの一辺を int で返してください。", inputs=inputs, expected=expected, actual=got)
    mistakes = {h: v for h, v in _tile_mistakes(peak, bw, shared, max_threads).items() if v != expected}
    hint = next((h for h, v in mistakes.items() if got == v), None)
    ex.check_equal(int(got), expected, inputs=inputs, hint=hint)


def test_ex13_3_choose_tile_random_hardware(exercise, rng):
    ex = exercise("13-3", "choose_tile")
    for _ in range(15):
        peak = float(rng.uniform(0.5, 60)) * 1e12
        bw = float(rng.uniform(100, 3500)) * 1e9
        shared = int(rng.choice([2048, 4096, 8192, 16384, 49152, 101376]))
        max_threads = int(rng.choice([256, 512, 1024]))
        _check_tile(ex, peak, bw, shared, max_threads)


def test_ex13_3_choose_tile_cases_that_tell_mistakes_apart(exercise, rng):
    ex = exercise("13-3", "choose_tile")
    scale = float(rng.uniform(1, 10)) * 1e11
    _check_tile(ex, 2 * scale, scale, 48 * 1024, 1024)  # 尾根 2: ちょうど T = 8 で届く
    _check_tile(ex, 100 * scale, scale, 48 * 1024, 1024)  # 届かない: 最大の 32
    _check_tile(ex, 100 * scale, scale, 2048, 1024)  # 共有メモリで 16 まで
    _check_tile(ex, 100 * scale, scale, 48 * 1024, 256)  # スレッドで 16 まで
    _check_tile(ex, 0.5 * scale, scale, 48 * 1024, 1024)  # 尾根 0.5: T = 2


# --- 練習 13-4: 融合で減る読み書き --------------------------------------------------------------

def _traffic(n, d, itemsize):
    nd = n * d
    return (7 * nd + d) * itemsize, (3 * nd + d) * itemsize


def _traffic_mistakes(n, d, itemsize):
    nd = n * d
    u, f = _traffic(n, d, itemsize)
    return {
        "バイアス b（d 要素）を読む分も数えます。": (7 * nd * itemsize, 3 * nd * itemsize),
        "バイト数で返します（要素の数に itemsize を掛けます）。": (7 * nd + d, 3 * nd + d),
        "融合したカーネルもマスク M を読みます（X・b・M を読み、Y を書く）。": (u, (2 * nd + d) * itemsize),
        "融合しないときは、途中の Z と A も 1 回ずつ書いて、次のカーネルが読み直します。": ((3 * nd + d) * itemsize, f),
        "融合しないときの 3 つ目のカーネル A * M は、A と M の 2 つを読みます。": ((6 * nd + d) * itemsize, f),
    }


def test_ex13_4_fused_traffic(exercise, rng):
    ex = exercise("13-4", "fused_traffic")
    for _ in range(8):
        n, d, itemsize = int(rng.integers(1, 5000)), int(rng.integers(2, 5000)), int(rng.choice([2, 4, 8]))
        inputs = f"n={n}, d={d}, itemsize={itemsize}"
        got = ex(n, d, itemsize)
        expected = _traffic(n, d, itemsize)
        if not isinstance(got, tuple) or len(got) != 2:
            ex.fail("(融合しない, 融合した) の 2 つ組のタプルを返してください。", inputs=inputs, expected=expected, actual=got)
        hint = next((h for h, v in _traffic_mistakes(n, d, itemsize).items() if tuple(got) == v), None)
        ex.check_equal(tuple(int(g) for g in got), expected, inputs=inputs, hint=hint)


def test_ex13_4_fused_traffic_default_itemsize(exercise, rng):
    ex = exercise("13-4", "fused_traffic")
    n, d = int(rng.integers(1, 100)), int(rng.integers(2, 100))
    got = ex(n, d)
    got = tuple(int(g) for g in got) if isinstance(got, tuple) else got
    hint = next((h for h, v in _traffic_mistakes(n, d, 4).items() if got == v), "itemsize の既定は 4（float32）です。")
    ex.check_equal(got, _traffic(n, d, 4), inputs=f"n={n}, d={d}（itemsize は既定の 4）", hint=hint)
