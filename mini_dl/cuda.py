"""CPU（NumPy）と GPU（CuPy）を切り替えるための小さな窓口。

mini_dl の中で CuPy を import するのはこのモジュールだけです。CuPy が
インストールされていなくても、GPU が無くても、このモジュールは import でき、
その場合はすべて NumPy で動きます。
"""
import numpy as np

try:
    import cupy
except ImportError:
    cupy = None

#: ``Variable`` に入れられる配列の型（CuPy があれば ``cupy.ndarray`` も含みます）。
array_types = (np.ndarray,) if cupy is None else (np.ndarray, cupy.ndarray)


def is_available():
    """GPU 上で CuPy が実際に使えるかどうかを返します。

    CuPy は GPU の無いマシンにもインストールでき、import も成功します。
    そこで import の成否ではなく ``cupy.is_available()`` で判定します。

    Returns:
        bool: CuPy がインストールされ、使える GPU があれば ``True``。
    """
    if cupy is None:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def get_array_module(x):
    """``x`` を扱うべき配列モジュール（``numpy`` か ``cupy``）を返します。

    ``Variable`` は中身の配列で判断します。このモジュールは ``mini_dl.core`` を import しない
    （import の向きを ``cuda → core`` の一方向に保つ）ので、``Variable`` かどうかは型ではなく、
    配列でないものの ``data`` 属性を見て判断します。演算のたびに呼ばれるので、いちばん多い
    NumPy の配列を最初に調べます。

    Args:
        x: ``numpy.ndarray``・``cupy.ndarray``・``Variable``・スカラーのいずれか。

    Returns:
        module: ``x`` が GPU 上の配列（を持つ ``Variable``）なら ``cupy``、それ以外は ``numpy``。
    """
    if cupy is None or isinstance(x, np.ndarray):
        return np
    if isinstance(x, cupy.ndarray):
        return cupy
    return cupy if isinstance(getattr(x, "data", None), cupy.ndarray) else np


def as_numpy(x):
    """``x`` を CPU 上の ``numpy.ndarray`` に変換します。

    Args:
        x: ``numpy.ndarray``・``cupy.ndarray``・スカラー。

    Returns:
        numpy.ndarray: ``x`` と同じ値を持つ NumPy 配列（``x`` が NumPy 配列ならそのもの）。
    """
    if isinstance(x, np.ndarray):
        return x
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    return np.asarray(x)


def as_cupy(x):
    """``x`` を GPU 上の ``cupy.ndarray`` に変換します。

    Args:
        x: ``numpy.ndarray``・``cupy.ndarray``・スカラー。

    Returns:
        cupy.ndarray: ``x`` と同じ値を持つ CuPy 配列。

    Raises:
        RuntimeError: CuPy が使える GPU が見つからないとき。
    """
    if not is_available():
        raise RuntimeError(
            "CuPy が使える GPU が見つかりません。"
            "GPU のあるマシンで `pip install -e \".[gpu]\"` を実行してください。"
        )
    return cupy.asarray(x)
