"""カーネルを動かす準備: numba-cuda の読み込み（GPU が無ければ CUDA シミュレータ）と、入力の確かめ。

シミュレータの選び方:

1. 環境変数 ``NUMBA_ENABLE_CUDASIM=1`` が設定されていれば、いつもシミュレータを使います。
2. そうでなく、CuPy が使える GPU が無ければ（``mini_dl.cuda.is_available()`` が ``False``）、
   numba を import する前に ``NUMBA_ENABLE_CUDASIM=1`` を設定して、シミュレータを選びます。
   numba がすでに（シミュレータなしで）import されていても、``numba.cuda`` がまだなら設定を読み直します。
3. ``numba.cuda`` がシミュレータなしで読み込み済みで、GPU も無ければ、``RuntimeError`` で止めます。
"""
import os
import sys

import numpy as np

from mini_dl import cuda as device


def load_numba_cuda():
    """``numba.cuda`` を import して返します（GPU が無ければ CUDA シミュレータを選びます）。

    numba は重いので、``import mini_dl.kernels`` では読み込まず、最初のカーネルを動かすときに
    ここで読み込みます。

    Returns:
        module: ``numba.cuda``（シミュレータのときは同じ名前の、CPU で動く代わりのモジュール）。

    Raises:
        ImportError: numba-cuda がインストールされていないとき。
        RuntimeError: GPU が無いのに、``numba.cuda`` がシミュレータなしで読み込み済みのとき。
    """
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and not device.is_available():
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # GPU が無い: シミュレータを選ぶ
        if "numba.core.config" in sys.modules and "numba.cuda" not in sys.modules:
            sys.modules["numba.core.config"].reload_config()  # numba が先に import されていた
    try:
        from numba import cuda
    except ImportError as e:
        raise ImportError(
            "numba-cuda が見つかりません。`pip install -e \".[kernels]\"`（または \".[notebook]\"）で入れてください。"
        ) from e
    if not _simulated(cuda) and not device.is_available():
        raise RuntimeError(
            "numba.cuda が CUDA シミュレータなしで読み込み済みですが、GPU が見つかりません。"
            "カーネルを再起動し、numba を import する前に os.environ[\"NUMBA_ENABLE_CUDASIM\"] = \"1\" を"
            "設定してください（mini_dl.kernels だけを使うなら、自動で設定されます）。"
        )
    return cuda


def is_simulator():
    """カーネルが CUDA シミュレータ（CPU）で動くなら ``True`` を返します。

    Returns:
        bool: ``numba.cuda`` がシミュレータなら ``True``、本物の GPU なら ``False``。
    """
    return _simulated(load_numba_cuda())


def _simulated(cuda):
    """``numba.cuda`` がシミュレータかどうか（シミュレータの ``jit`` は ``numba.cuda.simulator`` の中にあります）。"""
    return cuda.jit.__module__.startswith("numba.cuda.simulator")


def blocks_for(n, threads):
    r"""``n`` 個の仕事を ``threads`` スレッドのブロックで覆うのに要るブロックの数 :math:`\lceil n / t \rceil` です。

    Args:
        n (int): スレッドに割り当てる仕事の数（要素の数、行の数など）。
        threads (int): 1 ブロックのスレッドの数。

    Returns:
        int: ブロックの数。``n`` が 0 でも 1 を返します（大きさ 0 のグリッドは起動できないため）。
    """
    return max(1, (n + threads - 1) // threads)


def _check_array(name, x, dtype=np.float32, ndim=None):
    """``x`` がカーネルに渡せる配列（NumPy か、``__cuda_array_interface__`` を持つ CuPy の配列）か調べます。"""
    if not isinstance(x, np.ndarray) and not hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{name} には numpy.ndarray か cupy.ndarray を渡してください（受け取ったのは {type(x).__name__}）。")
    if dtype == "int":
        if x.dtype.kind not in "iu":
            raise TypeError(f"{name} の dtype は整数にしてください（受け取ったのは {x.dtype}）。")
    elif x.dtype != dtype:
        raise TypeError(f"{name} の dtype は {np.dtype(dtype)} にしてください（受け取ったのは {x.dtype}）。"
                        f"`.astype(np.{np.dtype(dtype)})` で変換できます。")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} は {ndim} 次元の配列にしてください（受け取った形は {x.shape}）。")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} は C の順に連続した配列にしてください（`xp.ascontiguousarray(...)` で作れます）。")
    return x


def _same_device(*arrays):
    """配列がすべて同じ装置（CPU か GPU）にあることを確かめ、その配列モジュールを返します。"""
    on_gpu = [not isinstance(a, np.ndarray) for a in arrays]
    if any(on_gpu) and not all(on_gpu):
        raise TypeError("NumPy の配列と GPU の配列が混ざっています。すべて同じ装置に置いてください"
                        f"（受け取った型: {', '.join(type(a).__name__ for a in arrays)}）。")
    return device.get_array_module(arrays[0])
