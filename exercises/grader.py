"""練習問題の採点器。

2 通りの使い方があります。

* ``pytest exercises/``: 保存された ``exercises/chNN.ipynb`` の解答セルを読み込み、
  ``exercises/hidden/`` の隠しテストで採点します（``-k ch02`` で 1 章だけ）。
* ノートブックの最後のセルで ``grade("ch02", globals())``: いま動いているカーネルの
  定義をそのまま採点します（保存不要。Jupyter でも Colab でも同じです）。

隠しテストは ``exercise`` フィクスチャで解答を受け取り、答えが違えば
「どの練習か・期待した値・返ってきた値・ヒント」を日本語で報告します。
入力は毎回ランダムに作るので、例の答えを書き写しただけでは通りません。

どちらの使い方でも、読者のコードは章ごとの子プロセスで実行します（``_runner.py``）。
無限ループ・``sys.exit``・segfault などは、その練習（またはそのセル）だけを不合格にして、
残りの採点を続けます。
"""
import ast
import contextlib
import json
import linecache
import os
import pathlib
import re
import sys
import traceback

import numpy as np
import pytest

EXERCISES_DIR = pathlib.Path(__file__).resolve().parent
HIDDEN_DIR = EXERCISES_DIR / "hidden"
# 1 つのテストの制限時間（秒）。無限ループしても、その練習だけが失敗します。
DEFAULT_TIMEOUT = float(os.environ.get("MINI_DL_GRADER_TIMEOUT", "10"))
# 解答を読み込むときの、1 つのセルの制限時間（秒）。過ぎたセルは飛ばして採点します。
DEFAULT_CELL_TIMEOUT = 30.0

SKIP_TAG = "grader-skip"
TRIAL_MARK = "# 試してみる"
EXERCISE_RE = re.compile(r"練習\s*(\d+)-(\d+)")

# ノートブックから grade() したときに、採点対象の名前空間を置いておく場所
_injected_namespaces = {}
# 採点の子プロセスの中では True（その中から grade() は呼べません）
_in_worker = False


def test_timeout():
    """1 つのテストの制限時間（秒）。環境変数 ``MINI_DL_GRADER_TIMEOUT`` で変えられます。"""
    return float(os.environ.get("MINI_DL_GRADER_TIMEOUT", DEFAULT_TIMEOUT))


def cell_timeout():
    """解答を読み込むときの 1 つのセルの制限時間（秒）。``MINI_DL_GRADER_CELL_TIMEOUT`` で変えられます。"""
    return float(os.environ.get("MINI_DL_GRADER_CELL_TIMEOUT", DEFAULT_CELL_TIMEOUT))


def header_of(item):
    """pytest のテスト ``item`` の見出し（例: ``練習 2-3（test_ex2_3_...）``）。"""
    m = re.match(r"test_ex(\d+)_(\d+)", item.name)
    return f"練習 {m.group(1)}-{m.group(2)}（{item.name}）" if m else item.name


class ExerciseFailure(AssertionError):
    """練習問題の答えが違うときの例外。メッセージは読者向けの日本語です。"""


def chapter_of(number):
    """練習番号 ``"2-3"`` から章の名前 ``"ch02"`` を返します。"""
    m = re.fullmatch(r"(\d+)-(\d+)", number)
    if m is None:
        raise ValueError(f"練習番号は '2-3' の形で書いてください（受け取った値: {number!r}）")
    return f"ch{int(m.group(1)):02d}"


def _short(value, limit=400):
    text = repr(value)
    if isinstance(value, np.ndarray):
        text = f"array(shape={value.shape}, dtype={value.dtype}) " + np.array2string(
            value, precision=6, threshold=20
        )
    return text if len(text) <= limit else text[:limit] + " …"


