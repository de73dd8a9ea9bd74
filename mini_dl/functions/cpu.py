"""CPU で畳み込みを速くする 2 つの道具（第15章）: 並列のカーネルの読み込みと、大きな配列の使い回し。

* ``parallel_kernels``: numba の並列カーネル（``mini_dl.functions.parallel``）を、初めて要るときに読み込みます。
  numba が無いとき、環境変数 ``MINI_DL_PARALLEL=0`` のとき、dtype が float32・float64 でないときは ``None`` を返し、
  呼ぶ側は NumPy の版で計算します（結果はどちらもビット単位で同じです）。
* ``set_num_threads`` / ``get_num_threads``: 並列カーネルのスレッド数（行列積の BLAS のスレッド数とは別）。
* ``numpy_only``: この中では、並列カーネルと使い回しを止めます（速さや結果を比べるため）。
* ``Workspace``（作業領域）: im2col の行列のような大きな一時配列を、使い終わったら取っておき、次に同じ形が要るときに渡します。
  毎回新しく確保すると、OS から来たばかりのページに初めて触れるたびにページフォールトが起きて遅くなるからです。
"""
import contextlib
import ctypes
import importlib.metadata
import os
import weakref

import numpy as np


def parallel_kernels(*arrays):
    """``arrays`` をすべて扱える並列カーネルのモジュールを返します。使えないときは ``None``。

    使えるのは、NumPy の配列（部分クラスや CuPy の配列は除く）で、dtype が float32 か float64 のときです。
    """
    if _numpy_only or os.environ.get("MINI_DL_PARALLEL", "1") == "0":
        return None
    if not all(type(a) is np.ndarray and a.dtype in (np.float32, np.float64) for a in arrays):
        return None
    return _kernels()


def _kernels():
    """並列カーネルのモジュール（初めてなら読み込む）。numba が無ければ ``None``。"""
    if _loaded is None:
        _load()
    return _loaded or None


_loaded = None  # まだ読み込んでいなければ None、numba が無ければ False、読み込めばモジュール
_numpy_only = False  # numpy_only() の中なら True


def _load():
    global _loaded
    try:
        from mini_dl.functions import parallel
    except ImportError:  # numba が入っていない: NumPy の版で計算する
        _loaded = False
        return
    _load_tbb()
    _loaded = parallel


def _load_tbb():
    """numba のスレッドの仕組みに TBB を使えるように、pip の tbb が入れた libtbb を読み込みます（無ければ何もしません）。

    numba は TBB・OpenMP・workqueue の順に、読み込めるものを使います。OpenMP のスレッドは、仕事を終えても次の仕事を待って
    CPU を回し続ける（スピンする）ので、NumPy の行列積の OpenBLAS のスレッドと同じコアを取り合い、何倍も遅くなることがあります。
    TBB のスレッドはすぐに眠るので、取り合いません。pip の tbb はライブラリを Python の ``lib`` フォルダに置き、
    numba はそこを探さないので、ここで先に読み込んでおきます。
    """
    try:
        dist = importlib.metadata.distribution("tbb")
        names = ("libtbb.so.12", "libtbb.12.dylib", "tbb12.dll")
        path = next(dist.locate_file(f) for f in dist.files or () if f.name in names)
        ctypes.CDLL(str(path))
    except (importlib.metadata.PackageNotFoundError, StopIteration, OSError):
        pass  # tbb が無い: numba は OpenMP か workqueue を使う


def set_num_threads(n):
    """並列カーネルが使うスレッド数を ``n`` にします（numba が無ければ何もしません）。"""
    if _kernels() is not None:
        import numba
        numba.set_num_threads(n)


def get_num_threads():
    """並列カーネルが使うスレッド数を返します（numba が無ければ 1）。"""
    if _kernels() is None:
        return 1
    import numba
    return numba.get_num_threads()


class Workspace:
    """作業領域: 形と dtype ごとに、使い終わった大きな NumPy の配列を取っておいて、次に同じ形が要るときに渡します。

    ``take`` で受け取った配列は、使い終わって、ほかのどこからも参照されなくなったときにだけ ``give`` で返します。
    返さなければ、ふつうの配列と同じく捨てられます（返し忘れても、メモリが使い回されないだけです）。
    ``give`` は ``take`` が渡した配列（とその全体のビュー）だけを受け取り、ほかの配列は黙って無視します。

    Args:
        max_bytes (int): 取っておく配列の合計の上限（バイト）。超える分は取っておきません。
        min_bytes (int): これより小さい配列は取っておきません（小さな確保は速いので）。

    Attributes:
        enabled (bool): ``False`` にすると、使い回しをやめます（``take`` は毎回新しく作り、``give`` は何もしません）。
    """

    def __init__(self, max_bytes=256 << 20, min_bytes=64 << 10):
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self.enabled = True
        self.free = {}  # (shape, dtype) -> 取っておいた配列のリスト
        self.lent = weakref.WeakValueDictionary()  # id -> take が渡した配列（捨てられたら消える）
        self.nbytes = 0

    def take(self, shape, dtype, xp=np):
        """shape と dtype の配列（中身は不定）を返します。取っておいたものがあればそれを、無ければ新しく作ります。"""
        if xp is not np or not self.enabled:
            return xp.empty(shape, dtype=dtype)  # CuPy にはメモリプールがあるので、取っておかない
        stack = self.free.get((tuple(shape), np.dtype(dtype)))
        if stack:
            a = stack.pop()
            self.nbytes -= a.nbytes
        else:
            a = np.empty(shape, dtype=dtype)
        self.lent[id(a)] = a
        return a

    def give(self, a):
        """使い終わった配列 ``a``（``take`` で受け取ったもの、または ``a.T`` のようなその全体のビュー）を取っておきます。"""
        base = a if getattr(a, "base", None) is None else a.base
        if self.lent.get(id(base)) is not base or base.nbytes != a.nbytes:
            return  # take が渡した配列の全体ではない（ほかで作った配列、一部のビュー、CuPy の配列）
        a = base
        del self.lent[id(a)]
        if a.nbytes < self.min_bytes or self.nbytes + a.nbytes > self.max_bytes:
            return
        self.free.setdefault((a.shape, a.dtype), []).append(a)
        self.nbytes += a.nbytes

    def clear(self):
        """取っておいた配列をすべて手放します。"""
        self.free.clear()
        self.nbytes = 0


workspace = Workspace()  # 畳み込みが使う、プロセスに 1 つの作業領域


@contextlib.contextmanager
def numpy_only():
    """この ``with`` の中では、並列カーネルと配列の使い回しを止め、NumPy の版だけで計算します。"""
    global _numpy_only
    before = _numpy_only, workspace.enabled
    _numpy_only, workspace.enabled = True, False
    try:
        yield
    finally:
        _numpy_only, workspace.enabled = before
