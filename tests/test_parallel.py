"""CPU の並列カーネル（``mini_dl.functions.parallel``）と、大きな配列の作業領域（``Workspace``）のテスト。

並列カーネルは NumPy の版とビット単位で同じ結果を返すはずです。``MINI_DL_PARALLEL=0`` で NumPy の版に切り替え、
いろいろな形・ストライド・パディング・並び（転置したビュー）・dtype・NaN と inf で、両方の結果を比べます。
"""
import numpy as np
import pytest

import mini_dl.functions as F
from mini_dl import Variable, optimizers
from mini_dl.functions import cpu
from mini_dl.functions.cpu import Workspace
from mini_dl.models import CNN

pytest.importorskip("numba")

CASES = [  # (x の shape, kernel, stride, pad)
    ((2, 3, 7, 6), 3, 1, 1),
    ((2, 3, 7, 6), 3, 2, 1),
    ((1, 2, 9, 8), (2, 3), (1, 2), (0, 2)),
    ((3, 1, 5, 5), 1, 1, 0),
    ((2, 2, 6, 7), (3, 2), (3, 2), (2, 1)),
    ((1, 2, 4, 4), 5, 1, 2),  # 窓が画像より大きい（パディングで入る）
]


def both(monkeypatch, f):
    """``f()`` を NumPy の版と並列カーネルの版で実行し、両方の結果を返します。"""
    with cpu.numpy_only():
        ref = f()
    return ref, f()


def same(a, b):
    """shape・dtype・値（NaN の位置と、0 の符号も）がすべて同じか。"""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert np.array_equal(a, b, equal_nan=True), np.nanmax(np.abs(a.astype(np.float64) - b))
    assert np.array_equal(np.signbit(a), np.signbit(b)) if a.dtype.kind == "f" else True


def inputs(shape, dtype, layout, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if layout == "transposed":  # 畳み込みの出力のような、(C, N, H, W) の並びを並べ替えたビュー
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    return x


def test_kernels_are_used(monkeypatch):
    assert cpu.parallel_kernels(np.zeros(2, np.float32)) is not None
    with cpu.numpy_only():
        assert cpu.parallel_kernels(np.zeros(2, np.float32)) is None and not cpu.workspace.enabled
    assert cpu.workspace.enabled
    monkeypatch.setenv("MINI_DL_PARALLEL", "0")  # 環境変数でも止められる
    assert cpu.parallel_kernels(np.zeros(2, np.float32)) is None
    monkeypatch.delenv("MINI_DL_PARALLEL")
    assert cpu.parallel_kernels(np.zeros(2, np.float16)) is None  # numba は float16 を扱わない
    assert cpu.parallel_kernels(np.zeros(2, np.float32).view(np.ndarray), np.zeros(2, np.int64)) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["c", "transposed"])
@pytest.mark.parametrize("shape, k, s, p", CASES)
def test_im2col_and_col2im_equal_numpy(monkeypatch, shape, k, s, p, layout, dtype):
    x = inputs(shape, dtype, layout)
    ref, got = both(monkeypatch, lambda: F.im2col_array(x, k, s, p))
    same(ref, got)
    col = ref * dtype(1.7) + dtype(0.1)
    ref, got = both(monkeypatch, lambda: F.col2im_array(col, shape, k, s, p))
    same(ref, got)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (3, 2, 7, 9), (1, 1, 2, 2)])
@pytest.mark.parametrize("layout", ["c", "transposed"])
def test_max_pooling_2x2_equals_numpy_with_ties_nan_and_inf(monkeypatch, shape, layout):
    x = np.round(inputs(shape, np.float32, layout) * 1.5)  # 同点がたくさんある
    x[0, 0, 0, 0], x[-1, -1, -1, -1] = np.nan, np.inf
    x[0, -1, 1, :] = -0.0
    gy = np.random.default_rng(1).standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(np.float32)
    gy[0, 0, 0, 0] = np.nan

    def run():
        xv = Variable(x.copy())
        y = F.max_pooling(xv, 2)
        y.grad = Variable(gy)
        y.backward()
        return y.data, xv.grad.data, y.creator.indexes

    for a, b in zip(*both(monkeypatch, run)):
        same(a, b)