def notebook_cells(path):
    """ノートブックのコードセルを ``(source, tags)`` のリストで返します。

    Raises:
        ExerciseFailure: ノートブックが壊れていて読めないとき（日本語の説明つき）。
    """
    path = pathlib.Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = []
        for cell in nb["cells"]:
            if cell.get("cell_type") != "code":
                continue
            source = cell["source"]
            if isinstance(source, list):
                source = "".join(source)
            if not isinstance(source, str):
                raise TypeError("セルの source が文字列ではありません")
            cells.append((source, cell.get("metadata", {}).get("tags", [])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExerciseFailure(
            f"{path.name} を読み込めませんでした（ノートブックの形式が壊れています: {type(exc).__name__}: {exc}）。\n"
            "  Jupyter で開けるか確かめ、保存し直すか、git などで壊れる前の版に戻してください。"
        ) from None
    return cells


def answer_cells(path):
    """解答セル（先頭行に「練習 N-M」と書いたセル）を ``{番号: source}`` で返します。"""
    found = {}
    for source, tags in notebook_cells(path):
        first = source.lstrip().split("\n", 1)[0]
        m = EXERCISE_RE.search(first) if first.startswith("#") else None
        if m and SKIP_TAG not in tags:
            found[f"{m.group(1)}-{m.group(2)}"] = source
    return found


def _exercise_number(source):
    first = source.lstrip().split("\n", 1)[0]
    m = EXERCISE_RE.search(first) if first.startswith("#") else None
    return f"{m.group(1)}-{m.group(2)}" if m else None


def load_notebook(path, on_cell=None, skip=None, notes=None):
    """ノートブックのコードセルを上から順に実行し、``(名前空間, セルごとのエラー)`` を返します。

    ``grader-skip`` タグの付いたセル（Colab の準備や採点セル）は実行しません。
    あるセルで例外が起きても（``SystemExit`` や ``KeyboardInterrupt`` でも）、残りのセルは
    実行を続けます。エラーは、そのセルが定義しようとした名前ごとに記録し、採点のときに読者へ伝えます。

    Args:
        path: ノートブックのパス。
        on_cell: セルを実行する直前に ``on_cell(セル番号, 練習番号または None)`` を呼びます。
        skip: 実行しないセル ``{セル番号: 理由}``。そのセルで定義する名前のエラーに理由を記録します。
        notes: 辞書を渡すと、「試してみる」のセルでだけ定義した名前の説明 ``{名前: 説明}`` を入れます。
    """
    namespace = {"__name__": "__exercise__"}
    errors = {}
    skip = skip or {}
    trial = {}
    for i, (source, tags) in enumerate(notebook_cells(path), start=1):
        if SKIP_TAG in tags and source.lstrip().startswith(TRIAL_MARK):
            trial.update(dict.fromkeys(_defined_names(source), i))
        if SKIP_TAG in tags or not source.strip():
            continue
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("!", "%"))]
        code = "\n".join(lines)
        number = _exercise_number(source)
        if i in skip:
            for name in _defined_names(code) + [f"#{number}"]:
                errors.setdefault(name, skip[i])
            continue
        if on_cell is not None:
            on_cell(i, number)
        # エラーの場所に、ノートブックの JSON ではなくセルの行が出るように、セルごとの名前で登録する
        filename = f"<{pathlib.Path(path).name} のコードセル {i}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        try:
            exec(compile(code, filename, "exec"), namespace)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # 読者のコードは何を投げるか分からない
            message = _describe(exc, filename)
            for name in _defined_names(code) + [f"#{number}"]:
                errors.setdefault(name, message)
    for name, i in trial.items():
        if name not in namespace and notes is not None:
            notes.setdefault(name, trial_note(name, f"コードセル {i}"))
    return namespace, errors


def trial_note(name, where):
    """「試してみる」のセルでだけ定義した名前の説明。"""
    return (f"`{name}` は「試してみる」のセル（{where}）でだけ定義されています。採点では試してみるセルを"
            f"実行しないので、解答に使う関数や値は、練習のセルの中で定義してください。")


