"""リダクションのカーネル（第13章）: ブロックごとの木の形の総和と、1 行に 1 ブロックのソフトマックス交差エントロピー。

共有メモリの配列の大きさはコンパイルのときに決まっていなければなりません。そこで 1 ブロックのスレッドの数
``threads`` ごとに、カーネルを関数の中で定義してコンパイルします（``threads`` はカーネルの中では定数です）。
"""
import functools
import math

import numpy as np

from mini_dl.kernels.launch import _check_array, _same_device, blocks_for, load_numba_cuda

REDUCE_THREADS = 128  # リダクションの 1 ブロックのスレッド数（2 のべき乗: 木を半分ずつたたむため）


@functools.lru_cache(maxsize=None)
def _sum_kernel(threads):
    """``threads`` スレッドのブロックで、ブロックごとの部分和を求めるカーネルを返します（初回だけコンパイル）。"""
    global cuda
    cuda = load_numba_cuda()

    def block_sum_kernel(x, partial):
        buf = cuda.shared.array(threads, np.float32)  # ブロックの全スレッドで共有する作業場所
        tid = cuda.threadIdx.x
        i = cuda.blockIdx.x * threads + tid
        buf[tid] = x[i] if i < x.size else 0  # はみ出したスレッドは 0 を置く（和を変えない）
        cuda.syncthreads()  # 全員が書き終えるまで待つ
        stride = threads // 2
        while stride > 0:  # 木の形: 半分のスレッドが、相方の値を足し込む
            if tid < stride:
                buf[tid] += buf[tid + stride]
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            partial[cuda.blockIdx.x] = buf[0]

    return cuda.jit(block_sum_kernel)


def sum(x, threads=REDUCE_THREADS):
    """全要素の和をカーネルで求めます。ブロックごとの部分和を、1 個になるまで繰り返したたみます。

    Args:
        x (numpy.ndarray | cupy.ndarray): float32 の配列（形は問いません）。
        threads (int): 1 ブロックのスレッドの数（2 のべき乗）。

    Returns:
        numpy.ndarray | cupy.ndarray: 形 ``()`` の float32 の配列（入力と同じ装置）。

    Raises:
        TypeError: float32 でないとき。
        ValueError: ``threads`` が 2 のべき乗でないとき。
    """
    _check_array("x", x)
    if threads < 1 or threads & (threads - 1):
        raise ValueError(f"threads は 2 のべき乗にしてください（受け取ったのは {threads}）。")
    xp = _same_device(x)
    kernel = _sum_kernel(threads)
    x = x.reshape(-1)
    while True:  # 1 回の起動で、要素の数が 1/threads になる
        n_blocks = blocks_for(x.size, threads)
        partial = xp.empty(n_blocks, dtype=np.float32)
        kernel[n_blocks, threads](x, partial)
        if n_blocks == 1:
            return partial.reshape(())
        x = partial


def sum_reference(x):
    """``sum`` の NumPy の参照実装です（float32 の 0 次元配列を返します）。"""
    return np.asarray(x.sum(dtype=np.float32))


@functools.lru_cache(maxsize=None)
def _softmax_cross_entropy_kernel(threads):
    """1 行に 1 ブロックの、ソフトマックス交差エントロピーのカーネルを返します（初回だけコンパイル）。"""
    global cuda
    cuda = load_numba_cuda()

    def softmax_cross_entropy_kernel(x, t, loss):
        buf = cuda.shared.array(threads, np.float32)
        row, tid = cuda.blockIdx.x, cuda.threadIdx.x
        n_cols = x.shape[1]
        # 1) 行の最大値: 各スレッドが列を threads 個おきに見てから、木の形でたたむ
        m = -math.inf
        for c in range(tid, n_cols, threads):
            m = max(m, x[row, c])
        buf[tid] = m
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if tid < stride:
                buf[tid] = max(buf[tid], buf[tid + stride])
            cuda.syncthreads()
            stride //= 2
        m = buf[0]
        cuda.syncthreads()  # 全員が最大値を読んでから、buf を使い回す
        # 2) exp(x - max) の和: 同じ形のリダクション
        s = 0.0
        for c in range(tid, n_cols, threads):
            s += math.exp(x[row, c] - m)
        buf[tid] = s
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if tid < stride:
                buf[tid] += buf[tid + stride]
            cuda.syncthreads()
            stride //= 2
        # 3) 損失 = log(和) + 最大値 - 正解のロジット（範囲外のラベルは NaN）
        if tid == 0:
            label = t[row]
            if 0 <= label < n_cols:
                loss[row] = math.log(buf[0]) + m - x[row, label]
            else:
                loss[row] = math.nan

    return cuda.jit(softmax_cross_entropy_kernel)


def softmax_cross_entropy(x, t, threads=REDUCE_THREADS):
    r"""行ごとのソフトマックス交差エントロピー :math:`\log\sum_j e^{x_{ij}} - x_{i t_i}` を 1 つのカーネルで求めます。

    1 行に 1 ブロックを割り当て、最大値と指数の和を共有メモリのリダクションで求めます。ソフトマックスの
    確率の行列をメモリに書かないので、読むのは ``x`` の 1 回だけです。平均は ``loss.mean()`` で、
    ``mini_dl.functions.softmax_cross_entropy`` の値になります。

    Args:
        x (numpy.ndarray | cupy.ndarray): float32 のロジット。
        t (numpy.ndarray | cupy.ndarray): 整数の正解のクラス番号。範囲外の番号の行の損失は NaN です。
        threads (int): 1 ブロックのスレッドの数（2 のべき乗）。

    Returns:
        numpy.ndarray | cupy.ndarray: 行ごとの損失（float32、入力と同じ装置）。

    Shape:
        ``x``: (N, C)、``t``: (N,)、戻り値: (N,)。

    Raises:
        TypeError: ``x`` が float32 でないとき、``t`` が整数でないとき。
        ValueError: 形が合わないとき、``threads`` が 2 のべき乗でないとき。
    """
    _check_array("x", x, ndim=2), _check_array("t", t, dtype="int", ndim=1)
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"t の長さは x の行の数 {x.shape[0]} にしてください（受け取った形は {t.shape}）。")
    if threads < 1 or threads & (threads - 1):
        raise ValueError(f"threads は 2 のべき乗にしてください（受け取ったのは {threads}）。")
    xp = _same_device(x, t)
    loss = xp.empty(x.shape[0], dtype=np.float32)
    if x.shape[0] > 0:
        _softmax_cross_entropy_kernel(threads)[x.shape[0], threads](x, t, loss)  # 1 行に 1 ブロック
    return loss


def softmax_cross_entropy_reference(x, t):
    """``softmax_cross_entropy`` の NumPy の参照実装です（行ごとの損失）。"""
    m = x.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
    return (log_z - x[np.arange(len(x)), t]).astype(np.float32)
