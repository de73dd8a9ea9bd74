"""第16章の隠しテスト（転置畳み込みの出力の大きさ・1 画素ずつの転置畳み込み・再パラメータ化・KL ダイバージェンス）。

よくある間違い（パディングを 1 回だけ引く、畳み込みの式を使う、カーネルを反転する・集める向きで計算する、
分散と標準偏差の取り違え、KL の向き・1/2・-1 の忘れ）は、テストの中で同じ間違いをした答えを作って見比べ、
当てはまればそのことをヒントで伝えます。
"""
import numpy as np

import mini_dl.functions as F
from grader import pick_hint
from mini_dl import Variable

# --- 16-1 deconv_outsize --------------------------------------------------------------------


def _outsize_mistakes(H, K, s, p, op):
    return {
        "パディングは両側の分なので 2p を引きます（p を 1 回だけ引いていませんか）。": s * (H - 1) + K - p + op,
        "H - 1 に s を掛けます（s × H ではありません）。最後の窓の左上は s(H - 1) です。": s * H + K - 2 * p + op,
        "パディングは出力の縁を切り落とす量なので、足さずに引きます。": s * (H - 1) + K + 2 * p + op,
        "output_padding を足し忘れています。": s * (H - 1) + K - 2 * p,
        "それは畳み込みの出力の大きさ (H + 2p - K) // s + 1 です。転置畳み込みはその逆です。": (H + 2 * p - K) // s + 1,
    }


