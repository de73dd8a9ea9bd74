"""行列積のカーネル（第13章）: 素朴な GEMM と、共有メモリのタイルを使う GEMM。

素朴な GEMM は、出力の 1 要素に 1 スレッドを割り当て、``a`` の行と ``b`` の列をグローバルメモリから
読みます。タイルの GEMM は、``tile × tile`` のブロックが ``a`` と ``b`` のタイルを共有メモリに一度だけ
読み込み、ブロックの全スレッドでそれを使い回します。グローバルメモリから読む量が ``1 / tile`` になります。
"""
import functools

import numpy as np

from mini_dl.kernels.launch import _check_array, _same_device, blocks_for, load_numba_cuda

TILE = 16  # タイルの一辺（1 ブロック 16 × 16 = 256 スレッド）


def matmul_naive_kernel(a, b, c):
    """出力の 1 要素 ``c[row, col]`` に 1 スレッド。``a`` の行と ``b`` の列を、グローバルメモリから直接読みます。"""
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x  # x 方向 → 列
    row = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y  # y 方向 → 行
    if row < c.shape[0] and col < c.shape[1]:
        acc = np.float32(0)
        for k in range(a.shape[1]):
            acc += a[row, k] * b[k, col]
        c[row, col] = acc


@functools.lru_cache(maxsize=None)
def _gemm_kernels(tile):
    """素朴な GEMM と、一辺 ``tile`` のタイルの GEMM をコンパイルして返します（``tile`` ごとに初回だけ）。"""
    global cuda
    cuda = load_numba_cuda()

    def matmul_tiled_kernel(a, b, c):
        sa = cuda.shared.array((tile, tile), np.float32)  # a のタイル（ブロックで共有）
        sb = cuda.shared.array((tile, tile), np.float32)  # b のタイル
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        col = cuda.blockIdx.x * tile + tx
        row = cuda.blockIdx.y * tile + ty
        n_k = a.shape[1]
        acc = np.float32(0)
        for k0 in range(0, n_k, tile):  # k の方向にタイルを 1 枚ずつ進める
            # 各スレッドが a と b の 1 要素ずつを読み込む。はみ出した所には 0 を置く（積に効かない）
            sa[ty, tx] = a[row, k0 + tx] if row < a.shape[0] and k0 + tx < n_k else 0
            sb[ty, tx] = b[k0 + ty, col] if k0 + ty < n_k and col < b.shape[1] else 0
            cuda.syncthreads()  # タイルがそろうまで待つ
            for k in range(tile):
                acc += sa[ty, k] * sb[k, tx]
            cuda.syncthreads()  # 全員が使い終えるまで、次のタイルで上書きしない
        if row < c.shape[0] and col < c.shape[1]:
            c[row, col] = acc

    return cuda.jit(matmul_naive_kernel), cuda.jit(matmul_tiled_kernel)


def _check_matmul(a, b):
    _check_array("a", a, ndim=2), _check_array("b", b, ndim=2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a の列の数と b の行の数をそろえてください（受け取った形は {a.shape} と {b.shape}）。")
    return _same_device(a, b)


def matmul_naive(a, b, block=(16, 16)):
    """素朴な GEMM ``a @ b``（比べるための、共有メモリを使わない版）。

    Args:
        a (numpy.ndarray | cupy.ndarray): float32 の行列。
        b (numpy.ndarray | cupy.ndarray): float32 の行列。
        block (tuple[int, int]): 1 ブロックのスレッドの数 ``(x 方向, y 方向)``。

    Returns:
        numpy.ndarray | cupy.ndarray: ``a @ b``（float32、入力と同じ装置）。

    Shape:
        ``a``: (M, K)、``b``: (K, N)、戻り値: (M, N)。

    Raises:
        TypeError: float32 でないとき、NumPy と GPU の配列が混ざっているとき。
        ValueError: 形が合わないとき。
    """
    xp = _check_matmul(a, b)
    c = xp.empty((a.shape[0], b.shape[1]), dtype=np.float32)
    grid = (blocks_for(c.shape[1], block[0]), blocks_for(c.shape[0], block[1]))  # (列のブロック, 行のブロック)
    _gemm_kernels(TILE)[0][grid, block](a, b, c)
    return c


def matmul(a, b, tile=TILE):
    """共有メモリのタイルを使う GEMM ``a @ b``。どんな形（タイルの倍数でない形も）でも計算できます。

    1 ブロックは ``tile × tile`` のスレッドで、出力の ``tile × tile`` の区画を受け持ちます。

    Args:
        a (numpy.ndarray | cupy.ndarray): float32 の行列。
        b (numpy.ndarray | cupy.ndarray): float32 の行列。
        tile (int): タイルの一辺（GPU では 16 か 32、シミュレータでは小さく）。

    Returns:
        numpy.ndarray | cupy.ndarray: ``a @ b``（float32、入力と同じ装置）。

    Shape:
        ``a``: (M, K)、``b``: (K, N)、戻り値: (M, N)。

    Raises:
        TypeError: float32 でないとき、NumPy と GPU の配列が混ざっているとき。
        ValueError: 形が合わないとき、``tile`` が 1 から 32 の整数でないとき。
    """
    xp = _check_matmul(a, b)
    if not 1 <= tile <= 32:
        raise ValueError(f"tile は 1 から 32 にしてください（1 ブロック 1024 スレッドまで。受け取ったのは {tile}）。")
    c = xp.empty((a.shape[0], b.shape[1]), dtype=np.float32)
    grid = (blocks_for(c.shape[1], tile), blocks_for(c.shape[0], tile))  # 出力の区画の数（列, 行）
    _gemm_kernels(tile)[1][grid, (tile, tile)](a, b, c)
    return c


def matmul_reference(a, b):
    """``matmul`` と ``matmul_naive`` の NumPy の参照実装です。"""
    return a @ b