def forget_trial_names(namespace):
    """カーネルの名前空間から、「試してみる」のセルでだけ定義した名前を除き、``{名前: 説明}`` を返します。

    ``grade()`` が採点の子プロセスで使い、保存したノートブックの採点と同じ扱いにします
    （実行したセルの記録 ``In`` を使うので、IPython の外では何もしません）。
    """
    history = namespace.get("In")
    if not isinstance(history, list):
        return {}
    trial, elsewhere = set(), set()
    for source in history:
        if not isinstance(source, str):
            continue
        names = set(_defined_names(source))
        (trial if source.lstrip().startswith(TRIAL_MARK) else elsewhere).update(names)
    notes = {}
    for name in trial - elsewhere:
        if namespace.pop(name, None) is not None:
            notes[name] = trial_note(name, "このノートブック")
    return notes


def _describe(exc, filename):
    """セルの実行中の例外を、例外の 1 行とセルの中の場所で説明します。"""
    if isinstance(exc, SystemExit):
        message = "SystemExit: sys.exit() / exit() が呼ばれました（解答のセルでは呼ばないでください）"
    elif isinstance(exc, KeyboardInterrupt):
        message = "KeyboardInterrupt: 実行が中断されました"
    else:
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if frames:
        message += f"\n  場所: コードセルの {frames[-1].lineno} 行目: {frames[-1].line}"
    return message


def _defined_names(code):
    try:
        tree = ast.parse(code)
    except SyntaxError:
        # 構文エラーのセルは、def / class の行から名前を拾います
        return re.findall(r"^(?:def|class)\s+(\w+)", code, flags=re.M)
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return names


