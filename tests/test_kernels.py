"""``mini_dl.kernels`` のテスト: どのカーネルも、NumPy の参照実装と突き合わせます。

GPU が無ければ numba の CUDA シミュレータ（CPU の上で 1 スレッドを Python のスレッド 1 つで動かします）で
動かすので、形は小さくし、タイルの倍数でない形（1×1、17×13 @ 13×19 など）を選びます。
GPU があれば、同じテストを CuPy の配列でも動かします（``dev`` フィクスチャ）。
"""
import os

import numpy as np
import pytest

from mini_dl import cuda

if not cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # numba を import する前に（シミュレータを選ぶ）

pytest.importorskip("numba")
from mini_dl import kernels as K  # noqa: E402


@pytest.fixture(params=["numpy", "cupy"])
def dev(request):
    """カーネルに渡す配列: NumPy（GPU が無ければシミュレータで、あれば numba が GPU との間で写します）か CuPy。"""
    if request.param == "numpy":
        return np
    if not cuda.is_available():
        pytest.skip("CuPy が使える GPU がありません")
    return cuda.cupy


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_importing_kernels_does_not_need_numba_until_a_kernel_runs():
    source = (K.launch.__file__, K.elementwise.__file__, K.reduction.__file__, K.gemm.__file__, K.cuda_c.__file__)
    for path in source:
        text = open(path, encoding="utf-8").read()
        assert "\nimport numba" not in text and "\nfrom numba" not in text, path


def test_blocks_for_covers_every_element():
    assert [K.blocks_for(n, 8) for n in (0, 1, 8, 9, 17)] == [1, 1, 1, 2, 3]


@pytest.mark.parametrize("shape", [(1,), (1, 1), (5, 7), (300,)])
def test_add(dev, rng, shape):
    x, y = f32(rng, *shape), f32(rng, *shape)
    out = K.add(dev.asarray(x), dev.asarray(y))
    assert out.shape == shape and out.dtype == np.float32 and cuda.get_array_module(out) is dev
    np.testing.assert_array_equal(cuda.as_numpy(out), K.add_reference(x, y))


@pytest.mark.parametrize("shape", [(1, 1), (5, 37), (33, 3)])
def test_bias_relu(dev, rng, shape):
    x, b = f32(rng, *shape), f32(rng, shape[1])
    out = cuda.as_numpy(K.bias_relu(dev.asarray(x), dev.asarray(b)))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, K.bias_relu_reference(x, b))
    assert (out == 0).any() or shape == (1, 1)


@pytest.mark.parametrize("n, threads", [(1, 32), (33, 8), (100, 32)])
def test_sum(dev, rng, n, threads):
    x = f32(rng, n)
    out = K.sum(dev.asarray(x), threads=threads)
    assert out.shape == () and out.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(out), K.sum_reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shapes, tile", [(((1, 1), (1, 1)), 4), (((17, 13), (13, 19)), 8),
                                         (((5, 9), (9, 3)), 4), (((8, 8), (8, 8)), 4), (((2, 3), (3, 1)), 16)])
def test_matmul_tiled(dev, rng, shapes, tile):
    a, b = f32(rng, *shapes[0]), f32(rng, *shapes[1])
    c = K.matmul(dev.asarray(a), dev.asarray(b), tile=tile)
    assert c.shape == (a.shape[0], b.shape[1]) and c.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(c), K.matmul_reference(a, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shapes", [((1, 1), (1, 1)), ((17, 13), (13, 19))])
def test_matmul_naive(dev, rng, shapes):
    a, b = f32(rng, *shapes[0]), f32(rng, *shapes[1])
    c = K.matmul_naive(dev.asarray(a), dev.asarray(b))
    assert c.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(c), K.matmul_reference(a, b), rtol=1e-5, atol=1e-5)