def test_ex16_1_deconv_outsize(exercise, rng):
    ex = exercise("16-1", "deconv_outsize")
    cases = [(7, 4, 2, 1, 0), (14, 4, 2, 1, 0), (7, 3, 2, 1, 1), (5, 3, 1, 1, 0)]
    for _ in range(8):
        s = int(rng.integers(1, 4))
        K = int(rng.integers(1, 6))
        p = int(rng.integers(0, (K + 1) // 2 + 1))
        cases.append((int(rng.integers(2, 20)), K, s, p, int(rng.integers(0, s))))
    for H, K, s, p, op in cases:
        inputs = f"deconv_outsize({H}, {K}, {s}, {p}, output_padding={op})"
        got = ex.run(ex.obj, H, K, s, p, output_padding=op)
        expected = s * (H - 1) + K - 2 * p + op
        if not isinstance(got, (int, np.integer)):
            ex.fail("int を返してください。", inputs=inputs, expected=expected, actual=got,
                    hint="/ で割ると float になります。この式に割り算は要りません。")
        ex.check_equal(int(got), expected, inputs=inputs,
                       hint=pick_hint(got, _outsize_mistakes(H, K, s, p, op), "O = s(H - 1) + K - 2p + output_padding です。",
                                      rtol=0, atol=0))


def test_ex16_1_deconv_outsize_rejects_bad_output_padding(exercise, rng):
    ex = exercise("16-1", "deconv_outsize")
    s = int(rng.integers(1, 4))
    for op in (s, s + 1, -1):
        ex.check_raises(ValueError, ex.obj, 5, 3, s, 1, output_padding=op,
                        inputs=f"deconv_outsize(5, 3, {s}, 1, output_padding={op})",
                        hint="output_padding は 0 以上 stride 未満です。それ以外なら raise ValueError(...) します。")


# --- 16-2 deconv2d_by_hand ------------------------------------------------------------------


def _gather_conv(x, W, s):
    """よくある間違い: 0 を挟まずに、窓から集める向き（畳み込み）で計算した値（shape が合うときだけ使う）。"""
    N, C, H, Wd = x.shape
    _, OC, KH, KW = W.shape
    pad = np.pad(x, ((0, 0), (0, 0), (KH - 1, KH - 1), (KW - 1, KW - 1)))
    OH, OW = s * (H - 1) + KH, s * (Wd - 1) + KW
    y = np.zeros((N, OC, OH, OW))
    for r in range(min(OH, pad.shape[2] - KH + 1)):
        for q in range(min(OW, pad.shape[3] - KW + 1)):
            y[:, :, r, q] = np.einsum("nckl,cokl->no", pad[:, :, r:r + KH, q:q + KW], W)
    return y


def _deconv_mistakes(x, W, s):
    flipped = W[:, :, ::-1, ::-1]
    return {
        "カーネルを上下左右に反転しています。1 画素ずつ配る形では、W[c, o, kh, kw] をそのまま窓の (kh, kw) に足します。":
            F.deconv2d(x, np.ascontiguousarray(flipped), stride=s).data,
        "窓から集める向き（畳み込み）で計算していませんか。入力の 1 画素ごとに、カーネル全体を出力の窓に足し込みます。":
            _gather_conv(x, W, s),
        "足し込まずに代入（=）していませんか。窓が重なる場所では、値を += で足します。": _assign_instead(x, W, s),
    }


def _assign_instead(x, W, s):
    N, C, H, Wd = x.shape
    _, OC, KH, KW = W.shape
    y = np.zeros((N, OC, s * (H - 1) + KH, s * (Wd - 1) + KW))
    for i in range(H):
        for j in range(Wd):
            y[:, :, i * s:i * s + KH, j * s:j * s + KW] = np.einsum("nc,cokl->nokl", x[:, :, i, j], W)
    return y


def test_ex16_2_deconv2d_by_hand(exercise, rng):
    ex = exercise("16-2", "deconv2d_by_hand")
    for k in range(6):
        N, C, OC = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        H, Wd = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        KH, KW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        s = [1, 2, 3][k % 3]
        x = rng.standard_normal((N, C, H, Wd))
        W = rng.standard_normal((C, OC, KH, KW))
        inputs = f"x: shape {x.shape}、W: shape {W.shape}、stride={s}"
        with ex.context(inputs=inputs, hint="W は (C, OC, KH, KW) です（conv2d の (OC, C, KH, KW) と最初の 2 軸が逆）。"):
            got = ex(x.copy(), W.copy(), s)
        expected = F.deconv2d(x, W, stride=s).data
        ex.check_close(got, expected, rtol=1e-6, atol=1e-8, inputs=inputs,
                       hint=pick_hint(got, _deconv_mistakes(x, W, s),
                                      "出力は zeros((N, OC, s(H-1)+KH, s(W-1)+KW)) から始め、x[n, c, i, j] * W[c, o] を "
                                      "y[n, o, i*s:i*s+KH, j*s:j*s+KW] に += で足します。"))


def test_ex16_2_deconv2d_by_hand_keeps_float32(exercise, rng):
    ex = exercise("16-2", "deconv2d_by_hand")
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    W = rng.standard_normal((2, 1, 2, 2)).astype(np.float32)
    inputs = f"float32 の x: shape {x.shape}、W: shape {W.shape}、stride=2"
    got = ex(x, W, 2)
    expected = F.deconv2d(x, W, stride=2).data
    ex.check_close(got, expected, rtol=1e-5, atol=1e-6, inputs=inputs,
                   hint=pick_hint(got, _deconv_mistakes(x, W, 2), "出力の窓に x[n, c, i, j] * W[c, o] を += で足します。"))
    ex.check_close(got, expected, rtol=1e-5, atol=1e-6, check_dtype=True, inputs=inputs,
                   hint="np.zeros(...) の既定は float64 です。dtype=x.dtype を指定します。")


# --- 16-3 reparameterize --------------------------------------------------------------------


def _reparam_mistakes(mu, logvar, eps):
    return {
        "exp(logvar) は分散 σ² です。掛けるのは標準偏差 σ = exp(logvar / 2) です。": mu + np.exp(logvar) * eps,
        "logvar は対数分散なので、そのまま掛けずに exp(logvar / 2) にします。": mu + logvar * eps,
        "σ = exp(logvar / 2) です（exp(2 logvar) や sqrt(logvar) ではありません）。": mu + np.exp(2 * logvar) * eps,
        "平均 mu を足し忘れています。": np.exp(0.5 * logvar) * eps,
    }


def test_ex16_3_reparameterize_values_and_gradients(exercise, rng):
    ex = exercise("16-3", "reparameterize")
    for _ in range(4):
        N, D = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        mu_np = rng.standard_normal((N, D)).astype(np.float32)
        logvar_np = rng.uniform(-2, 1.5, size=(N, D)).astype(np.float32)
        eps = rng.standard_normal((N, D)).astype(np.float32)
        inputs = f"mu, logvar, eps: shape {(N, D)} の float32（logvar の先頭 {np.round(logvar_np.ravel()[:3], 3).tolist()}）"
        mu, logvar = Variable(mu_np.copy()), Variable(logvar_np.copy())
        z = ex(mu, logvar, eps.copy())
        if not isinstance(z, Variable):
            ex.fail("Variable を返してください。", inputs=inputs, expected="Variable", actual=type(z).__name__,
                    hint=".data を取り出して NumPy で計算すると、mu と logvar に勾配が流れません。F.exp と演算子で書きます。")
        m64, l64, e64 = (a.astype(np.float64) for a in (mu_np, logvar_np, eps))
        expected = m64 + np.exp(0.5 * l64) * e64
        ex.check_close(z.data, expected, rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint=pick_hint(z.data, _reparam_mistakes(m64, l64, e64), "z = mu + exp(0.5 * logvar) * eps です。"))
        ex.check_close(z.data, expected.astype(np.float32), rtol=1e-5, atol=1e-6, check_dtype=True, inputs=inputs,
                       hint="float32 のまま計算します。eps を float64 にしたり、np.float64 の定数を掛けたりしていませんか。")
        ex.run(F.sum(z).backward)
        if mu.grad is None or logvar.grad is None:
            ex.fail("mu.grad か logvar.grad が None です（勾配が流れていません）。", inputs=inputs, expected="勾配",
                    actual=None, hint="mu と logvar を Variable のまま、F.exp と + * で計算します。")
        ex.check_close(mu.grad.data, np.ones((N, D)), inputs=inputs, hint="dz/dmu は 1 のはずです。")
        ex.check_close(logvar.grad.data, 0.5 * np.exp(0.5 * l64) * e64, rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint="dz/dlogvar は 0.5 * exp(0.5 * logvar) * eps です。logvar を定数扱いしていませんか。")


# --- 16-4 kl_diag_gaussians -----------------------------------------------------------------


def _kl(m1, l1, m2, l2):
    return 0.5 * np.sum(l2 - l1 + (np.exp(l1) + (m1 - m2) ** 2) / np.exp(l2) - 1, axis=1)


def _kl_mistakes(m1, l1, m2, l2):
    full = l2 - l1 + (np.exp(l1) + (m1 - m2) ** 2) / np.exp(l2) - 1
    return {
        "向きが逆です。KL(q || p) は q = N(mu1, ·) についての期待値で、KL(p || q) とは値が違います。": _kl(m2, l2, m1, l1),
        "1/2 を掛け忘れています。": np.sum(full, axis=1),
        "-1 を忘れています（同じ分布なら KL は 0 になるはずです）。": 0.5 * np.sum(full + 1, axis=1),
        "logvar は対数分散です。分散は exp(logvar) です（logvar をそのまま分散として使っていませんか）。":
            0.5 * np.sum(np.log(np.abs(l2) + 1e-300) - np.log(np.abs(l1) + 1e-300) + (l1 + (m1 - m2) ** 2) / l2 - 1, axis=1),
        "(mu1 - mu2)² も σ2² で割ります。": 0.5 * np.sum(l2 - l1 + np.exp(l1) / np.exp(l2) + (m1 - m2) ** 2 - 1, axis=1),
    }


def test_ex16_4_kl_diag_gaussians(exercise, rng):
    ex = exercise("16-4", "kl_diag_gaussians")
    for _ in range(5):
        N, D = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        m1, m2 = rng.standard_normal((N, D)), rng.standard_normal((N, D))
        l1, l2 = rng.uniform(-1.5, 1.5, size=(N, D)), rng.uniform(-1.5, 1.5, size=(N, D))
        inputs = f"mu1, logvar1, mu2, logvar2: shape {(N, D)}（mu1 の先頭 {np.round(m1.ravel()[:3], 3).tolist()}）"
        got = ex(m1.copy(), l1.copy(), m2.copy(), l2.copy())
        ex.check_close(got, _kl(m1, l1, m2, l2), rtol=1e-6, atol=1e-9, inputs=inputs,
                       hint=pick_hint(got, _kl_mistakes(m1, l1, m2, l2),
                                      "1 次元ごとに 0.5 * (logvar2 - logvar1 + (exp(logvar1) + (mu1 - mu2)**2) / exp(logvar2) - 1) "
                                      "を計算し、axis=1 で足します（shape (N,)）。"))


def test_ex16_4_kl_to_standard_normal_and_to_itself(exercise, rng):
    ex = exercise("16-4", "kl_diag_gaussians")
    N, D = 3, 2
    m, l = rng.standard_normal((N, D)), rng.uniform(-1, 1, size=(N, D))
    zeros = np.zeros((N, D))
    inputs = f"mu2 = 0、logvar2 = 0（標準正規分布）、mu1, logvar1: shape {(N, D)}"
    got = ex(m.copy(), l.copy(), zeros.copy(), zeros.copy())
    ex.check_close(got, 0.5 * np.sum(m ** 2 + np.exp(l) - l - 1, axis=1), rtol=1e-6, atol=1e-9, inputs=inputs,
                   hint="N(0, I) に対しては、本文の VAE の KL 項 0.5 Σ (mu² + exp(logvar) - logvar - 1) と同じになります。")
    got = ex(m.copy(), l.copy(), m.copy(), l.copy())
    ex.check_close(got, np.zeros(N), atol=1e-9, inputs="同じ 2 つの分布",
                   hint="同じ分布どうしの KL ダイバージェンスは 0 です。-1 を忘れていませんか。")