class Exercise:
    """1 つの練習問題の解答と、採点用のメッセージを作る道具。

    隠しテストは ``ex = exercise("2-1", "central_diff")`` のように受け取り、
    ``ex(...)`` で読者の関数を呼び、``ex.check_close(...)`` などで確かめます。
    """

    def __init__(self, number, name, obj, seed, notes=None, namespace=None):
        self.number = number
        self.name = name
        self.obj = obj
        self.seed = seed
        self.notes = notes or {}  # 名前 → 読み込みのときに分かったこと（NameError の説明に使います）
        self.namespace = namespace  # 解答の名前空間（spy() が、読者が import した名前も差し替えるのに使います）
        self._context = None  # context() で渡した、例外のときに見せる入力とヒント

    def _header(self):
        return f"練習 {self.number}（{self.name}）"

    def _seed_line(self):
        return (f"  （乱数のシード: {self.seed}。`pytest exercises/ --seed {self.seed}` で同じ入力を"
                "再現できます）")

    def fail(self, message, *, inputs=None, expected=None, actual=None, hint=None, show_values=True):
        """日本語のフィードバックを付けて、この練習を不合格にします。"""
        lines = [f"{self._header()}: {message}"]
        if inputs is not None:
            lines.append(f"  入力:       {inputs}")
        if show_values:
            lines.append(f"  期待した値: {_short(expected)}")
            lines.append(f"  返った値:   {_short(actual)}")
        if hint:
            lines.append(f"  ヒント:     {hint}")
        if show_values and actual is None and expected is not None:
            lines.append("  （None が返りました。関数の最後の `return` を書き忘れていませんか。）")
        lines.append(self._seed_line())
        raise ExerciseFailure("\n".join(lines))

    def run(self, func, *args, **kwargs):
        """``func(*args, **kwargs)`` を呼び、例外が出たら読者向けの説明に変えます。"""
        try:
            return func(*args, **kwargs)
        except NotImplementedError:
            raise ExerciseFailure(
                f"{self._header()}: まだ解かれていません（NotImplementedError）。\n"
                f"  解答セルの `raise NotImplementedError(...)` を消して、答えを書いてください。"
            ) from None
        except ExerciseFailure:
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            # 読者のセル（ノートブック）の中でいちばん深い場所を示します
            cells = [f for f in frames[1:] if f.filename.startswith("<") or "ipykernel" in f.filename]
            mine = [f for f in frames[1:]
                    if "site-packages" not in f.filename and not f.filename.startswith(sys.base_prefix)]
            where = (cells or mine or frames)[-1]
            # 答えのセルの中の場所があれば、そこを示します（準備のセルの Variable.backward などではなく）
            own_files = answer_filenames(self.obj)
            own = [f for f in frames[1:] if f.filename in own_files]
            beyond = ""
            if own and own[-1] is not where:
                beyond = (f"\n  （例外が起きたのは、そこから呼ばれた {where.name}() の {where.lineno} 行目: "
                          f"{where.line}）")
                where = own[-1]
            elif own_files and cells and where.filename not in own_files:
                beyond = ("\n  （この行は練習の答えのセルではなく、それを呼んだ準備のセルやライブラリのコードです。"
                          "あなたの答えが返した値（型・個数・shape）が、ここで期待と違っていた可能性があります）")
            if isinstance(exc, SystemExit):
                what = "sys.exit() / exit() が呼ばれました（解答の中では呼ばず、答えを return してください）"
            elif isinstance(exc, KeyboardInterrupt):
                what = "KeyboardInterrupt が送出されました"
            else:
                what = f"{type(exc).__name__}: {exc}"
            missing = getattr(exc, "name", None) if isinstance(exc, NameError) else None
            context = self._context or {}
            inputs = context.get("inputs") or _describe_args(args, kwargs)
            hint = self.notes.get(missing) or context.get("hint")
            raise ExerciseFailure(
                f"{self._header()}: 実行中に例外が起きました。\n"
                f"  {what}\n"
                f"  場所: {where.name}() の {where.lineno} 行目: {where.line}{beyond}\n"
                + (f"  入力:       {inputs}\n" if inputs else "")
                + (f"  ヒント:     {hint}\n" if hint else "")
                + f"{self._seed_line()}"
            ) from None

    @contextlib.contextmanager
    def context(self, inputs=None, hint=None):
        """この中で読者のコードが例外を出したら、メッセージに ``inputs`` と ``hint`` を添えます。"""
        old, self._context = self._context, {"inputs": inputs, "hint": hint}
        try:
            yield self
        finally:
            self._context = old

    @contextlib.contextmanager
    def spy(self, owner, name):
        """``owner.name``（モジュールの関数やクラスのメソッド）を、呼ばれた記録を取る関数に差し替えます。

        解答の名前空間に同じものが import されていれば（``from numpy import tanh`` など）、それも差し替えます。
        ``with ex.spy(np, "tanh") as calls:`` の中で呼ばれるたびに ``calls`` に ``(args, kwargs)`` が入ります。
        """
        original = getattr(owner, name)
        calls = []

        def wrapper(*args, **kwargs):
            calls.append((args, kwargs))
            return original(*args, **kwargs)

        namespace = self.namespace if isinstance(self.namespace, dict) else {}
        same = [key for key, value in list(namespace.items()) if value is original]
        setattr(owner, name, wrapper)
        for key in same:
            namespace[key] = wrapper
        try:
            yield calls
        finally:
            setattr(owner, name, original)
            for key in same:
                if namespace.get(key) is wrapper:
                    namespace[key] = original

    def traced(self, func, *args, **kwargs):
        """``self.run(func, ...)`` を呼び、``(結果, 答えのセルの中で実行された行の数)`` を返します。

        データについての Python のループがあるかどうかを、行の数で調べるのに使います。
        """
        files = answer_filenames(self.obj)
        count = [0]

        def local(frame, event, arg):
            if event == "line":
                count[0] += 1
            return local

        def tracer(frame, event, arg):
            return local if frame.f_code.co_filename in files else None

        old = sys.gettrace()
        sys.settrace(tracer)
        try:
            result = self.run(func, *args, **kwargs)
        finally:
            sys.settrace(old)
        return result, count[0]

    def nodes(self, obj=None):
        """答え（または ``obj``）の定義と、それが使う同じセルの関数・クラスの AST。分からなければ None。"""
        return answer_nodes(self.obj if obj is None else obj)

    def __call__(self, *args, **kwargs):
        return self.run(self.obj, *args, **kwargs)

    def check_subclass(self, base, base_name=None):
        """答え（``self.obj``）が クラス ``base`` のサブクラスかを確かめ、そのクラスを返します。

        ``base_name`` は、メッセージで使う ``base`` の呼び名（例: ``"mini_dl の Function"``）です。
        """
        if not (isinstance(self.obj, type) and issubclass(self.obj, base)):
            self.fail(f"{self.name} は {base_name or base.__name__} のサブクラスにしてください。",
                      expected=f"{base.__name__} のサブクラス", actual=self.obj,
                      hint=f"`class {self.name}({base.__name__}):` と書きます。")
        return self.obj

    def check_equal(self, actual, expected, *, inputs=None, hint=None):
        """``actual == expected`` を確かめます（タプル・リスト・数値向け）。"""
        if isinstance(actual, np.ndarray) and not isinstance(expected, np.ndarray):
            self.fail(f"{type(expected).__name__} を返してください（NumPy の配列 ndarray が返りました）。",
                      inputs=inputs, expected=expected, actual=actual,
                      hint=hint if not isinstance(expected, tuple) else
                      "タプルを返すときは `tuple(...)` で変換するか、`return (a, b)` の形で返します。")
        try:
            different = bool(actual != expected)
        except Exception:  # 比べられない値（配列の入ったタプルなど）は「違う」とみなします
            different = True
        if different:
            self.fail("答えが違います。", inputs=inputs, expected=expected, actual=actual, hint=hint)

    def check_close(self, actual, expected, *, rtol=1e-5, atol=1e-8, inputs=None, hint=None,
                    check_dtype=False):
        """配列・数値が ``expected`` に十分近いか（shape と、必要なら dtype も）確かめます。"""
        expected = np.asarray(expected)
        try:
            got = np.asarray(actual)
            numeric = np.issubdtype(got.dtype, np.number) or got.dtype == bool
        except Exception:
            numeric = False
        if not numeric:
            self.fail("数値か配列を返してください。", inputs=inputs, expected=expected,
                      actual=actual, hint=hint)
        shown = expected
        if (not check_dtype and got.dtype.kind == "f" and expected.dtype.kind == "f"
                and got.dtype.itemsize < expected.dtype.itemsize):
            # dtype は比べないとき、float32 の答えには期待値も float32 で見せます（float64 を求めていると誤解しないように）
            shown = expected.astype(got.dtype)
        if got.shape != expected.shape:
            self.fail(f"shape が違います（期待 {expected.shape}、実際 {got.shape}）。",
                      inputs=inputs, expected=shown, actual=actual, hint=hint)
        if check_dtype and got.dtype != expected.dtype:
            self.fail(f"dtype が違います（期待 {expected.dtype}、実際 {got.dtype}）。",
                      inputs=inputs, expected=expected, actual=actual, hint=hint)
        if not np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
            err = np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))
            self.fail(f"値が違います（最大の差 {err:.3g}、許容 rtol={rtol:g}, atol={atol:g}）。",
                      inputs=inputs, expected=shown, actual=actual, hint=hint)

    def check_raises(self, exc_type, func, *args, inputs=None, hint=None, **kwargs):
        """``func(*args)`` が ``exc_type`` を送出することを確かめます。"""
        try:
            result = func(*args, **kwargs)
        except exc_type:
            return
        except NotImplementedError:
            self.run(_raise_not_implemented)
        except Exception as exc:
            self.fail(f"{exc_type.__name__} を送出するはずが、{type(exc).__name__} が送出されました。",
                      inputs=inputs, hint=hint, show_values=False)
        else:
            self.fail(f"{exc_type.__name__} を送出するはずが、値を返しました。",
                      inputs=inputs, expected=exc_type.__name__, actual=result, hint=hint)


