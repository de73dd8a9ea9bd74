"""第12章の隠しテスト（演算強度・ルーフライン・転送と計算の時間・装置を選ばない one-hot・学習のメモリ）。

よくある間違い（掛け算と足し算の 2 倍の忘れ、C を書く分の数え忘れ、ビットとバイトの取り違え、GB と GiB の取り違え、
レイテンシやラベルの数え忘れ、勾配や Adam の 2 つ目の状態の数え忘れ、512 バイト単位の切り上げを合計に 1 回だけ掛ける）は、
テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。

練習 12-4 は、GPU の無いマシンで「GPU の配列」のふりをする厳しい偽物（``_FakeDeviceArray`` と ``_fake_cupy``）を
``mini_dl.cuda`` に差し込んで、答えが ``xp = cuda.get_array_module(t)`` の配列モジュールだけで計算し、
NumPy の配列を混ぜないことを確かめます（本文 12.5 節の、テストの厳しい代役と同じ考え方です）。
"""
import math
import types

import numpy as np

from grader import pick_hint
from mini_dl import cuda


def _int_like(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int(ex, got, expected, what, inputs, hint):
    if not _int_like(got):
        ex.fail(f"{what}は整数（int）で返してください。", inputs=inputs, expected=f"{expected!r}（int）",
                actual=f"{got!r}（{type(got).__name__}）",
                hint="演算の数とバイト数は数えた個数なので整数です。/ ではなく // を使うか、int(...) にします。")
    if int(got) != expected:
        ex.fail(f"{what}が違います。", inputs=inputs, expected=expected, actual=got, hint=hint)


def _tuple_of(ex, got, n, inputs, names):
    if not isinstance(got, tuple) or len(got) != n:
        ex.fail(f"{n} つの値のタプル {names} を返してください。", inputs=inputs, expected=f"長さ {n} のタプル {names}",
                actual=got, hint="`return a, b` の形で返すとタプルになります。")
    return got


# --- 練習 12-1: 行列積の演算強度 ------------------------------------------------------------------

def test_ex12_1_gemm_intensity(exercise, rng):
    ex = exercise("12-1", "gemm_intensity")
    cases = [(1, 1, 1, 4)] + [(int(rng.integers(1, 3000)), int(rng.integers(1, 3000)), int(rng.integers(1, 3000)),
                               int(rng.choice([2, 4, 8]))) for _ in range(8)]
    for m, n, k, itemsize in cases:
        inputs = f"gemm_intensity(M={m}, N={n}, K={k}, itemsize={itemsize})"
        got = _tuple_of(ex, ex(m, n, k, itemsize), 3, inputs, "(flops, nbytes, intensity)")
        flops, nbytes = 2 * m * n * k, itemsize * (m * k + k * n + m * n)
        _check_int(ex, got[0], flops, "演算の数（flops）", inputs, pick_hint(got[0], {
            "掛け算と足し算を 1 回ずつ数えます。C の 1 要素に K 回の掛け算と K 回の足し算なので、全部で 2MNK です。": m * n * k,
        }, "C = AB の M×N 個の要素それぞれに、K 回の掛け算と K 回の足し算をします（2MNK）。", rtol=0, atol=0))
        _check_int(ex, got[1], nbytes, "読み書きのバイト数（nbytes）", inputs, pick_hint(got[1], {
            "C を書く分（M×N 要素）も数えます。メモリの量は、A と B を読み、C を書く分です。": itemsize * (m * k + k * n),
            "C は書くだけです（C = AB。C += AB のように C を読む必要はありません）。": itemsize * (m * k + k * n + 2 * m * n),
            "要素の数ではなく、バイト数にします（要素の数 × itemsize）。": m * k + k * n + m * n,
            "ビットではなくバイトで数えます（itemsize はバイト数です。8 を掛けません）。": 8 * itemsize * (m * k + k * n + m * n),
        }, "A（M×K）と B（K×N）を 1 回ずつ読み、C（M×N）を 1 回書く、(MK + KN + MN) × itemsize バイトです。", rtol=0, atol=0))
        ex.check_close(got[2], flops / nbytes, rtol=1e-9, inputs=inputs, hint=pick_hint(got[2], {
            "演算強度は 演算の数 / バイト数（FLOP/B）です。逆数になっています。": nbytes / flops,
        }, "intensity = flops / nbytes です。", rtol=1e-9, atol=0))


# --- 練習 12-2: ルーフライン -----------------------------------------------------------------------

def _roofline_mistakes(ai, peak, bw):
    return {
        "max ではなく min です。性能は、演算器の上限とメモリの上限の **低いほう** で決まります。": np.maximum(peak, ai * bw),
        "メモリの上限は 演算強度 × 帯域（FLOP/B × B/s = FLOP/s）です。割り算ではありません。": np.minimum(peak, ai / bw),
        "演算強度が小さいときは、メモリの帯域で頭打ちになります（min(peak, intensity × bandwidth)）。": np.full_like(ai, peak),
        "演算強度が大きいときは、ピークの演算性能で頭打ちになります（min(peak, intensity × bandwidth)）。": ai * bw,
    }


def test_ex12_2_attainable_flops_scalar(exercise, rng):
    ex = exercise("12-2", "attainable_flops")
    for _ in range(8):
        peak = float(rng.uniform(1, 1000)) * 1e12
        bw = float(rng.uniform(100, 4000)) * 1e9
        ridge = peak / bw
        ai = float(ridge * rng.choice([rng.uniform(0.001, 0.9), rng.uniform(1.1, 100)]))
        inputs = f"attainable_flops(intensity={ai:.6g}, peak_flops={peak:.6g}, bandwidth={bw:.6g})（リッジポイント {ridge:.4g}）"
        got = ex(ai, peak, bw)
        expected = min(peak, ai * bw)
        ex.check_close(got, expected, rtol=1e-9, inputs=inputs, hint=pick_hint(
            got, {k: float(v) for k, v in _roofline_mistakes(np.array(ai), peak, bw).items()},
            "到達できる性能は min(peak_flops, intensity × bandwidth) です。", rtol=1e-9, atol=0))


def test_ex12_2_attainable_flops_array(exercise, rng):
    ex = exercise("12-2", "attainable_flops")
    peak, bw = float(rng.uniform(5, 100)) * 1e12, float(rng.uniform(300, 3000)) * 1e9
    ai = np.logspace(-2, 3, int(rng.integers(5, 30)))
    inputs = f"attainable_flops(intensity=np.logspace(-2, 3, {ai.size}), peak_flops={peak:.6g}, bandwidth={bw:.6g})"
    with ex.context(inputs=inputs, hint="intensity が NumPy の配列のとき、Python の min() は使えません（配列の真偽は決まりません）。"
                                        "要素ごとの小さいほうは np.minimum で求めます。"):
        got = ex(ai.copy(), peak, bw)
    expected = np.minimum(peak, ai * bw)
    ex.check_close(got, expected, rtol=1e-9, inputs=inputs, hint=pick_hint(
        got, _roofline_mistakes(ai, peak, bw),
        "配列の各要素について min(peak_flops, intensity × bandwidth) を返します（np.minimum）。", rtol=1e-9, atol=0))


# --- 練習 12-3: 転送と計算の時間 ----------------------------------------------------------------------

def _batch_times(batch, sizes, pcie_gb_s, peak_tflops, latency_us, *, gb=1e9, tflop=1e12, label_bytes=8,
                 latency=True, factor=3, mul_add=2, bits=1):
    nbytes = (batch * sizes[0] * 4 + batch * label_bytes) * bits
    transfer = (latency_us * 1e-6 if latency is True else latency) + nbytes / (pcie_gb_s * gb)
    flops = factor * sum(mul_add * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return transfer, flops / (peak_tflops * tflop)


def test_ex12_3_batch_times(exercise, rng):
    ex = exercise("12-3", "batch_times")
    for _ in range(8):
        batch = int(rng.integers(1, 5000))
        sizes = tuple(int(s) for s in rng.integers(2, 2000, size=int(rng.integers(2, 5))))
        pcie, peak = float(rng.choice([16.0, 32.0, 64.0, 12.5])), float(rng.choice([8.1, 19.5, 67.0, 312.0]))
        latency = float(rng.choice([5.0, 10.0, 20.0]))
        inputs = (f"batch_times(batch_size={batch}, sizes={sizes}, pcie_gb_s={pcie}, peak_tflops={peak}, "
                  f"latency_us={latency})")
        got = _tuple_of(ex, ex(batch, sizes, pcie, peak, latency), 2, inputs, "(transfer_seconds, compute_seconds)")
        transfer, compute = _batch_times(batch, sizes, pcie, peak, latency)
        args = (batch, sizes, pcie, peak, latency)
        ex.check_close(got[0], transfer, rtol=1e-9, inputs=inputs, hint=pick_hint(got[0], {
            "1 GB/s は 10^9 バイト/秒です（2^30 の GiB ではありません）。データシートの帯域は 10 進の GB/s です。":
                _batch_times(*args, gb=2**30)[0],
            "ラベル（int64、1 件 8 バイト）も転送します。": _batch_times(*args, label_bytes=0)[0],
            "ラベルは int64 なので 1 件 8 バイトです（4 バイトではありません）。": _batch_times(*args, label_bytes=4)[0],
            "転送 1 回ごとの固定の待ち時間（latency_us マイクロ秒）を足します。": _batch_times(*args, latency=0.0)[0],
            "latency_us はマイクロ秒です。秒にするには 10^-6 を掛けます（ミリ秒の 10^-3 ではありません）。":
                _batch_times(*args, latency=latency * 1e-3)[0],
            "バイト数で計算します（ビットにするための 8 倍は要りません。帯域は バイト/秒 です）。": _batch_times(*args, bits=8)[0],
        }, "転送の時間 = latency_us × 10^-6 + (batch × sizes[0] × 4 + batch × 8) / (pcie_gb_s × 10^9) 秒です。",
            rtol=1e-9, atol=0))
        ex.check_close(got[1], compute, rtol=1e-9, inputs=inputs, hint=pick_hint(got[1], {
            "学習の 1 ステップは、順伝播の行列積の 3 倍です（順伝播・重みの勾配・入力の勾配）。": _batch_times(*args, factor=1)[1],
            "1 回の積和は、掛け算と足し算の 2 FLOP です（2 × N × D_in × D_out）。": _batch_times(*args, mul_add=1)[1],
            "1 TFLOP/s は 10^12 FLOP/s です（2^40 ではありません）。": _batch_times(*args, tflop=2**40)[1],
        }, "計算の時間 = 3 × Σ 2 × batch × D_in × D_out / (peak_tflops × 10^12) 秒です（隣り合う sizes の組ごとに足します）。",
            rtol=1e-9, atol=0))


# --- 練習 12-4: 装置を選ばない one-hot -------------------------------------------------------------------

class DeviceMixError(TypeError):
    """偽物の GPU の配列を、NumPy と混ぜたときのエラー。"""


_MIX_HINT = ("t は「GPU の配列」（偽物）でした。xp = cuda.get_array_module(t) で配列モジュールを選び、"
             "np.zeros・np.arange・np.eye ではなく xp.zeros・xp.arange を使います。NumPy の配列を添字にしたり、"
             "GPU の配列と混ぜたり、np.asarray で変換したりすると、CuPy でも動きません（本文 12.5 節）。")


def _refuse(what):
    raise DeviceMixError(f"{what}: GPU の配列（の偽物）に NumPy の配列を混ぜたか、NumPy へ暗黙に変換しようとしました")


def _unwrap(value, what):
    if isinstance(value, _FakeDeviceArray):
        return value._a
    if isinstance(value, np.ndarray):
        _refuse(what)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, what) for v in value)
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return _FakeDeviceArray(value)
    if isinstance(value, np.generic):
        return _FakeDeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


