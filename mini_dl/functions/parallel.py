"""畳み込みとプーリングの、CPU の複数のコアで動くカーネル（第15章、numba）。

NumPy の要素ごとの計算は 1 つのコアで動きます。ここでは、同じ計算を numba の ``prange`` で書き、
(N, C) の組（画像 1 枚の 1 チャンネル）ごとに、すべてのコアへ分けます。結果は NumPy の版とビット単位で同じです
（足す順番も、最大値の選び方も同じにしてあります）。

このモジュールは numba を import するので、``mini_dl.functions.cpu.parallel_kernels()`` が、
初めて要るときにだけ読み込みます。どのカーネルも、結果を書く配列（``col``・``img``・``y`` など）を受け取り、何も返しません。
"""
from numba import njit, prange, uint64


@njit(cache=True)
def _valid_range(j, s, p, size, out):
    """窓の中の位置 j について、画像の内側に入る出力の位置 b の範囲 [b0, b1)（0 <= b*S - P + j < size）。"""
    b0 = -((j - p) // s)  # ceil((P - j) / S): 画像の左端を読む最初の b
    b1 = (size - 1 + p - j) // s + 1  # 画像の右端を越えない最後の b の次
    b0 = 0 if b0 < 0 else b0 if b0 < out else out  # 出力の範囲 0..out に収める
    b1 = b0 if b1 < b0 else b1 if b1 < out else out
    return b0, b1


@njit(parallel=True, cache=True)
def im2col_kernel(x, kh, kw, sh, sw, ph, pw, col):
    """im2col: ``col[(c, i, j), (n, a, b)] = x[n, c, a*SH - PH + i, b*SW - PW + j]``（画像の外は 0）。

    Shape:
        x: (N, C, H, W)、col: (C*KH*KW, N*OH*OW)（どちらも C の並び）
    """
    N, C, H, W = x.shape
    ow = (W + 2 * pw - kw) // sw + 1
    size = col.shape[1] // N  # OH*OW
    oh = size // ow
    xf, cf = x.reshape(-1), col.reshape(-1)  # 1 次元にして、添字を自分で計算する
    for r in prange(C * kh * kw * N):  # 行 (c, i, j) と画像 n の組ごとに、コアへ分ける
        n, q = r % N, r // N
        c, i, j = q // (kh * kw), q // kw % kh, q % kw
        a0, a1 = _valid_range(i, sh, ph, H, oh)  # 画像の内側を読む出力の行 [a0, a1) と列 [b0, b1)
        b0, b1 = _valid_range(j, sw, pw, W, ow)
        for a in range(oh):
            dst = q * col.shape[1] + n * size + a * ow  # col の中の、この行の先頭
            if a < a0 or a >= a1:  # 上下のパディングだけを読む行
                for b in range(ow):
                    cf[dst + b] = 0
                continue
            for b in range(b0):  # 左右のパディング
                cf[dst + b] = 0
            for b in range(b1, ow):
                cf[dst + b] = 0
            # 内側のコピー。添字を符号なしにすると、負の添字（後ろから数える）の確かめが消えて速くなる
            d, s, step = uint64(dst + b0), uint64(((n * C + c) * H + a * sh - ph + i) * W + b0 * sw - pw + j), uint64(sw)
            for b in range(uint64(b1 - b0)):
                cf[d + b] = xf[s + b * step]


@njit(parallel=True, cache=True)
def col2im_kernel(col, kh, kw, sh, sw, ph, pw, img):
    """col2im: ``col`` の値を ``img``（0 で初期化したもの）の元の位置に足します。

    1 つの画素には、窓の中の位置 (i, j) の順に足します（NumPy の版と同じ順なので、丸めも同じです）。

    Shape:
        col: (C*KH*KW, N*OH*OW)、img: (N, C, H, W)（どちらも C の並び）
    """
    N, C, H, W = img.shape
    ow = (W + 2 * pw - kw) // sw + 1
    size = col.shape[1] // N
    oh = size // ow
    cf, imf = col.reshape(-1), img.reshape(-1)
    for r in prange(N * C):  # (n, c) の組ごとに、コアへ分ける（組どうしは同じ画素に書かない）
        n, c = r % N, r // N
        for i in range(kh):
            a0, a1 = _valid_range(i, sh, ph, H, oh)
            for j in range(kw):
                b0, b1 = _valid_range(j, sw, pw, W, ow)
                for a in range(a0, a1):
                    s = uint64(((c * kh + i) * kw + j) * col.shape[1] + n * size + a * ow + b0)
                    d, step = uint64(((n * C + c) * H + a * sh - ph + i) * W + b0 * sw - pw + j), uint64(sw)
                    for b in range(uint64(b1 - b0)):
                        imf[d + b * step] += cf[s + b]


@njit(parallel=True, cache=True)
def max_pooling_2x2_kernel(x, y, idx):
    """重ならない 2×2 の最大プーリング: 最大値 ``y`` と窓の中の位置 ``idx``（k = 2*段 + 列、同点なら先の位置）。

    NumPy の版（``_max_pooling_2x2``）と同じトーナメントで、NaN があれば NaN を選びます（``np.maximum`` と同じ）。

    Shape:
        x: (N, C, H, W)、y と idx: (N, C, H//2, W//2)
    """
    N, C, OH, OW = y.shape
    for r in prange(N * C):
        n, c = r % N, r // N
        for a in range(OH):
            for b in range(OW):
                va, vb = x[n, c, 2 * a, 2 * b], x[n, c, 2 * a, 2 * b + 1]
                vc, vd = x[n, c, 2 * a + 1, 2 * b], x[n, c, 2 * a + 1, 2 * b + 1]
                ab = va if va > vb or va != va else vb  # np.maximum と同じ: NaN は残し、等しければ（±0 も）後ろ
                cd = vc if vc > vd or vc != vc else vd
                lower = cd > ab  # 下の段の勝者が真に大きいときだけ下の段
                right = vd > vc if lower else vb > va  # 勝った段の中で、右が真に大きいか
                y[n, c, a, b] = ab if ab > cd or ab != ab else cd
                idx[n, c, a, b] = 2 * lower + right


@njit(parallel=True, cache=True)
def max_pooling_2x2_grad_kernel(gy, idx, gx):
    """2×2 の最大プーリングの逆伝播: 窓ごとに、覚えておいた位置 ``idx`` には ``gy`` を、ほかの位置には 0 を書きます。

    Shape:
        gy と idx: (N, C, OH, OW)、gx: (N, C, H, W)（H と W が奇数なら、はみ出た端は呼ぶ側で 0 にしておきます）
    """
    N, C, OH, OW = gy.shape
    for r in prange(N * C):
        n, c = r % N, r // N
        for a in range(OH):
            for b in range(OW):
                g, k = gy[n, c, a, b], idx[n, c, a, b]  # NumPy の版と同じく g に 0 か 1 を掛ける（NaN の g は NaN のまま）
                gx[n, c, 2 * a, 2 * b] = g * (k == 0)
                gx[n, c, 2 * a, 2 * b + 1] = g * (k == 1)
                gx[n, c, 2 * a + 1, 2 * b] = g * (k == 2)
                gx[n, c, 2 * a + 1, 2 * b + 1] = g * (k == 3)
