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

    Args:
        x: ``numpy.ndarray``・``cupy.ndarray``・``Variable``・スカラーのいずれか。

    Returns:
        module: ``x`` が GPU 上の配列なら ``cupy``、それ以外は ``numpy``。
    """
    from mini_dl.core import Variable

    if isinstance(x, Variable):
        x = x.data
    if cupy is None:
        return np
    return cupy.get_array_module(x)


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


def scatter_add(a, slices, values):
    """``a[slices] += values`` を、同じ添字が何回出てきても正しく足し込みます（``a`` を書き換えます）。

    NumPy の ``a[idx] += v`` は、``idx`` に同じ添字が重なると 1 回分しか足しません。
    CPU では ``numpy.add.at``、GPU では ``cupyx.scatter_add`` を使います。

    Args:
        a: 足し込まれる配列（NumPy か CuPy）。
        slices: 添字（整数・スライス・整数配列・それらのタプル）。
        values: 足す値（``a[slices]`` にブロードキャストできる shape）。
    """
    if isinstance(a, np.ndarray):
        np.add.at(a, slices, values)
    else:
        import cupyx

        cupyx.scatter_add(a, slices, values)