class _FakeDeviceArray:
    """GPU の配列のふりをする、厳しい偽物（中身は NumPy の配列）。"""

    __array_priority__ = 1000

    def __init__(self, a):
        self._a = a

    def __array__(self, *args, **kwargs):
        _refuse("np.asarray など（暗黙の変換）")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse(f"np.{ufunc.__name__}（NumPy の関数に GPU の配列を渡した）")

    def __array_function__(self, func, types, args, kwargs):
        _refuse(f"np.{func.__name__}（NumPy の関数に GPU の配列を渡した）")

    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    dtype = property(lambda self: self._a.dtype)
    T = property(lambda self: _FakeDeviceArray(self._a.T))

    def get(self):
        return self._a.copy()

    def __len__(self):
        return len(self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, "添字")])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, "添字")] = _unwrap(value, "代入")

    def __getattr__(self, name):
        if name.startswith("_") or name in ("tolist", "item", "ctypes", "tobytes"):
            raise AttributeError(f"GPU の配列（の偽物）の {name} は、この練習では使いません")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *args, **kwargs: _wrap(attr(*_unwrap(args, f".{name}()"), **_unwrap(kwargs, f".{name}()")))

    def __iter__(self):
        raise DeviceMixError("GPU の配列（の偽物）を for で 1 要素ずつ取り出しています（1 要素ごとに転送が起きます）")

    def __bool__(self):
        raise DeviceMixError("GPU の配列（の偽物）の真偽を if で調べています（値を CPU へ写す同期が起きます）")

    def __repr__(self):
        return "fake_device_" + repr(self._a)


