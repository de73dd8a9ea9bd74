"""第1章の隠しテスト。"""
import re

import numpy as np

from grader import attribute_names, pick_hint


def _shape(rng, max_ndim=4, low=1, high=6):
    return tuple(int(n) for n in rng.integers(low, high, size=rng.integers(0, max_ndim + 1)))


def test_ex1_1_c_strides(exercise, rng):
    ex = exercise("1-1", "c_strides")
    cases = [((), 8), ((5,), 4)] + [(_shape(rng), int(rng.choice([1, 2, 4, 8]))) for _ in range(20)]
    for shape, itemsize in cases:
        expected = np.empty(shape, dtype=f"V{itemsize}").strides
        got = ex(shape, itemsize)
        try:
            got = tuple(int(s) for s in got)
        except TypeError:
            ex.fail("整数のタプルを返してください。", inputs=f"shape={shape}, itemsize={itemsize}",
                    expected=expected, actual=got)
        ex.check_equal(got, expected, inputs=f"shape={shape}, itemsize={itemsize}",
                       hint="最後の軸の stride は itemsize、1 つ前の軸は「後ろの軸の stride × 後ろの軸の長さ」。"
                            "順番（前の軸ほど大きい）も確かめましょう。")


def test_ex1_1_c_strides_is_computed_not_read(exercise):
    ex = exercise("1-1", "c_strides")
    ex((3, 4), 4)  # 解いていなければ、ここで「まだ解かれていません」
    nodes = ex.nodes()
    if nodes is not None and "strides" in attribute_names(nodes):
        ex.fail("NumPy の配列を作って `.strides` を読んでいます。この練習では strides を計算で求めます。",
                show_values=False,
                hint="最後の軸の stride を itemsize とし、後ろの軸から順に「stride × その軸の長さ」を掛けていきます"
                     "（for ループで reversed(shape) をたどるか、リストの先頭に足していきます）。")


def _expected_broadcast(a, b):
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        return None


def _pair(rng):
    a = _shape(rng, high=5)
    b = list(_shape(rng, high=5))
    # 半分くらいはブロードキャストできる組にする
    if rng.random() < 0.6:
        for i in range(1, min(len(a), len(b)) + 1):
            b[-i] = int(rng.choice([a[-i], 1]))
    return a, tuple(b)


def test_ex1_2_broadcast_shape(exercise, rng):
    ex = exercise("1-2", "broadcast_shape")
    cases = [((3, 1), (4,)), ((), (2, 3)), ((0,), (1,)), ((2, 1, 4), (3, 1)), ((3, 4), (3,)), ((0,), (3,))]
    cases += [_pair(rng) for _ in range(40)]
    for a, b in cases:
        expected = _expected_broadcast(a, b)
        inputs = f"shape_a={a}, shape_b={b}"
        if expected is None:
            ex.check_raises(ValueError, ex.obj, a, b, inputs=inputs,
                            hint="右端からそろえて、長さが違いどちらも 1 でない軸があれば ValueError を送出します。")
        else:
            got = ex(a, b)
            ex.check_equal(tuple(got) if isinstance(got, (tuple, list)) else got, expected, inputs=inputs,
                           hint="右端の軸からそろえ、足りない軸は左に 1 を補います。長さ 1 の軸は相手の長さ（0 も含む）になります。")


def _mentions_shape(message, shape):
    """メッセージに shape の数が（この順に、続けて）書かれているか。(3, 4) と書いても [3, 4] や 3x4 でもよい。"""
    numbers = [int(n) for n in re.findall(r"\d+", message)]
    shape = list(shape)
    return any(numbers[i:i + len(shape)] == shape for i in range(len(numbers) - len(shape) + 1))


def test_ex1_2_error_message_names_both_shapes(exercise, rng):
    ex = exercise("1-2", "broadcast_shape")
    cases = [((3, 4), (3,)), ((2, 5, 4), (7, 1)), ((6, 1, 2), (6, 3, 5))]
    k = int(rng.integers(2, 6))
    cases.append(((k, k + 1), (k + 2, 1, k)))
    for a, b in cases:
        inputs = f"shape_a={a}, shape_b={b}"
        try:
            got = ex.obj(a, b)
        except ValueError as exc:
            message = str(exc)
            if not (_mentions_shape(message, a) and _mentions_shape(message, b)):
                ex.fail("ValueError のメッセージに、2 つの shape が書かれていません。", inputs=inputs,
                        expected=f"{a} と {b} を含むメッセージ", actual=message,
                        hint="どの shape どうしが合わなかったのかが分かるように、"
                             "`raise ValueError(f\"{shape_a} と {shape_b} はブロードキャストできません\")` のように、"
                             "受け取った 2 つの shape をそのまま書きます。")
        except Exception:  # ValueError 以外の例外は、説明つきで不合格にします
            ex.check_raises(ValueError, ex.obj, a, b, inputs=inputs)
        else:
            ex.fail("ValueError を送出するはずが、値を返しました。", inputs=inputs, expected="ValueError",
                    actual=got, hint="右端からそろえて、長さが違いどちらも 1 でない軸があれば ValueError を送出します。")


