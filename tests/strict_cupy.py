"""CuPy の代わりに CPU で動く、厳しい代役（テストダブル）。

GPU の無いマシンでも、mini_dl が「ホスト（NumPy）の配列とデバイス（GPU）の配列を混ぜない」ことを
確かめるためのものです。中身は NumPy の配列ですが、独自の型 :class:`ndarray` で包み、CuPy が拒むことを
同じように拒みます。

- NumPy の配列への暗黙の変換（``np.asarray(x)``・``np.array(x)``。明示的な ``x.get()`` と
  ``asnumpy(x)`` は使えます）
- ``numpy.ndarray`` との混ぜ合わせ（``x + np_array``・``np.add(x, np_array)``・``xp.where(m, x, np_array)``）
- ホストの配列（``numpy.ndarray``）を添字にすること、ホストの配列を代入すること（CuPy は黙って GPU に写すので
  動きますが、隠れた転送になるので、ここでは CuPy より厳しく拒みます）
- ``np.sum(x)`` のような NumPy の関数への受け渡し（CuPy では動くこともありますが、mini_dl は
  ``xp = get_array_module(x)`` で配列モジュールを選ぶ決まりなので、ここでは拒みます）

CuPy と同じく、Python の数と NumPy のスカラー（``np.float32(2)``）は混ぜられ、要素 1 つの配列は
``float(x)`` で取り出せます。``install()`` で ``mini_dl.cuda`` にこのモジュールを CuPy として差し込むと、
``cuda.get_array_module``・``cuda.as_cupy``・``Variable.to_gpu()`` などがこの代役を使います。

使える関数は mini_dl が使う範囲です（モジュールの ``__getattr__`` が NumPy の同じ名前の関数を包みます）。
"""
import contextlib
import sys
import types

import numpy as np

_NAME = __name__


class DeviceMixError(TypeError):
    """ホストの配列とデバイスの配列を混ぜたときのエラーです（CuPy では ``TypeError``）。"""


def _refuse_host(value, where):
    raise DeviceMixError(
        f"{where}: ホストの配列（numpy.ndarray, shape={value.shape}）はデバイスの配列と混ぜられません。"
        "xp = cuda.get_array_module(x) で選んだモジュールで作るか、cuda.as_cupy で移してください。")


def _unwrap(value, where):
    """引数の中の代役の配列を NumPy の配列に戻します。ホストの配列が入っていればエラーにします。"""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        _refuse_host(value, where)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, where) for k, v in value.items()}
    return value


def _wrap(value):
    """NumPy の配列の結果を代役の配列で包みます（スカラーとタプルの中身も同じ扱いです）。"""
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic):  # CuPy の演算は 0 次元の配列を返します
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _check_index(key):
    if isinstance(key, np.ndarray):
        raise DeviceMixError(
            f"ホストの配列（numpy.ndarray, shape={key.shape}）は、デバイスの配列の添字に使えません。"
            "添字もデバイスに置いてください。")
    if isinstance(key, tuple):
        for k in key:
            _check_index(k)
    if isinstance(key, list):
        for k in key:
            _check_index(k)


class _MemoryPointer:
    """CuPy の ``ndarray.data``（GPU のメモリの場所）の代わり。配列ではありません。"""

    def __init__(self, nbytes):
        self.ptr = 0
        self.size = nbytes