def _binary(name):
    def op(self, other):
        if isinstance(other, np.ndarray):
            _refuse(f"演算子 {name}")
        return _wrap(getattr(self._a, name)(_unwrap(other, name)))
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or"):
    for _n in (f"__{_name}__", f"__r{_name}__"):
        setattr(_FakeDeviceArray, _n, _binary(_n))
for _n in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
    setattr(_FakeDeviceArray, _n, _binary(_n))
_FakeDeviceArray.__hash__ = object.__hash__


def _make_fake_cupy(calls):
    """``cupy`` のふりをするモジュール。関数は NumPy の同じ名前の関数を包み、NumPy の配列を受け付けません。"""
    module = types.ModuleType("fake_cupy")
    module.ndarray = _FakeDeviceArray

    def make(name):
        func = getattr(np, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return _wrap(func(*_unwrap(args, f"xp.{name}"), **_unwrap(kwargs, f"xp.{name}")))
        wrapper.__name__ = name
        return wrapper

    def asarray(a, dtype=None):  # CuPy と同じく、明示的な転送は許します
        calls.append("asarray")
        return a if isinstance(a, _FakeDeviceArray) and dtype is None else _FakeDeviceArray(
            np.array(a._a if isinstance(a, _FakeDeviceArray) else a, dtype=dtype))

    module.asarray = module.array = asarray

    def asnumpy(a):  # CuPy と同じく、明示的に CPU へ戻すことはできます（この練習では要りません）
        calls.append("asnumpy")
        return a._a.copy() if isinstance(a, _FakeDeviceArray) else np.asarray(a)

    module.asnumpy = asnumpy
    for name in ("zeros", "ones", "empty", "full", "zeros_like", "ones_like", "empty_like", "full_like", "arange",
                 "eye", "identity", "where", "equal", "put_along_axis", "expand_dims", "maximum", "minimum",
                 "stack", "concatenate"):
        setattr(module, name, make(name))
    for name in ("float16", "float32", "float64", "int32", "int64", "intp", "bool_", "newaxis", "uint8"):
        setattr(module, name, getattr(np, name))

    def add_at(a, idx, v):
        calls.append("add.at")
        np.add.at(_unwrap(a, "xp.add.at"), _unwrap(idx, "xp.add.at"), _unwrap(v, "xp.add.at"))
    module.add = types.SimpleNamespace(at=add_at)
    return module


def _ref_one_hot(t, c):
    out = np.zeros((len(t), c), dtype=np.float32)
    out[np.arange(len(t)), t] = 1
    return out


def _check_one_hot_values(ex, got, t, c, inputs):
    expected = _ref_one_hot(t, c)
    hint = "y[n, t[n]] = 1、それ以外は 0 の、shape (N, num_classes) の float32 の配列を返します。"
    if got.shape == (c, len(t)):
        hint = "shape が (num_classes, N) になっています。行がデータ、列がクラスの (N, num_classes) にします。"
    ex.check_close(got, expected, rtol=0, atol=0, inputs=inputs, hint=hint)
    ex.check_close(got, expected, rtol=0, atol=0, check_dtype=True, inputs=inputs,
                   hint="dtype は float32 にします（xp.zeros((N, C), dtype=xp.float32) など。既定の float64 ではありません）。")


def _random_labels(rng):
    n, c = int(rng.integers(1, 40)), int(rng.integers(2, 30))
    return rng.integers(0, c, size=n), c


def test_ex12_4_one_hot_numpy(exercise, rng, monkeypatch):
    ex = exercise("12-4", "one_hot")
    eye_calls = []
    real_eye, real_identity = np.eye, np.identity
    monkeypatch.setattr(np, "eye", lambda *a, **k: eye_calls.append(a) or real_eye(*a, **k))
    monkeypatch.setattr(np, "identity", lambda *a, **k: eye_calls.append(a) or real_identity(*a, **k))
    for _ in range(6):
        t, c = _random_labels(rng)
        inputs = f"one_hot(t={t.tolist()}, num_classes={c})（t は NumPy の int64 の配列）"
        got = ex(t.copy(), c)
        if not isinstance(got, np.ndarray):
            ex.fail("NumPy の配列を返してください（t が NumPy の配列なら、結果も NumPy の配列です）。", inputs=inputs,
                    expected="numpy.ndarray", actual=f"{type(got).__name__}", hint=None)
        _check_one_hot_values(ex, got, t, c, inputs)
    if eye_calls:
        ex.fail("eye(num_classes) で C×C の単位行列を作っています。", inputs=inputs, show_values=False,
                hint="クラスの数が語彙ほど大きい（5 万）と、C×C の行列は 10 GB になります。0 の (N, C) の配列を作り、"
                     "y[xp.arange(N), t] = 1 と 1 を置きます（第11章の SoftmaxCrossEntropy と同じです）。")


def test_ex12_4_one_hot_on_a_fake_device(exercise, rng, monkeypatch):
    ex = exercise("12-4", "one_hot")
    calls = []
    fake = _make_fake_cupy(calls)
    monkeypatch.setattr(cuda, "cupy", fake)
    monkeypatch.setattr(cuda, "array_types", (np.ndarray, _FakeDeviceArray))
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    for _ in range(4):
        t, c = _random_labels(rng)
        inputs = f"one_hot(t=GPU の配列 {t.tolist()}, num_classes={c})（GPU の代わりに、厳しい偽物の配列を渡しました）"
        with ex.context(inputs=inputs, hint=_MIX_HINT):
            got = ex(_FakeDeviceArray(t.copy()), c)
        if not isinstance(got, _FakeDeviceArray):
            ex.fail("t が GPU の配列なら、結果も同じ GPU の配列で返してください。", inputs=inputs,
                    expected="t と同じ装置の配列（xp で作った配列）", actual=f"{type(got).__name__}",
                    hint="結果の配列を np.zeros で作ると CPU の配列になります。xp = cuda.get_array_module(t) の "
                         "xp.zeros で作ります。cuda.as_numpy で CPU に戻すのもいけません。")
        _check_one_hot_values(ex, got.get(), t, c, inputs)
    if "eye" in calls or "identity" in calls:
        ex.fail("xp.eye(num_classes) で C×C の単位行列を作っています。", inputs=inputs, show_values=False,
                hint="GPU のメモリは限られています。0 の (N, C) の配列を作り、y[xp.arange(N), t] = 1 と 1 を置きます。")
    if "asnumpy" in calls:
        ex.fail("t を CPU（NumPy）へ戻して計算しています（GPU と CPU の間の転送が 2 回起きます）。", inputs=inputs,
                show_values=False, hint="cuda.as_numpy(t) は使わずに、xp = cuda.get_array_module(t) の xp で、GPU の上で作ります。")
    if "asarray" in calls:
        ex.fail("xp.asarray でホストの配列を GPU へ写しています（隠れた転送です）。", inputs=inputs, show_values=False,
                hint="np.arange(N) を作って xp.asarray で送るのではなく、最初から xp.arange(N) で GPU の上に作ります。")


# --- 練習 12-5: 学習に要るメモリ ------------------------------------------------------------------------

def _ceil512(n, unit=512):
    return -(-n // unit) * unit


def _memory(sizes, itemsize, *, copies=4, bias=True, unit=512, per_array=True, down=False):
    arrays = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        arrays.append(a * b * itemsize)
        if bias:
            arrays.append(b * itemsize)
    exact = copies * sum(arrays)
    if down:
        pooled = copies * sum(n // unit * unit for n in arrays)
    elif per_array:
        pooled = copies * sum(_ceil512(n, unit) for n in arrays)
    else:
        pooled = _ceil512(exact, unit)
    return exact, pooled


def test_ex12_5_adam_memory(exercise, rng):
    ex = exercise("12-5", "adam_memory")
    cases = [((64, 100, 10), 4)] + [
        (tuple(int(s) for s in rng.integers(1, 1500, size=int(rng.integers(2, 6)))), int(rng.choice([2, 4, 8])))
        for _ in range(7)]
    for sizes, itemsize in cases:
        inputs = f"adam_memory(layer_sizes={sizes}, itemsize={itemsize})"
        got = _tuple_of(ex, ex(list(sizes), itemsize), 2, inputs, "(nbytes, pool_bytes)")
        exact, pooled = _memory(sizes, itemsize)
        mistakes = {
            "パラメータ・勾配・Adam の m・v の 4 つ分です。勾配か、Adam の 2 つ目の状態（v）を数え忘れていませんか。": 3,
            "パラメータだけでなく、勾配と Adam の m・v も数えます（全部で 4 つ分）。": 1,
            "パラメータ・勾配・m・v の 4 つ分です（2 つ分ではありません）。": 2,
        }
        hint_exact = pick_hint(got[0], {
            **{k: _memory(sizes, itemsize, copies=v)[0] for k, v in mistakes.items()},
            "各層のバイアス（shape (D_out,)）も数えます。": _memory(sizes, itemsize, bias=False)[0],
            "ビットではなくバイトで数えます（itemsize はすでにバイト数です）。": 8 * exact,
            "要素の数ではなく、バイト数にします（× itemsize）。": exact // itemsize,
        }, "各層の W（D_in×D_out）と b（D_out）について、パラメータ・勾配・m・v の 4 つの配列のバイト数を足します。",
            rtol=0, atol=0)
        _check_int(ex, got[0], exact, "バイト数（nbytes）", inputs, hint_exact)
        hint_pool = pick_hint(got[1], {
            "512 バイト単位の切り上げは、配列 1 つずつに掛けます（合計に 1 回だけではありません）。"
            "プールは配列ごとにメモリを切り分けます。": _memory(sizes, itemsize, per_array=False)[1],
            "切り捨てではなく切り上げです。40 バイトの配列も 512 バイトを使います（-(-n // 512) * 512）。":
                _memory(sizes, itemsize, down=True)[1],
            "単位は 512 バイトです。": _memory(sizes, itemsize, unit=256)[1],
            "各層のバイアスも、それぞれ 512 バイト単位で数えます。": _memory(sizes, itemsize, bias=False)[1],
        }, "配列 1 つずつのバイト数を 512 の倍数に切り上げてから、4 つ分を足します。", rtol=0, atol=0)
        _check_int(ex, got[1], pooled, "メモリプールで使うバイト数（pool_bytes）", inputs, hint_pool)