def pick_hint(actual, candidates, default, rtol=1e-4, atol=1e-5, equal_nan=False):
    """``actual`` が、よくある間違いの答え ``candidates``（{ヒント: 値}）のどれかに一致すれば、そのヒントを返します。

    どれにも一致しなければ ``default`` を返します。``equal_nan=False`` なら inf や nan を含む候補は比べず、
    ``True`` なら nan どうしを一致とみなします。
    """
    try:
        got = np.asarray(actual, dtype=np.float64)
    except Exception:
        return default
    for hint, value in candidates.items():
        value = np.asarray(value, dtype=np.float64)
        if got.shape != value.shape or not (equal_nan or np.all(np.isfinite(value))):
            continue
        if np.allclose(got, value, rtol=rtol, atol=atol, equal_nan=equal_nan):
            return hint
    return default


def _describe_args(args, kwargs, limit=160):
    """例外のメッセージに添える、呼び出しの引数の短い説明（引数がなければ空文字列）。"""
    parts = [_short(a, limit) for a in args] + [f"{k}={_short(v, limit)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _code_objects(obj):
    """関数・ラムダ・クラス（のメソッド）のコードオブジェクトのリスト。"""
    if isinstance(obj, type):
        codes = []
        for value in vars(obj).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                value = value.fget
            code = getattr(value, "__code__", None)
            if code is not None:
                codes.append(code)
        return codes
    code = getattr(obj, "__code__", None)
    return [code] if code is not None else []


def answer_filenames(obj):
    """``obj`` を定義したセル（ファイル）の名前の集合（分からなければ空）。"""
    return {code.co_filename for code in _code_objects(obj)}


def answer_source(obj):
    """``obj`` を定義したセル全体のソース（``linecache`` から）。分からなければ None。"""
    for code in _code_objects(obj):
        lines = linecache.getlines(code.co_filename)
        if lines:
            return "".join(lines)
    return None


def answer_nodes(obj):
    """``obj`` の定義（def・class・lambda）と、それが名前で使う同じセルの関数・クラスの AST ノードのリスト。

    セルの一番外側で答えを試すコード（``print(f(...))`` など）は含みません。ソースが分からないときは None。
    """
    source = answer_source(obj)
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    top = {node.name: node for node in tree.body if isinstance(node, defs)}
    first_lines = {code.co_firstlineno for code in _code_objects(obj)}
    found = []
    for node in ast.walk(tree):
        if isinstance(obj, type):
            match = isinstance(node, ast.ClassDef) and node.name == obj.__name__
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            match = first in first_lines and getattr(node, "name", "<lambda>") == getattr(obj, "__name__", None)
        else:
            match = False
        if match:
            found = [node]  # 同じ名前の定義が何度もあれば、最後のもの
    if not found:
        return None
    names_done = {getattr(found[0], "name", None)}
    queue = list(found)
    while queue:
        node = queue.pop()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in top and sub.id not in names_done:
                names_done.add(sub.id)
                found.append(top[sub.id])
                queue.append(top[sub.id])
    return found


def attribute_names(nodes):
    """AST ノードの中で読み書きしている属性の名前（``x.strides`` の ``strides``）と、
    ``getattr(x, "名前")`` の名前の集合。"""
    names = set()
    for node in nodes or []:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute):
                names.add(sub.attr)
            elif (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "getattr"
                  and len(sub.args) >= 2 and isinstance(sub.args[1], ast.Constant)):
                names.add(str(sub.args[1].value))
    return names