def test_ex1_2_does_not_use_numpy_broadcasting_helpers(exercise, rng):
    ex = exercise("1-2", "broadcast_shape")
    ex((3, 1), (4,))  # 解いていなければ、ここで「まだ解かれていません」
    names = ["broadcast_shapes", "broadcast", "broadcast_to", "broadcast_arrays"]
    with ex.spy(np, names[0]) as c0, ex.spy(np, names[1]) as c1, ex.spy(np, names[2]) as c2, \
            ex.spy(np, names[3]) as c3:
        for a, b in [((3, 1), (4,)), ((2, 1, 4), (3, 1)), ((3, 4), (3,))]:
            try:
                ex.obj(a, b)
            except Exception:  # 値や例外の正しさは別のテストで確かめます
                pass
    used = [f"np.{n}" for n, c in zip(names, (c0, c1, c2, c3)) if c]
    if used:  # np.broadcast_shapes は中で np.broadcast を呼ぶので、最初の 1 つだけ示します
        ex.fail(f"{used[0]} を使っています。この練習では NumPy の関数を使わずに規則どおりに計算します。",
                show_values=False,
                hint="短いほうの shape の左に 1 を補って長さをそろえ、右から 1 軸ずつ「等しいか、どちらかが 1 か」を"
                     "確かめながら結果の長さを決めます。")


def test_ex1_3_matmul_gflops(exercise, rng):
    ex = exercise("1-3", "matmul_gflops")
    for _ in range(10):
        m, k, n = (int(v) for v in rng.integers(1, 3000, size=3))
        seconds = float(rng.uniform(1e-4, 2.0))
        got = ex(m, k, n, seconds)
        ex.check_close(got, 2 * m * n * k / seconds / 1e9, rtol=1e-9, atol=0,
                       inputs=f"m={m}, k={k}, n={n}, seconds={seconds:.6f}",
                       hint="演算回数は掛け算と足し算で 2mnk 回です。GFLOP/s は「演算回数 ÷ 秒 ÷ 10^9」です。")


def _standardize(x):
    x = x.astype(np.float64)
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5)


def test_ex1_4_standardize_rows(exercise, rng):
    ex = exercise("1-4", "standardize_rows")
    for _ in range(6):
        n, d = (int(v) for v in rng.integers(2, 9, size=2))
        if n == d:
            d += 1
        x = (rng.standard_normal((n, d)) * rng.uniform(0.5, 5) + rng.uniform(-3, 3)).astype(np.float32)
        flat, small = (int(i) for i in rng.choice(n, size=2, replace=False))
        x[flat] = np.float32(rng.uniform(-2, 2))  # 1 行だけ全部同じ値（分散 0）
        # 1 行は分散の小さい値（1e-5 を平方根の中で足すか外で足すかで、結果がはっきり違います）
        x[small] = (rng.uniform(-1, 1) + 0.02 * rng.standard_normal(d)).astype(np.float32)
        original = x.copy()
        inputs = f"shape=({n}, {d}) の float32 の乱数（{flat} 行目は全部同じ値、{small} 行目は分散の小さい値）"
        got = ex(x)
        if not np.array_equal(x, original):
            ex.fail("入力の配列 x が書き換えられています。", inputs=inputs, show_values=False,
                    hint="x -= ... のような書き方は入力を変えてしまいます。新しい配列を作って返しましょう。")
        if np.isnan(np.asarray(got, dtype=np.float64)).any():
            ex.fail("結果に NaN が含まれています。", inputs=inputs, show_values=False,
                    hint="値がすべて同じ行は分散が 0 です。分母は sqrt(分散 + 1e-5) にします。")
        x64 = x.astype(np.float64)
        mu = x64.mean(axis=1, keepdims=True)
        sd = np.sqrt(((x64 - mu) ** 2).mean(axis=1, keepdims=True))
        try:  # 全部同じ値の行は丸め誤差しだいで値が決まらないので、ヒントを選ぶときは除きます
            rest = np.delete(np.asarray(got, dtype=np.float64), flat, axis=0)
        except (TypeError, ValueError, IndexError):
            rest = None
        hint = pick_hint(rest, {
            "1e-5 は平方根の中で分散に足します（np.sqrt(分散 + 1e-5)）。平方根の外で足すと、"
            "分散の小さい行で値がずれます。": np.delete((x64 - mu) / (sd + 1e-5), flat, axis=0),
            "分母は標準偏差 sqrt(分散 + 1e-5) です。分散のまま割っていませんか。":
                np.delete((x64 - mu) / (sd ** 2 + 1e-5), flat, axis=0),
        }, "平均と分散は axis=1（行ごと）で、keepdims=True で (N, 1) のまま引き算・割り算します。")
        ex.check_close(got, _standardize(x), rtol=1e-4, atol=1e-4, inputs=inputs, hint=hint)
        ex.check_close(got, _standardize(x).astype(np.float32), check_dtype=True, rtol=1e-4, atol=1e-4,
                       inputs=inputs,
                       hint="float32 の入力には float32 を返します。np.float64 の値や float64 の配列を混ぜていませんか。")