def test_matmul_tiled_on_gpu_at_a_large_size():
    if not cuda.is_available():
        pytest.skip("CuPy が使える GPU がありません（シミュレータでは大きな行列は遅すぎます）")
    cp = cuda.cupy
    rng = np.random.default_rng(0)
    a, b = f32(rng, 300, 257), f32(rng, 257, 129)
    c = K.matmul(cp.asarray(a), cp.asarray(b))
    np.testing.assert_allclose(cuda.as_numpy(c), a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t", [1, 5])
def test_adam_update_matches_reference_in_place(dev, rng, t):
    p, g, m = f32(rng, 3, 7), f32(rng, 3, 7), f32(rng, 3, 7) * np.float32(0.1)
    v = np.abs(f32(rng, 3, 7)) * np.float32(0.1)
    expected = [a.copy() for a in (p, g, m, v)]
    K.adam_update_reference(*expected, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, t=t)
    arrays = [dev.asarray(a.copy()) for a in (p, g, m, v)]
    assert K.adam_update(*arrays, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, t=t) is None
    for got, want in zip(arrays, expected):
        assert got.dtype == np.float32
        np.testing.assert_allclose(cuda.as_numpy(got), want, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(cuda.as_numpy(arrays[0]), p)  # その場で書き換わった


def test_adam_reference_equals_the_optimizer():
    from mini_dl import Parameter, layers, optimizers

    rng = np.random.default_rng(0)
    p0, g = f32(rng, 4, 3), f32(rng, 4, 3)
    layer = layers.Layer()
    layer.W = param = Parameter(p0.copy())
    opt = optimizers.Adam(lr=0.01).setup(layer)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in (1, 2):
        param.grad = Parameter(g.copy())
        opt.update()
        K.adam_update_reference(p, g, m, v, lr=0.01, t=t)
    np.testing.assert_allclose(param.data, p, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape, threads", [((1, 1), 8), ((6, 11), 8), ((3, 40), 32)])
def test_softmax_cross_entropy(dev, rng, shape, threads):
    x = f32(rng, *shape) * np.float32(5)
    t = rng.integers(0, shape[1], shape[0])
    loss = K.softmax_cross_entropy(dev.asarray(x), dev.asarray(t), threads=threads)
    assert loss.shape == (shape[0],) and loss.dtype == np.float32
    np.testing.assert_allclose(cuda.as_numpy(loss), K.softmax_cross_entropy_reference(x, t), rtol=1e-5, atol=1e-5)


def test_softmax_cross_entropy_mean_equals_mini_dl_and_bad_label_is_nan():
    import mini_dl.functions as F

    rng = np.random.default_rng(1)
    x, t = f32(rng, 4, 5) * np.float32(30), np.array([0, 4, 2, 1])  # 大きなロジットでもあふれない
    loss = K.softmax_cross_entropy(x, t, threads=4)
    np.testing.assert_allclose(loss.mean(), F.softmax_cross_entropy(x, t).data, rtol=1e-5)
    bad = K.softmax_cross_entropy(x, np.array([0, 5, -1, 1]), threads=4)
    assert np.isnan(bad[1]) and np.isnan(bad[2]) and np.isfinite(bad[[0, 3]]).all()


def test_errors_are_japanese_and_say_what_was_received():
    x32 = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32.*float64"):
        K.add(x32, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="同じ形"):
        K.add(x32, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\) と \(2, 3\)"):
        K.matmul(x32, x32)
    with pytest.raises(ValueError, match="2 次元"):
        K.matmul(np.zeros(3, np.float32), x32)
    with pytest.raises(ValueError, match="列の数 3"):
        K.bias_relu(x32, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="整数"):
        K.softmax_cross_entropy(x32, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="2 のべき乗"):
        K.sum(x32, threads=12)
    with pytest.raises(ValueError, match="tile"):
        K.matmul(x32, x32.T.copy(), tile=64)
    with pytest.raises(ValueError, match="連続"):
        K.matmul(x32.T, x32)
    with pytest.raises(TypeError, match="list"):
        K.sum([1.0, 2.0])
    with pytest.raises(ValueError, match="t は 1 以上"):
        K.adam_update(x32, x32, x32.copy(), x32.copy(), t=0)


def test_strict_stand_in_arrays_are_refused():
    import strict_cupy

    with strict_cupy.install() as xp:
        with pytest.raises(TypeError, match="numpy.ndarray か cupy.ndarray"):
            K.add(xp.zeros(3, dtype=np.float32), xp.zeros(3, dtype=np.float32))


def test_cuda_c_sources_match_the_numba_kernels():
    src = K.CUDA_SOURCES
    assert set(src) == {"add", "bias_relu", "adam", "sum", "matmul_tiled", "softmax_cross_entropy"}
    assert f"#define TILE {K.TILE}" in src["matmul_tiled"]
    for name in ("sum", "matmul_tiled", "softmax_cross_entropy"):
        assert 'extern "C" __global__ void' in src[name] and src[name].count("__syncthreads()") >= 2
        assert src[name].count("{") == src[name].count("}")
    for name in ("add", "bias_relu", "adam"):
        assert len(src[name]) == 3 and all("float32" in part for part in src[name][:2])
    if not cuda.is_available():
        with pytest.raises(RuntimeError, match="GPU"):
            K.cupy_kernels()


def test_cuda_c_kernels_on_gpu():
    if not cuda.is_available():
        pytest.skip("CuPy が使える GPU がありません")
    cp, ks = cuda.cupy, K.cupy_kernels()
    rng = np.random.default_rng(0)
    a, b = f32(rng, 37, 29), f32(rng, 29, 45)
    c = cp.empty((37, 45), dtype=cp.float32)
    ks["matmul_tiled"](((45 + 15) // 16, (37 + 15) // 16), (16, 16),
                       (cp.asarray(a), cp.asarray(b), c, np.int32(37), np.int32(29), np.int32(45)))
    np.testing.assert_allclose(cp.asnumpy(c), a @ b, rtol=1e-4, atol=1e-4)
    x, bias = f32(rng, 5, 7), f32(rng, 7)
    np.testing.assert_array_equal(cp.asnumpy(ks["bias_relu"](cp.asarray(x), cp.asarray(bias))),
                                  K.bias_relu_reference(x, bias))
    np.testing.assert_array_equal(cp.asnumpy(ks["add"](cp.asarray(x), cp.asarray(x))), x + x)

    v = f32(rng, 1000)
    partial = cp.empty(8, dtype=cp.float32)
    ks["sum"]((8,), (128,), (cp.asarray(v), partial, np.int32(1000)), shared_mem=128 * 4)
    np.testing.assert_allclose(float(partial.sum()), v.sum(), rtol=1e-4, atol=1e-4)

    logits, labels = f32(rng, 6, 50) * np.float32(5), np.array([0, 49, 3, 7, -1, 50])
    loss = cp.empty(6, dtype=cp.float32)
    ks["softmax_cross_entropy"]((6,), (32,), (cp.asarray(logits), cp.asarray(labels), loss, np.int32(50)),
                                shared_mem=32 * 4)
    got = cp.asnumpy(loss)
    np.testing.assert_allclose(got[:4], K.softmax_cross_entropy_reference(logits[:4], labels[:4]), rtol=1e-5, atol=1e-5)
    assert np.isnan(got[4:]).all()

    p, g = f32(rng, 9), f32(rng, 9)
    m, v2 = np.zeros_like(p), np.zeros_like(p)
    expected = [a.copy() for a in (p, g, m, v2)]
    K.adam_update_reference(*expected, lr=0.01, t=1)
    pd, md, vd = cp.asarray(p), cp.asarray(m), cp.asarray(v2)
    f = np.float32
    ks["adam"](cp.asarray(g), f(0.01), f(1 - 0.9), f(1 - 0.999), f(1e-8), f(1 / (1 - 0.9)), f(1 / (1 - 0.999)), pd, md, vd)
    for got, want in zip((pd, md, vd), (expected[0], expected[2], expected[3])):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-5, atol=1e-7)


def _run_python(code):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_simulator_is_chosen_even_if_numba_was_imported_first():
    if cuda.is_available():  # GPU があれば、シミュレータは選ばれません
        assert not K.is_simulator()
        return
    proc = _run_python("import numba, numpy as np\nfrom mini_dl import kernels as K\n"
                       "print(K.is_simulator(), K.add(np.ones(2, np.float32), np.ones(2, np.float32)).tolist())")
    assert proc.returncode == 0 and proc.stdout.split() == ["True", "[2.0,", "2.0]"], proc.stderr[-2000:]


def test_numba_cuda_loaded_without_the_simulator_and_no_gpu_is_a_japanese_error():
    if cuda.is_available():  # GPU があれば、シミュレータなしの numba.cuda で動きます
        assert K.load_numba_cuda().is_available()
        return
    proc = _run_python("from numba import cuda\nfrom mini_dl import kernels as K\nK.load_numba_cuda()")
    assert proc.returncode != 0 and "RuntimeError" in proc.stderr and "NUMBA_ENABLE_CUDASIM" in proc.stderr, proc.stderr[-2000:]