def used_names(nodes):
    """AST ノードの中で使っている名前（``np.broadcast_shapes`` なら ``np`` と ``broadcast_shapes``）の集合。"""
    names = set()
    for node in nodes or []:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                names.add(sub.attr)
    return names


def _raise_not_implemented():
    raise NotImplementedError


class Answers:
    """1 章分の解答（名前空間）と、読み込み時のエラー。"""

    def __init__(self, chapter, namespace, errors, origin):
        self.chapter = chapter
        self.namespace = namespace
        self.errors = errors
        self.origin = origin

    def get(self, number, name, seed):
        if name not in self.namespace:
            header = f"練習 {number}（{name}）"
            error = self.errors.get(name) or self.errors.get(f"#{number}")
            if error:
                raise ExerciseFailure(f"{header}: 解答セルの実行中にエラーが起きました。\n  {error}")
            raise ExerciseFailure(
                f"{header}: `{name}` が見つかりません（{self.origin}）。\n"
                f"  解答セルで `{name}` を定義したまま、名前を変えずに残してください。"
            )
        return Exercise(number, name, self.namespace[name], seed, notes=self.errors, namespace=self.namespace)


def pytest_addoption(parser):
    group = parser.getgroup("mini_dl", "mini_dl の練習問題の採点")
    group.addoption("--answers", dest="mini_dl_answers", default=None,
                    help="解答のノートブック（chNN.ipynb）があるフォルダ。既定は exercises/。")
    group.addoption("--extra-tests", dest="mini_dl_extra_tests", default=None,
                    help="先生が用意した追加テストのフォルダ（環境変数 MINI_DL_EXTRA_TESTS でも可）。")
    group.addoption("--seed", dest="mini_dl_seed", default=None,
                    help="乱数のシード（不合格のメッセージに出た値）。同じ入力で採点し直します"
                         "（環境変数 MINI_DL_GRADER_SEED でも可）。")


