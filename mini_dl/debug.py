"""テストとデバッグの道具: 非有限値（NaN・inf）を見つける ``detect_anomaly`` と、関数ごとの ``profile``。

どちらも ``with`` ブロックの中だけ、``Function`` のすべてのサブクラスの ``forward`` と ``backward`` を
包み直し（ラップし）、ブロックを抜けると（例外で抜けても）元に戻します。``mini_dl/core.py`` には手を入れないので、
使っていないときの費用はゼロです（第19章）。
"""
import contextlib
import functools
import time
import traceback
import types
import unicodedata

from mini_dl import cuda
from mini_dl.core import Function, Variable

_hooks = []  # いま有効な見張り役（_Anomaly や Profiler）。空になったら元のメソッドに戻す
_patched = {}  # (クラス, メソッド名) -> 元の関数
_depth = [0]  # 包んだメソッドの入れ子の深さ。逆伝播の中で呼ばれた順伝播は、外側の逆伝播の分に数える


def _all_subclasses(cls):
    """``cls`` のサブクラスを、孫以下も含めてすべて返します。"""
    found, stack = [], [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                stack.append(sub)
    return found


def _wrap(method, phase):
    """``forward``・``backward`` を、時間を測って見張り役に知らせる関数で包みます。"""
    @functools.wraps(method)
    def wrapper(self, *args):
        if _depth[0] > 0:  # 外側の包んだメソッドの中（逆伝播の中の演算など）: そのまま呼ぶ
            return method(self, *args)
        _depth[0] += 1
        start = time.perf_counter()
        try:
            out = method(self, *args)
        finally:
            _depth[0] -= 1
        elapsed = time.perf_counter() - start
        for hook in list(_hooks):
            hook.record(self, phase, args, out, elapsed)
        return out
    return wrapper


def _install(hook):
    """見張り役を加え、まだ包んでいないクラスの ``forward``・``backward`` を包みます。"""
    _hooks.append(hook)
    for cls in [Function] + _all_subclasses(Function):
        for name in ("forward", "backward"):
            method = cls.__dict__.get(name)
            if isinstance(method, types.FunctionType) and (cls, name) not in _patched:
                _patched[(cls, name)] = method
                setattr(cls, name, _wrap(method, name))


def _uninstall(hook):
    """見張り役を外します。最後の 1 つなら、包んだメソッドをすべて元に戻します。"""
    if hook in _hooks:
        _hooks.remove(hook)
    if not _hooks:
        for (cls, name), method in _patched.items():
            setattr(cls, name, method)
        _patched.clear()


def _arrays(values):
    """``forward``・``backward`` の入出力（配列・``Variable``・タプル・``None``）から配列だけを取り出します。"""
    if not isinstance(values, (tuple, list)):
        values = (values,)
    values = [v.data if isinstance(v, Variable) else v for v in values]
    return [v for v in values if hasattr(v, "dtype") and hasattr(v, "nbytes")]  # 配列と NumPy のスカラー


def _all_finite(arrays):
    """配列がすべて有限（NaN も inf も無い）なら ``True`` を返します。"""
    for a in arrays:
        if a is None or a.dtype.kind not in "fc":
            continue
        if not bool(cuda.get_array_module(a).isfinite(a).all()):
            return False
    return True


def _pad(text, width, right):
    """全角の文字を 2 桁と数えて、``text`` を幅 ``width`` にそろえます（``right`` なら右寄せ）。"""
    fill = " " * max(width - sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text), 0)
    return fill + text if right else text + fill


def _describe(arrays):
    """配列の shape と dtype を並べた文字列（エラーの文章に使います）。"""
    return "、".join(f"{tuple(a.shape)} {a.dtype}" for a in arrays) or "なし"