def test_cnn_training_step_is_bit_identical(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 12, 12)).astype(np.float32)
    t = rng.integers(0, 10, size=8)

    def train():
        model = CNN((4, 8), 10, seed=0)
        opt = optimizers.Adam().setup(model)
        for _ in range(3):
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            opt.update()
        return [loss.data] + [p.data.copy() for p in model.params()]

    for a, b in zip(*both(monkeypatch, train)):
        same(a, b)


def test_second_backward_recomputes_the_matrix():
    # 逆伝播で col を作業領域へ返したあと、同じグラフでもう一度逆伝播しても、同じ勾配になる
    rng = np.random.default_rng(0)
    x = Variable(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    W = Variable(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    y = F.sum(F.conv2d(x, W, None, 1, 1) ** 2)
    y.backward()
    first = W.grad.data.copy()
    F.conv2d(Variable(rng.standard_normal((2, 3, 6, 6)).astype(np.float32)), W, None, 1, 1)  # 作業領域の行列を使い回させる
    W.cleargrad()
    y.backward()
    same(first, W.grad.data)


def test_workspace_reuses_only_what_it_lent():
    ws = Workspace(min_bytes=0)
    a = ws.take((3, 4), np.float32)
    ws.give(a.T)  # 全体のビューでも返せる
    assert ws.take((3, 4), np.float32) is a and ws.nbytes == 0
    ws.give(a[:2])  # 一部のビューは受け取らない
    ws.give(np.empty((3, 4), np.float32))  # take が渡していない配列も受け取らない
    assert ws.nbytes == 0
    ws.give(a)
    ws.give(a)  # 2 回返しても、取っておくのは 1 回
    assert ws.nbytes == a.nbytes and ws.take((3, 4), np.float32) is a
    assert ws.take((3, 4), np.float32) is not a
    ws.give(ws.take((4, 3), np.float64))
    ws.clear()
    assert ws.nbytes == 0 and not ws.free


def test_workspace_limits():
    ws = Workspace(max_bytes=100, min_bytes=16)
    small, big = ws.take((2,), np.float32), ws.take((30,), np.float32)
    ws.give(small)  # 16 バイトより小さい
    ws.give(big)  # 120 バイトは上限を超える
    assert ws.nbytes == 0


def test_set_num_threads():
    before = cpu.get_num_threads()
    try:
        cpu.set_num_threads(1)
        assert cpu.get_num_threads() == 1
    finally:
        cpu.set_num_threads(before)


def test_without_numba_everything_falls_back_to_numpy(monkeypatch):
    monkeypatch.setattr(cpu, "_loaded", False)  # numba が入っていないときと同じ
    assert cpu.parallel_kernels(np.zeros(2, np.float32)) is None
    assert cpu.get_num_threads() == 1
    cpu.set_num_threads(2)  # 何もしない
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    y = F.max_pooling(F.conv2d(x, np.ones((4, 3, 3, 3), np.float32), None, 1, 1), 2)
    assert y.shape == (2, 4, 3, 3)


def test_threading_layer_is_tbb_when_installed():
    # OpenMP のスレッドは待つ間 CPU を回し続け、OpenBLAS のスレッドとコアを取り合うので、tbb があれば TBB を使う
    import importlib.metadata
    import os

    import numba
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tbb が入っていません")
    if os.environ.get("NUMBA_THREADING_LAYER"):
        pytest.skip("スレッドの仕組みが環境変数で決められています")
    F.max_pooling(np.zeros((1, 1, 2, 2), np.float32), 2)  # カーネルを動かして、スレッドの仕組みを読み込ませる
    assert numba.threading_layer() == "tbb"