def configure(config):
    """``exercises/conftest.py`` から呼ばれ、採点プラグインを登録します。"""
    if config.pluginmanager.has_plugin("mini_dl_grader"):
        return
    import _plugin  # 採点の仕組み（_plugin.py・_runner.py）は grader を使うので、ここで読み込みます

    # 先生の非公開テストが隠しテストと同じ名前（test_ch01.py）でもぶつからないように
    config.option.importmode = "importlib"
    config.pluginmanager.register(_plugin.GraderPlugin(config, _injected_namespaces), "mini_dl_grader")
    extra = config.getoption("mini_dl_extra_tests") or os.environ.get("MINI_DL_EXTRA_TESTS")
    if extra:
        extra_path = pathlib.Path(extra).resolve()
        if not extra_path.is_dir():
            raise pytest.UsageError(f"追加テストのフォルダが見つかりません: {extra}")
        config.args.append(str(extra_path))


def grade(chapter, namespace):
    """ノートブックの中から、いまの定義で ``chapter`` の練習を採点します。

    採点するのは ``namespace``（ノートブックでは ``globals()``、つまりカーネルのいまの定義）です。
    保存したノートブックを採点する ``pytest exercises/`` とは、保存していない変更や、上から順に
    実行していないセルの分だけ結果が違うことがあります。テストは子プロセスで実行するので、
    無限ループしても制限時間で止まり、カーネルの状態も変わりません。

    Args:
        chapter: ``"ch02"`` のような章の名前。
        namespace: 採点する定義の入った辞書。ノートブックでは ``globals()`` を渡します。

    Returns:
        bool: すべて正解なら ``True``。
    """
    if _in_worker:
        print("採点の途中では grade() を実行しません（採点のセル以外に grade() を書かないでください）。")
        return False
    test_file = HIDDEN_DIR / f"test_{chapter}.py"
    if not test_file.exists():
        raise ValueError(f"{chapter} の隠しテストが見つかりません（{test_file}）")
    print(f"{chapter}: このカーネルのいまの定義（globals()）を採点します。"
          "保存したノートブックの採点（pytest exercises/）とは、保存していない変更の分だけ違うことがあります。")
    _injected_namespaces[chapter] = namespace
    try:
        code = pytest.main(
            [str(test_file), "-q", "--no-header", "--tb=no", "-p", "no:cacheprovider",
             "--capture=sys", f"--rootdir={EXERCISES_DIR.parent}"]
        )
    finally:
        _injected_namespaces.pop(chapter, None)
    return code == 0