class _Anomaly:
    """``detect_anomaly`` の見張り役: 有限の入力から非有限の値を作った最初の関数で止めます。"""

    def record(self, func, phase, args, out, elapsed):
        if phase == "forward":
            # 順伝播の呼ばれた場所を覚えておく（包んだ関数と record の 2 段を除く）
            func._anomaly_stack = traceback.format_list(traceback.extract_stack()[:-2])
            if _all_finite(_arrays(args)) and not _all_finite(_arrays(out)):
                self._fail(func, "順伝播", _arrays(args), _arrays(out))
        else:  # 逆伝播: 出力側の勾配も、順伝播の入力も有限なのに、勾配が非有限になった
            inputs = [x.data for x in getattr(func, "inputs", [])]
            if _all_finite(_arrays(args)) and _all_finite(inputs) and not _all_finite(_arrays(out)):
                self._fail(func, "逆伝播", inputs, _arrays(out))

    @staticmethod
    def _fail(func, phase, inputs, outputs):
        stack = getattr(func, "_anomaly_stack", None)
        where = "".join(stack[-6:]) if stack else "  （記録されていません）\n"
        raise FloatingPointError(
            f"{type(func).__name__} の{phase}で NaN か inf ができました"
            f"（入力はすべて有限でした。出力も有限であるべきです）。\n"
            f"  入力: {_describe(inputs)}\n"
            f"  出力: {_describe(outputs)}\n"
            f"この {type(func).__name__} を順伝播で呼んだ場所:\n{where}"
        )


@contextlib.contextmanager
def detect_anomaly():
    """``with`` ブロックの中で、NaN か inf を最初に作った関数を見つけて止めます（異常検出モード）。

    順伝播では、有限の入力から非有限の出力を作った関数で、逆伝播では、有限の勾配から非有限の勾配を
    作った関数で ``FloatingPointError`` を出します。入力がすでに非有限なら（マスクの :math:`-\\infty` など）、
    そのまま通します。PyTorch の ``torch.autograd.detect_anomaly`` と同じく、関数を呼ぶたびに呼び出し元を
    記録するので遅くなります。デバッグのときだけ使います。

    Raises:
        FloatingPointError: 関数のクラス名、順伝播か逆伝播か、入出力の shape と dtype、
            その関数を順伝播で呼んだ場所（トレースバック）を日本語で示します。
    """
    hook = _Anomaly()
    _install(hook)
    try:
        yield hook
    finally:
        _uninstall(hook)


class Profiler:
    """``profile`` が返す記録係です。関数のクラスごとに、呼んだ回数・時間・出力のバイト数を集めます。

    Attributes:
        records (dict): クラス名 -> ``{"calls", "forward_s", "backward_calls", "backward_s", "bytes"}``。
            ``calls`` は順伝播の回数、``bytes`` は順伝播の出力の配列の ``nbytes`` の合計です。
            逆伝播の中で呼ばれた演算は、その逆伝播の時間に含めて、別には数えません。
    """

    def __init__(self):
        self.records = {}

    def record(self, func, phase, args, out, elapsed):
        r = self.records.setdefault(type(func).__name__, {
            "calls": 0, "forward_s": 0.0, "backward_calls": 0, "backward_s": 0.0, "bytes": 0})
        if phase == "forward":
            r["calls"] += 1
            r["forward_s"] += elapsed
            r["bytes"] += sum(int(a.nbytes) for a in _arrays(out))
        else:
            r["backward_calls"] += 1
            r["backward_s"] += elapsed

    def total_time(self, name):
        """クラス名 ``name`` の順伝播と逆伝播の時間の合計（秒）を返します。"""
        r = self.records[name]
        return r["forward_s"] + r["backward_s"]

    def table(self, limit=None):
        """記録を、時間の合計の大きい順に並べた表（文字列）にします。

        Args:
            limit (int): 先頭から何行を表示するか（``None`` ならすべて）。

        Returns:
            str: 関数・回数・順伝播と逆伝播の時間（ミリ秒）・出力の大きさ（KiB）の表。
        """
        names = sorted(self.records, key=self.total_time, reverse=True)[:limit]
        heads = ["関数", "回数", "順伝播 ms", "逆伝播 ms", "合計 ms", "出力 KiB"]
        rows = [[name, r["calls"], f"{r['forward_s'] * 1e3:.2f}", f"{r['backward_s'] * 1e3:.2f}",
                 f"{self.total_time(name) * 1e3:.2f}", f"{r['bytes'] / 1024:.1f}"]
                for name, r in ((name, self.records[name]) for name in names)]
        widths = [26, 7, 11, 11, 10, 11]
        lines = ["".join(_pad(str(v), w, i > 0) for i, (v, w) in enumerate(zip(row, widths)))
                 for row in [heads] + rows]
        return "\n".join(lines)


@contextlib.contextmanager
def profile():
    """``with`` ブロックの中の関数（``Function``）を、クラスごとに測ります。

    Returns:
        Profiler: ``with profile() as prof:`` の ``prof``。ブロックの後で ``prof.table()`` や
        ``prof.records`` を見ます。
    """
    prof = Profiler()
    _install(prof)
    try:
        yield prof
    finally:
        _uninstall(prof)
