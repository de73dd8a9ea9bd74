"""第15章の隠しテスト（出力の大きさ・ループの im2col・最大プーリングの逆伝播・受容野）。

よくある間違い（+1 の忘れ、パディングを片側だけ、列の並びを (KH, KW, C) にする、行の並びの取り違え、
勾配を窓のすべての画素に配る、同点の窓で両方に戻す、ストライドの積を掛け忘れる）は、テストの中で同じ間違いをした
答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import numpy as np

import mini_dl.functions as F
from grader import pick_hint

# --- 練習 15-1: 出力の大きさ ------------------------------------------------------------------------


def _wrong_sizes(size, k, s, p):
    return {
        "最後の + 1 を忘れています。窓を置ける位置は 0 から (H + 2P - K) / S までなので、数は 1 つ多くなります。": (size + 2 * p - k) // s,
        "パディングは両側に P 個ずつ足すので、大きさは H + 2P です（H + P ではありません）。": (size + p - k) // s + 1,
        "割り切れないときは切り捨てます（// を使います）。窓を端からはみ出して置くことはしません。": -(-(size + 2 * p - k) // s) + 1,
        "ストライドで割るのは H + 2P - K の部分だけです。+ 1 はその後に足します。": (size + 2 * p - k + 1) // s,
    }


def test_ex15_1_output_size(exercise, rng):
    ex = exercise("15-1", "conv_output_size")
    cases = [(28, 3, 1, 1), (28, 5, 1, 0), (7, 3, 2, 1), (8, 3, 2, 0)]
    for _ in range(25):
        k = int(rng.integers(1, 6))
        s = int(rng.integers(1, 4))
        p = int(rng.integers(0, k))
        size = int(rng.integers(k, 40))
        cases.append((size, k, s, p))
    for size, k, s, p in cases:
        expected = (size + 2 * p - k) // s + 1
        got = ex.run(ex.obj, size, k, s, p)
        inputs = f"conv_output_size({size}, kernel_size={k}, stride={s}, pad={p})"
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
            ex.fail("int を返してください。", inputs=inputs, expected=expected, actual=got,
                    hint="/ は float を返します。切り捨ての割り算 // を使うと int のままです。")
        if got != expected:
            ex.fail("答えが違います。", inputs=inputs, expected=expected, actual=got,
                    hint=pick_hint(got, _wrong_sizes(size, k, s, p), "O = (H + 2P - K) // S + 1 です。", rtol=0, atol=0))


# --- 練習 15-2: ループで書く im2col ------------------------------------------------------------------


def _im2col_variants(x, k, s, p):
    ref = F.im2col_array(x, k, s, p)  # (N*OH*OW, C*KH*KW)
    N, C = x.shape[:2]
    oh = (x.shape[2] + 2 * p - k) // s + 1
    ow = (x.shape[3] + 2 * p - k) // s + 1
    r6 = np.asarray(ref).reshape(N, oh, ow, C, k, k)
    return ref, {
        "1 行の中の並びが違います。チャンネル c をいちばん外側に、c・窓の行・窓の列の順に並べます（x_pad[n, :, 行, 列].ravel() の順）。":
            r6.transpose(0, 1, 2, 4, 5, 3).reshape(N * oh * ow, -1),
        "行の並びが違います。画像 n をいちばん外側に、n・出力の行 i・出力の列 j の順に並べます。":
            r6.transpose(1, 2, 0, 3, 4, 5).reshape(N * oh * ow, -1),
        "窓の行と列が入れ替わっています。窓の中は、行 a を外側に、a・b の順に並べます。":
            r6.transpose(0, 1, 2, 3, 5, 4).reshape(N * oh * ow, -1),
    }


def test_ex15_2_im2col_loop(exercise, rng):
    ex = exercise("15-2", "im2col_loop")
    for k, s, p in [(3, 1, 0), (3, 1, 1), (2, 2, 0), (3, 2, 1), (1, 1, 0), (4, 3, 2)]:
        N, C = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        H, W = int(rng.integers(k, 8)), int(rng.integers(k, 8))
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        ref, wrong = _im2col_variants(x, k, s, p)
        got = ex.run(ex.obj, x.copy(), k, s, p)
        inputs = f"im2col_loop(x（shape {x.shape}）, kernel_size={k}, stride={s}, pad={p})"
        got_arr = np.asarray(got)
        if got_arr.shape != ref.shape:
            hint = "shape は (N*OH*OW, C*KH*KW) です。OH = (H + 2P - K) // S + 1 です。"
            if p and got_arr.ndim == 2 and got_arr.shape[1] == ref.shape[1]:
                hint = "行の数が違います。パディング（np.pad で上下左右に pad 個の 0）を忘れていませんか。"
            ex.fail("shape が違います。", inputs=inputs, expected=f"shape {ref.shape}", actual=f"shape {got_arr.shape}",
                    hint=hint, show_values=True)
        if got_arr.dtype != x.dtype:
            ex.fail("dtype が違います。", inputs=inputs, expected=x.dtype, actual=got_arr.dtype,
                    hint="x と同じ dtype（float32）で返します。np.zeros を使うなら dtype=x.dtype を指定します。")
        if not np.allclose(got_arr, ref):
            ex.fail("値が違います。", inputs=inputs, expected=np.round(np.asarray(ref)[0], 3), actual=np.round(got_arr[0], 3),
                    hint=pick_hint(got_arr, wrong, "行 (n, i, j) は x_pad[n, :, i*S:i*S+K, j*S:j*S+K].ravel() です。"))


# --- 練習 15-3: 最大プーリングの逆伝播 --------------------------------------------------------------


def _pool_variants(x, gy, k):
    N, C, H, W = x.shape
    up = gy.repeat(k, axis=2).repeat(k, axis=3)  # 窓のすべての画素に gy
    ymax = x.reshape(N, C, H // k, k, W // k, k).max(axis=(3, 5)).repeat(k, axis=2).repeat(k, axis=3)
    return {
        "勾配を窓のすべての画素に配っています。最大値をとった画素 1 つだけに戻し、ほかは 0 にします。": up,
        "それは平均プーリングの逆伝播です（gy / k² を窓のすべての画素に配る）。最大プーリングでは、最大値の画素だけに gy を戻します。":
            up / (k * k),
        "同じ最大値が 2 つ以上ある窓で、そのすべてに勾配を戻しています。最初の位置（argmax）の 1 つだけに戻します。":
            up * (x == ymax),
    }


def _ref_pool_grad(x, gy, k):
    from mini_dl import Variable

    v = Variable(x.astype(np.float64))
    y = F.max_pooling(v, k)
    F.sum(y * gy.astype(np.float64)).backward()
    return v.grad.data


def test_ex15_3_max_pool_backward(exercise, rng):
    ex = exercise("15-3", "max_pool_backward")
    for trial in range(6):
        k = int(rng.integers(2, 4))
        N, C = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        H, W = k * int(rng.integers(1, 4)), k * int(rng.integers(1, 4))
        if trial < 3:  # 同じ値の多い入力（小さな整数）: 同点の窓がある
            x = rng.integers(0, 3, size=(N, C, H, W)).astype(np.float32)
        else:
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        gy = rng.uniform(0.5, 1.5, size=(N, C, H // k, W // k)).astype(np.float32)
        expected = _ref_pool_grad(x, gy, k)
        got = np.asarray(ex.run(ex.obj, x.copy(), gy.copy(), k))
        inputs = f"max_pool_backward(x（shape {x.shape}）, gy（shape {gy.shape}）, k={k})"
        if got.shape != x.shape:
            ex.fail("shape が違います。", inputs=inputs, expected=f"shape {x.shape}", actual=f"shape {got.shape}",
                    hint="gx は x と同じ shape (N, C, H, W) です。")
        if got.dtype != x.dtype:
            ex.fail("dtype が違います。", inputs=inputs, expected=x.dtype, actual=got.dtype,
                    hint="x と同じ dtype（float32）で返します。")
        if not np.allclose(got, expected, atol=1e-6):
            ex.fail("値が違います。", inputs=inputs, expected=np.round(expected[0, 0], 3), actual=np.round(got[0, 0], 3),
                    hint=pick_hint(got, _pool_variants(x, gy, k),
                                   "窓ごとに argmax で最大値の位置を求め、その位置だけに gy を置きます。"))


# --- 練習 15-4: 受容野 ------------------------------------------------------------------------------


def _rf(layers):
    r, jump = 1, 1
    for k, s in layers:
        r += (k - 1) * jump
        jump *= s
    return r


def _wrong_rf(layers):
    no_jump = 1 + int(np.sum([k - 1 for k, _ in layers]))
    prod = int(np.prod([k for k, _ in layers])) if layers else 1
    late, jump = 1, 1
    for k, s in layers:
        jump *= s
        late += (k - 1) * jump
    return {
        "ストライドを考えていません。層を 1 つ進むたびに、幅は (K - 1) × （それまでのストライドの積）だけ広がります。": no_jump,
        "カーネルの大きさを掛け合わせるのではありません。幅は (K - 1) × （それまでのストライドの積）ずつ足して広がります。": prod,
        "ストライドを掛けるのが早すぎます。その層の (K - 1) には、その層より前の層のストライドの積を掛けます。": late,
    }


def test_ex15_4_receptive_field(exercise, rng):
    ex = exercise("15-4", "receptive_field")
    cases = [[], [(3, 1)], [(3, 1), (2, 2), (3, 1)], [(3, 1)] * 3]
    for _ in range(15):
        n = int(rng.integers(1, 6))
        cases.append([(int(rng.integers(1, 6)), int(rng.integers(1, 4))) for _ in range(n)])
    for layers in cases:
        expected = _rf(layers)
        got = ex.run(ex.obj, list(layers))
        inputs = f"receptive_field({layers})"
        if got != expected:
            ex.fail("答えが違います。", inputs=inputs, expected=expected, actual=got,
                    hint=pick_hint(got, _wrong_rf(layers), "r = 1、間隔 j = 1 から始め、各層で r += (K - 1) * j、j *= S とします。",
                                   rtol=0, atol=0))
