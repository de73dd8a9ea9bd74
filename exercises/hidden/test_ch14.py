"""第14章の隠しテスト（float16 のビット・損失のスケーリング・ulp と更新・メモリの見積もり・uint8 の量子化）。

よくある間違い（bias の付け忘れ、非正規化数の指数、数え直しの忘れ、2 の累乗の下側の間隔、マスタの重みの数え忘れ、
0 を範囲に入れ忘れたゼロ点）は、テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import math

import numpy as np

from grader import pick_hint

# --- 14-1 decode_float16 ------------------------------------------------------------------


def _fields(bits):
    return bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF


def _wrong_decodes(bits):
    """よくある間違いの値 {ヒント: 値}（正規化数・非正規化数のときだけ）。"""
    s, e, f = _fields(bits)
    sign = -1.0 if s else 1.0
    if e == 0x1F:
        return {}
    if e == 0:
        return {
            "非正規化数（指数のビットがすべて 0）の指数は 1 - 15 = -14 です（0 - 15 = -15 ではありません）。値は (f / 1024) × 2^-14 です。":
                sign * f / 1024 * 2.0 ** -15,
            "非正規化数（指数のビットがすべて 0）には暗黙の 1 を付けません。値は (f / 1024) × 2^-14 です。":
                sign * (1 + f / 1024) * 2.0 ** -14,
        }
    return {
        "指数から bias の 15 を引き忘れています。正規化数は (1 + f / 1024) × 2^(e - 15) です。": sign * (1 + f / 1024) * 2.0 ** e,
        "暗黙の 1 を忘れています。正規化数の仮数は 1 + f / 1024 です（先頭の 1 はビットに書きません）。":
            sign * f / 1024 * 2.0 ** (e - 15),
        "bias は 15 です（float32 の 127 や、16 ではありません）。": sign * (1 + f / 1024) * 2.0 ** (e - 16),
        "仮数のビットは 10 個なので、f を 2^10 = 1024 で割ります。": sign * (1 + f / 512) * 2.0 ** (e - 15),
        "符号のビット（いちばん上の 15 番目のビット）を忘れています。1 なら負の数です。": (1 + f / 1024) * 2.0 ** (e - 15),
    }


def _check_decode(ex, bits, inputs_extra=""):
    expected = float(np.array(bits, dtype=np.uint16).view(np.float16))
    inputs = f"decode_float16({bits})（2 進数で {format(bits, '016b')}）{inputs_extra}"
    got = ex.run(ex.obj, bits)
    if not isinstance(got, float):  # np.float64 は float の仲間なので通す（np.float16 や配列は通さない）
        ex.fail("Python の float を返してください。", inputs=inputs, expected=f"{expected!r}（float）",
                actual=f"{got!r}（{type(got).__name__}）",
                hint="np.float16 の値や配列ではなく、float(...) で Python の数にして返します。")
    if math.isnan(expected):
        if not math.isnan(got):
            ex.fail("答えが違います。", inputs=inputs, expected="nan", actual=got,
                    hint="指数のビットがすべて 1（31）で、仮数が 0 でなければ nan（float('nan')）です。")
        return
    if got != expected or math.copysign(1.0, got) != math.copysign(1.0, expected):
        hint = pick_hint(got, _wrong_decodes(bits), "符号 s・指数 e・仮数 f に分け、e が 0 なら非正規化数、31 なら inf か nan、"
                                                    "それ以外は (-1)^s × (1 + f / 1024) × 2^(e - 15) です。",
                         rtol=1e-12, atol=0)
        if math.isinf(expected):
            hint = "指数のビットがすべて 1（31）で仮数が 0 なら、無限大（符号つきの float('inf')）です。"
        elif expected == 0:
            hint = "指数も仮数も 0 なら 0 です。符号のビットが 1 なら -0.0 を返します（math.copysign で区別されます）。"
        ex.fail("答えが違います。", inputs=inputs, expected=expected, actual=got, hint=hint)


def test_ex14_1_normal_numbers(exercise, rng):
    ex = exercise("14-1", "decode_float16")
    for _ in range(30):
        s = int(rng.integers(0, 2))
        e = int(rng.integers(1, 31))
        f = int(rng.integers(0, 1024))
        _check_decode(ex, (s << 15) | (e << 10) | f)


def test_ex14_1_subnormals_zero_inf_nan(exercise, rng):
    ex = exercise("14-1", "decode_float16")
    cases = [0, 1 << 15, 0x7C00, 0xFC00, 0x7C00 | int(rng.integers(1, 1024)), 0xFC00 | int(rng.integers(1, 1024))]
    cases += [(int(rng.integers(0, 2)) << 15) | int(rng.integers(1, 1024)) for _ in range(12)]
    for bits in [cases[i] for i in rng.permutation(len(cases))]:
        _check_decode(ex, bits)


def test_ex14_1_known_value(exercise):
    ex = exercise("14-1", "decode_float16")
    _check_decode(ex, 0x3C00, "（1.0 のビット）")
    _check_decode(ex, 0x7BFF, "（float16 の最大値 65504）")
    _check_decode(ex, 0x0001, "（最小の非正規化数 2^-24）")


# --- 14-2 scale_history -------------------------------------------------------------------


def _history(flags, init_scale, growth_factor, backoff_factor, growth_interval, variant=None):
    """正しい S の列（variant を渡すと、よくある間違いをした列）。"""
    scale, tracker, out = init_scale, 0, []
    for found_inf in flags:
        if found_inf:
            scale *= backoff_factor
            if variant != "no_reset_on_inf":
                tracker = 0
        else:
            tracker += 1
            if variant == "no_reset_on_growth":
                if tracker >= growth_interval:
                    scale *= growth_factor
            elif tracker == growth_interval + (1 if variant == "off_by_one" else 0):
                scale *= growth_factor
                tracker = 0
        out.append(scale)
    return out


def _case(rng):
    interval = int(rng.integers(2, 6))
    n = int(rng.integers(25, 40))
    flags = [bool(v) for v in rng.random(n) < 0.15]
    flags[int(rng.integers(0, 3))] = True  # 最初のほうで 1 回はあふれる
    start = int(rng.integers(4, 8))
    for k in range(start, start + 2 * interval + 2):  # 無事が続く区間（2 倍が 2 回は起こる）
        if k < n:
            flags[k] = False
    init = float(2.0 ** int(rng.integers(8, 17)))
    growth = float(rng.choice([2.0, 4.0]))
    backoff = float(rng.choice([0.5, 0.25]))
    return flags, init, growth, backoff, interval


def test_ex14_2_matches_the_rule(exercise, rng):
    ex = exercise("14-2", "scale_history")
    for _ in range(4):
        flags, init, growth, backoff, interval = _case(rng)
        inputs = (f"scale_history({[int(f) for f in flags]}, init_scale={init}, growth_factor={growth}, "
                  f"backoff_factor={backoff}, growth_interval={interval})（1 はあふれたステップ）")
        got = ex.run(ex.obj, list(flags), init_scale=init, growth_factor=growth, backoff_factor=backoff,
                     growth_interval=interval)
        expected = _history(flags, init, growth, backoff, interval)
        if not isinstance(got, list):
            ex.fail("リストを返してください。", inputs=inputs, expected=expected, actual=got,
                    hint="ステップごとの S を append したリストを返します。")
        if len(got) != len(flags):
            ex.fail(f"要素の数が違います（期待 {len(flags)} 個、実際 {len(got)} 個）。", inputs=inputs,
                    expected=expected, actual=got, hint="ステップ 1 つにつき、そのステップの update() のあとの S を 1 つ入れます。")
        kw = dict(init_scale=init, growth_factor=growth, backoff_factor=backoff, growth_interval=interval)
        hint = pick_hint(got, {
            "あふれたら、続けて無事だった回数を 0 に戻します（数え直し）。戻さないと、あふれた直後に S が増えてしまいます。":
                _history(flags, init, growth, backoff, interval, "no_reset_on_inf"),
            "S を growth_factor 倍したら、数を 0 に戻します。戻さないと、そのあと毎ステップ S が増えてしまいます。":
                _history(flags, init, growth, backoff, interval, "no_reset_on_growth"),
            "1 つずれています。growth_interval 回続けて無事だったステップ（その回を含めて数える）で S を増やします。":
                _history(flags, init, growth, backoff, interval, "off_by_one"),
            "最初の S（init_scale）を入れていませんか。リストには、各ステップの update() のあとの S を入れます。":
                [init] + expected[:-1],
        }, "あふれたら S を backoff_factor 倍して数を 0 に、無事なら数を 1 増やし、growth_interval に達したら "
           "S を growth_factor 倍して数を 0 にします。", rtol=1e-12, atol=0)
        ex.check_close(got, expected, rtol=0, atol=0, inputs=inputs + f"、{kw}", hint=hint)


def test_ex14_2_defaults_are_pytorch(exercise, rng):
    ex = exercise("14-2", "scale_history")
    n = int(rng.integers(3, 8))
    flags = [True] * n + [False] * 5
    got = ex.run(ex.obj, flags)
    expected = [2.0 ** (16 - k) for k in range(1, n + 1)] + [2.0 ** (16 - n)] * 5
    ex.check_close(got, expected, rtol=0, atol=0, inputs=f"scale_history({[int(f) for f in flags]})（既定値で）",
                   hint="既定値は PyTorch と同じ init_scale=2.0**16、growth_factor=2.0、backoff_factor=0.5、growth_interval=2000 です。")


# --- 14-3 update_vanishes -----------------------------------------------------------------


def _reference_vanishes(w, delta):
    return (w.astype(np.float64) - delta.astype(np.float64)).astype(np.float16) == w


def _wv_case(rng, n=60):
    exps = rng.integers(-20, 11, size=n)
    mant = rng.integers(0, 1024, size=n)
    mant[: n // 4] = 0  # 2 の累乗を多めに入れる（下側の間隔が半分）
    w = ((1 + mant / 1024) * 2.0 ** exps).astype(np.float16)
    w[n // 2:n // 2 + 6] = (np.arange(1, 7) * 2.0 ** -24).astype(np.float16)  # 非正規化数
    sign_w = np.where(rng.random(n) < 0.3, -1, 1)
    w = (w * sign_w).astype(np.float16)
    ulp = np.spacing(np.abs(w)).astype(np.float64)
    factors = rng.choice([0.2, 0.26, 0.4, 0.49, 0.5, 0.51, 0.6, 0.9, 1.0, 1.5], size=n)
    factors[n // 4:n // 4 + 10] = 0.5 * (1 + np.array([1, -1] * 5) * 1e-4)  # 半分のすぐ上と下（float16 では半分に丸まる）
    direction = np.where(rng.random(n) < 0.6, 1, -1) * np.sign(w.astype(np.float64))  # 多くは |w| を小さくする向き
    delta = (factors * ulp * direction).astype(np.float32)
    return w, delta


def test_ex14_3_matches_float16_rounding(exercise, rng):
    ex = exercise("14-3", "update_vanishes")
    w, delta = _wv_case(rng)
    inputs = (f"w = {w[:6].tolist()} ...（float16、{len(w)} 個）、delta = {delta[:6].tolist()} ...（float32）")
    got = ex.run(ex.obj, w.copy(), delta.copy())
    expected = _reference_vanishes(w, delta)
    if not isinstance(got, np.ndarray) or got.dtype != bool:
        ex.fail("bool の NumPy 配列を返してください。", inputs=inputs, expected=expected, actual=got,
                hint="比べた結果（== の配列）をそのまま返します。")
    ulp = np.spacing(np.abs(w)).astype(np.float64)
    d = np.abs(delta.astype(np.float64))
    hint = pick_hint(got, {
        "2 の累乗の w から 0 に近づく向きに動くときは、下側の間隔が上側の半分です（1 のすぐ下の float16 は 1 - 2^-11）。"
        "「|delta| < ulp(w)/2」の規則だけでは判定できないので、w - delta を float64 で計算してから float16 に丸め、w と比べます。":
            d < ulp / 2,
        "ちょうど半分（|delta| = ulp/2）のときは、偶数への丸め（最後のビットが 0 の側）になります。"
        "規則を自分で書かず、w - delta を float64 で計算してから float16 に丸めて w と比べます。": d <= ulp / 2,
        "delta を先に float16 に丸めています（np.float16(delta) や delta.astype(np.float16)）。float16 で表せない小さな delta が 0 に"
        "なってしまいます。w - delta を float64 で計算してから、結果だけを float16 に丸めます。":
            (w - delta.astype(np.float16)).astype(np.float16) == w,
        "True と False が逆です。「更新が消える」は、丸めた結果が w と同じ（変わらない）ことです。": ~expected,
    }, "w - delta を float64 で計算し、.astype(np.float16) で丸めてから、w と == で比べます。", rtol=0, atol=0)
    ex.check_close(got, expected, rtol=0, atol=0, inputs=inputs, hint=hint)


def test_ex14_3_known_cases(exercise):
    ex = exercise("14-3", "update_vanishes")
    w = np.array([1.0, 1.0, 1.0, 2048.0, 2048.0, 6e-8], dtype=np.float16)
    delta = np.array([1e-4, 2.0 ** -11 * 0.75, -2.0 ** -11 * 0.75, 1.0, -1.0, 3.2e-8], dtype=np.float32)
    expected = _reference_vanishes(w, delta)
    got = ex.run(ex.obj, w.copy(), delta.copy())
    ex.check_close(got, expected, rtol=0, atol=0,
                   inputs=f"w = {w.tolist()}、delta = {delta.tolist()}",
                   hint="1 - 0.0001 は 1 のまま、1 - 0.75 × 2^-11 は 1 の下側の数 1 - 2^-11 に丸まる（消えない）、"
                        "1 + 0.75 × 2^-11 は上側の間隔 2^-10 の半分より小さいので 1 のまま、です。")


# --- 14-4 adam_memory ---------------------------------------------------------------------

KEYS = ["weights", "grads", "master", "adam", "total"]


def _memory(n, mixed):
    if mixed:
        m = {"weights": 2 * n, "grads": 2 * n, "master": 4 * n, "adam": 8 * n}
    else:
        m = {"weights": 4 * n, "grads": 4 * n, "master": 0, "adam": 8 * n}
    m["total"] = sum(m.values())
    return m


def test_ex14_4_budgets(exercise, rng):
    ex = exercise("14-4", "adam_memory")
    for mixed in (False, True, True, False):
        n = int(rng.integers(10**6, 10**10))
        inputs = f"adam_memory({n}, mixed={mixed})"
        got = ex.run(ex.obj, n, mixed=mixed)
        expected = _memory(n, mixed)
        if not isinstance(got, dict) or sorted(got) != sorted(KEYS):
            ex.fail(f"キーが {KEYS} の辞書を返してください。", inputs=inputs, expected=expected, actual=got,
                    hint="例: {'weights': ..., 'grads': ..., 'master': ..., 'adam': ..., 'total': ...}。"
                         "float32 のときも 'master' は 0 として入れます。")
        for key in KEYS:
            value = got[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if value != expected[key]:
                hints = {
                    "weights": "重みは float32 なら 4 バイト、混合精度なら float16 の 2 バイトです。",
                    "grads": "勾配は重みと同じ dtype です（混合精度なら float16 の 2 バイト、float32 なら 4 バイト）。",
                    "master": "マスタの重みは混合精度のときだけ、float32 の 4 バイトです（float32 の学習では 0）。",
                    "adam": "Adam の状態は m と v の 2 つで、どちらも float32 なので 4 + 4 = 8 バイトです"
                            "（混合精度でも float32 で持ちます）。",
                    "total": "total は 4 つの合計です。",
                }
                ex.fail(f"'{key}' が違います。", inputs=inputs, expected=expected[key], actual=got[key], hint=hints[key])
            if not isinstance(value, int):
                ex.fail(f"'{key}' はバイト数の int にしてください。", inputs=inputs, expected=expected[key], actual=got[key],
                        hint="パラメータの数 × バイト数は整数です。/ ではなく * だけで計算します。")


def test_ex14_4_both_are_16_bytes_per_parameter(exercise, rng):
    ex = exercise("14-4", "adam_memory")
    n = int(rng.integers(1000, 10**6))
    totals = [ex.run(ex.obj, n, mixed=m)["total"] for m in (False, True)]
    ex.check_close(totals, [16 * n, 16 * n], rtol=0, atol=0, inputs=f"adam_memory({n}, mixed=False / True) の total",
                   hint="本文 14.10 節のとおり、どちらもパラメータ 1 つあたり 16 バイトです。")


# --- 14-5 quantize_uint8 ------------------------------------------------------------------


def _quantize(x, *, include_zero=True, levels=255, use_round=True, clip=True, round_zp=True):
    lo, hi = float(x.min()), float(x.max())
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / levels if hi > lo else 1.0
    zp = -lo / scale
    zp = int(round(zp)) if round_zp else zp
    r = x.astype(np.float64) / scale
    r = np.round(r) if use_round else np.trunc(r)
    q = r + zp
    if clip:
        q = np.clip(q, 0, 255)
    return q, scale, zp


def _qcase(rng):
    n = int(rng.integers(20, 60))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        x = rng.standard_normal(n) * rng.uniform(0.1, 5)
    elif kind == 1:
        x = rng.uniform(0.5, 3.0, size=n)  # すべて正（0 を範囲に入れる必要がある）
    else:
        x = rng.uniform(-4.0, -0.2, size=n)  # すべて負
    return x.astype(np.float32)


def test_ex14_5_quantize_and_dequantize(exercise, rng):
    ex = exercise("14-5", "quantize_uint8")
    for _ in range(6):
        x = _qcase(rng)
        inputs = f"x = {np.round(x[:5], 3).tolist()} ...（float32、{len(x)} 個、最小 {x.min():.3f}、最大 {x.max():.3f}）"
        got = ex.run(ex.obj, x.copy())
        if not isinstance(got, tuple) or len(got) != 3:
            ex.fail("(q, scale, zero_point) のタプルを返してください。", inputs=inputs, expected="(q, scale, zero_point)",
                    actual=got, hint="return q, scale, zero_point と書きます。")
        q, scale, zp = got
        q_ref, scale_ref, zp_ref = _quantize(x)
        if not isinstance(q, np.ndarray) or q.dtype != np.uint8:
            ex.fail("q は uint8 の NumPy 配列にしてください。", inputs=inputs, expected="uint8 の配列",
                    actual=getattr(q, "dtype", type(q).__name__),
                    hint="np.clip(...) で 0〜255 に収めてから .astype(np.uint8) にします（clip の前に変換すると、負の数が折り返します）。")
        hint_scale = pick_hint(scale, {
            "範囲に 0 を入れていません。lo = min(x.min(), 0)、hi = max(x.max(), 0) とします（0 がちょうど表せるように）。":
                _quantize(x, include_zero=False)[1],
            "uint8 の段階は 0〜255 の 255 区間です。(hi - lo) / 255 にします（256 ではありません）。":
                _quantize(x, levels=256)[1],
        }, "scale = (hi - lo) / 255、ただし lo = min(x.min(), 0)、hi = max(x.max(), 0) です。", rtol=1e-6, atol=0)
        ex.check_close(scale, scale_ref, rtol=1e-5, atol=0, inputs=inputs + " の scale", hint=hint_scale)
        if not isinstance(zp, (int, np.integer)) or isinstance(zp, bool):
            ex.fail("zero_point は整数（int）にしてください。", inputs=inputs, expected=zp_ref, actual=zp,
                    hint="zero_point = int(round(-lo / scale)) のように丸めて整数にします（0 が誤差なく表せるように）。")
        ex.check_close(int(zp), zp_ref, rtol=0, atol=0, inputs=inputs + " の zero_point",
                       hint="zero_point = round(-lo / scale) です。x = 0 が q = zero_point に対応します。")
        diff = np.abs(q.astype(np.int64) - q_ref.astype(np.int64))
        if diff.max() > 1 or (diff > 0).mean() > 0.05:
            hint = pick_hint(q, {
                "round ではなく切り捨て（astype や int）になっています。np.round で一番近い整数にします。":
                    np.clip(_quantize(x, use_round=False)[0], 0, 255),
                "zero_point を足し忘れています。q = round(x / scale) + zero_point です。": np.clip(np.round(x / scale_ref), 0, 255),
            }, "q = clip(round(x / scale) + zero_point, 0, 255) を uint8 にします。", rtol=0, atol=1.01)
            ex.check_close(q, q_ref, rtol=0, atol=0, inputs=inputs + " の q", hint=hint)
        x_hat = (q.astype(np.float64) - int(zp)) * float(scale)
        err = np.abs(x_hat - x)
        if err.max() > float(scale) * 0.5 + 1e-5:
            ex.fail("戻した値 (q - zero_point) × scale と x の差が、scale / 2 を超えました。", inputs=inputs,
                    expected=f"差 ≤ {float(scale) / 2:.4g}", actual=f"最大の差 {err.max():.4g}",
                    hint="q = clip(round(x / scale) + zero_point, 0, 255) なら、差は scale / 2 以下です。")


def test_ex14_5_zero_is_exact_and_constant_input(exercise, rng):
    ex = exercise("14-5", "quantize_uint8")
    x = np.concatenate([_qcase(rng), np.zeros(3, dtype=np.float32)])
    q, scale, zp = ex.run(ex.obj, x.copy())
    ex.check_close(int(q[-1]), int(zp), rtol=0, atol=0, inputs="x の最後の 3 つは 0.0",
                   hint="0 は q = zero_point に量子化され、誤差なく戻ります（ReLU の出力やパディングの 0 が正確に残るように）。")
    zeros = np.zeros(int(rng.integers(3, 8)), dtype=np.float32)
    q, scale, zp = ex.run(ex.obj, zeros)
    ex.check_close(float(scale), 1.0, rtol=0, atol=0, inputs=f"x = {zeros.tolist()}（すべて 0）",
                   hint="すべて 0 なら hi = lo = 0 で、0 で割らないように scale = 1.0 とします（問題文の約束）。")
    ex.check_close(q.astype(np.int64), np.zeros(len(zeros), dtype=np.int64), rtol=0, atol=0,
                   inputs=f"x = {zeros.tolist()}（すべて 0）", hint="すべて 0 なら zero_point = 0、q もすべて 0 です。")