class ndarray:
    """デバイスの配列の代役です。中身は NumPy の配列 ``_a`` です。"""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a):
        assert isinstance(a, np.ndarray), type(a)
        self._a = a

    # --- NumPy への変換（暗黙は禁止、明示は可） ---
    def __array__(self, *args, **kwargs):
        raise DeviceMixError(
            "デバイスの配列を NumPy の配列に暗黙に変換することはできません（CuPy と同じ）。"
            "x.get() か cuda.as_numpy(x) で明示的に CPU へ移してください。")

    def get(self):
        """CPU（NumPy）の配列に写します（CuPy の ``ndarray.get()``）。"""
        return self._a.copy()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        where = f"numpy.{ufunc.__name__}"
        args = _unwrap(inputs, where)
        kwargs = _unwrap(kwargs, where)
        if "out" in kwargs:
            kwargs["out"] = tuple(kwargs["out"])
        return _wrap(getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        raise DeviceMixError(
            f"numpy.{func.__name__} にデバイスの配列を渡しました。"
            "xp = cuda.get_array_module(x) で選んだモジュールの関数を使ってください。")

    # --- CuPy の ndarray と同じ属性 ---
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    dtype = property(lambda self: self._a.dtype)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T))
    data = property(lambda self: _MemoryPointer(self._a.nbytes))  # Variable の .data と取り違えないように
    device = property(lambda self: "strict-cupy")

    def __getattr__(self, name):
        if name.startswith("__") or name in ("ctypes", "base", "tofile"):
            raise AttributeError(f"代役のデバイスの配列には {name} がありません")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        where = f"ndarray.{name}"

        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args, where), **_unwrap(kwargs, where)))
        return method

    def __getitem__(self, key):
        _check_index(key)
        return _wrap(self._a[_unwrap(key, "添字")])

    def __setitem__(self, key, value):
        _check_index(key)
        self._a[_unwrap(key, "添字")] = _unwrap(value, "代入")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(np.asarray(v)) for v in self._a)

    def __repr__(self):
        return "strict_" + repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self._a)

    def __neg__(self):
        return _wrap(-self._a)

    def __pos__(self):
        return _wrap(+self._a)

    def __abs__(self):
        return _wrap(abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)

    def __hash__(self):
        return id(self)


def _binary(name):
    def op(self, other):
        if isinstance(other, ndarray):
            other = other._a
        elif isinstance(other, np.ndarray):
            _refuse_host(other, f"演算子 {name}")
        elif not isinstance(other, (int, float, complex, bool, np.generic)):
            return NotImplemented
        return _wrap(getattr(self._a, name)(other))
    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        if isinstance(other, ndarray):
            other = other._a
        elif isinstance(other, np.ndarray):
            _refuse_host(other, f"演算子 {name}")
        result = getattr(self._a, name)(other)
        assert result is self._a
        return self
    op.__name__ = name
    return op


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    for _n in (f"__{_op}__", f"__r{_op}__"):
        setattr(ndarray, _n, _binary(_n))
    setattr(ndarray, f"__i{_op}__", _inplace(f"__i{_op}__"))
for _n in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
    setattr(ndarray, _n, _binary(_n))


class _Function:
    """NumPy の関数（ufunc も）を包みます。``xp.add.at`` のような ufunc のメソッドも同じ規則で使えます。"""

    def __init__(self, func, name):
        self._func, self.__name__ = func, name

    def __call__(self, *args, **kwargs):
        where = f"{_NAME}.{self.__name__}"
        return _wrap(self._func(*_unwrap(args, where), **_unwrap(kwargs, where)))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._func, name)
        return _Function(attr, f"{self.__name__}.{name}") if callable(attr) else attr


# デバイスの配列を作る関数: ホストの配列から写すのは、明示的な転送として許します（cupy.asarray と同じ）
def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return ndarray(np.array(a, dtype=dtype, order=order, copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        a = a._a
    return ndarray(np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a):
    """CPU（NumPy）の配列に写します（``cupy.asnumpy``）。"""
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def is_available():
    return True


def get_array_module(*args):
    return sys.modules[_NAME] if any(isinstance(a, ndarray) for a in args) else np


class _Generator:
    """``cupy.random.default_rng()`` の代役（NumPy の Generator の結果をデバイスに置きます）。"""

    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        attr = getattr(self._g, name)
        return _Function(attr, f"random.Generator.{name}")


random = types.SimpleNamespace(default_rng=_Generator)

_NOT_ON_DEVICE = {"asanyarray", "ascontiguousarray", "frombuffer", "fromfile", "load", "save", "savez", "genfromtxt"}


def __getattr__(name):
    if name in _NOT_ON_DEVICE:
        raise AttributeError(f"代役の CuPy には {name} がありません")
    attr = getattr(np, name)
    if isinstance(attr, type) or not callable(attr):  # float32 などの dtype、pi などの定数、newaxis
        return attr
    return _Function(attr, name)


@contextlib.contextmanager
def install():
    """``mini_dl.cuda`` にこの代役を CuPy として差し込みます（``with install(): ...``）。"""
    from mini_dl import cuda

    module = sys.modules[_NAME]
    saved = cuda.cupy, cuda.array_types, cuda.is_available
    cuda.cupy = module
    cuda.array_types = (np.ndarray, ndarray)
    cuda.is_available = lambda: True
    try:
        yield module
    finally:
        cuda.cupy, cuda.array_types, cuda.is_available = saved
