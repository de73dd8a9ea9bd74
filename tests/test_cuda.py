"""mini_dl.cuda（CPU と GPU の窓口）のテスト。GPU が無くても通ります。"""
import numpy as np
import pytest

from mini_dl import Variable, cuda


def test_is_available_returns_bool():
    assert isinstance(cuda.is_available(), bool)


def test_get_array_module_for_numpy_variable_and_scalar():
    assert cuda.get_array_module(np.ones(2)) is np
    assert cuda.get_array_module(Variable(np.ones(2))) is np
    assert cuda.get_array_module(1.0) is np


def test_array_types_contains_ndarray():
    assert np.ndarray in cuda.array_types


def test_as_numpy():
    a = np.ones(3)
    assert cuda.as_numpy(a) is a
    s = cuda.as_numpy(2.0)
    assert isinstance(s, np.ndarray) and s == 2.0


def test_roundtrip_and_module(xp):
    a = np.arange(4, dtype=np.float32)
    g = xp.asarray(a)
    assert cuda.get_array_module(g) is xp
    np.testing.assert_array_equal(cuda.as_numpy(g), a)
    if xp is not np:
        assert isinstance(cuda.as_cupy(a), xp.ndarray)


def test_as_cupy_without_gpu_explains_in_japanese(monkeypatch):
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CuPy が使える GPU が見つかりません"):
        cuda.as_cupy(np.ones(2))


def test_importable_without_cupy(monkeypatch):
    monkeypatch.setattr(cuda, "cupy", None)
    assert cuda.is_available() is False
    assert cuda.get_array_module(np.ones(1)) is np


def test_variable_and_layer_device_moves_on_cpu():
    import mini_dl.layers as L
    from mini_dl import Variable

    v = Variable(np.ones(3, dtype=np.float32))
    assert v.to_cpu() is v and isinstance(v.data, np.ndarray)
    layer = L.Linear(2, in_size=3, seed=0)
    assert layer.to_cpu() is layer and isinstance(layer.W.data, np.ndarray)
    if not cuda.is_available():
        with pytest.raises(RuntimeError):
            v.to_gpu()
    else:
        assert not isinstance(v.to_gpu().data, np.ndarray)
        assert isinstance(v.to_cpu().data, np.ndarray)


@pytest.mark.parametrize("x", [np.ones(2), np.float32(1.0), np.float64(2.0), 1.0, 3, None, [1.0, 2.0]],
                         ids=["ndarray", "np.float32", "np.float64", "float", "int", "None", "list"])
def test_get_array_module_of_host_values_is_numpy(x):
    assert cuda.get_array_module(x) is np
    assert cuda.get_array_module(Variable(np.asarray(x if x is not None else 0.0))) is np


def test_get_array_module_follows_the_device(xp):
    a = xp.ones(3, dtype=xp.float32)
    assert cuda.get_array_module(a) is xp
    assert cuda.get_array_module(Variable(a)) is xp
    assert cuda.get_array_module(Variable(a) * 2) is xp


def test_cuda_module_does_not_import_mini_dl():
    # cuda → core の一方向: get_array_module は演算のたびに呼ばれるので、中で core を import しない（循環もしない）
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cuda))
    imported = []
    for node in ast.walk(tree):  # 関数の中の import も含める
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
    bad = [name for name in imported if name.startswith(("mini_dl", "."))]
    assert not bad, f"mini_dl/cuda.py が mini_dl のモジュールを import しています: {bad}"
    assert "Variable" not in inspect.getsource(cuda.get_array_module).split('"""')[-1]
