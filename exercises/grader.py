"""練習問題の採点器。

2 通りの使い方があります。

* ``pytest exercises/``: 保存された ``exercises/chNN.ipynb`` の解答セルを読み込み、
  ``exercises/hidden/`` の隠しテストで採点します（``-k ch02`` で 1 章だけ）。
* ノートブックの最後のセルで ``grade("ch02", globals())``: いま動いているカーネルの
  定義をそのまま採点します（保存不要。Jupyter でも Colab でも同じです）。

隠しテストは ``exercise`` フィクスチャで解答を受け取り、答えが違えば
「どの練習か・期待した値・返ってきた値・ヒント」を日本語で報告します。
入力は毎回ランダムに作るので、例の答えを書き写しただけでは通りません。
"""
import ast
import json
import linecache
import os
import pathlib
import re
import secrets
import sys
import traceback

import numpy as np
import pytest

EXERCISES_DIR = pathlib.Path(__file__).resolve().parent
HIDDEN_DIR = EXERCISES_DIR / "hidden"
# 1 つのテストの制限時間（秒）。無限ループしても、その練習だけが失敗します。
DEFAULT_TIMEOUT = float(os.environ.get("MINI_DL_GRADER_TIMEOUT", "10"))

SKIP_TAG = "grader-skip"
EXERCISE_RE = re.compile(r"練習\s*(\d+)-(\d+)")

# ノートブックから grade() したときに、採点対象の名前空間を置いておく場所
_injected_namespaces = {}


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
    """ノートブックのコードセルを ``(source, tags)`` の列で返します。"""
    nb = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"]
        if isinstance(source, list):
            source = "".join(source)
        yield source, cell.get("metadata", {}).get("tags", [])


def answer_cells(path):
    """解答セル（先頭行に「練習 N-M」と書いたセル）を ``{番号: source}`` で返します。"""
    found = {}
    for source, tags in notebook_cells(path):
        first = source.lstrip().split("\n", 1)[0]
        m = EXERCISE_RE.search(first) if first.startswith("#") else None
        if m and SKIP_TAG not in tags:
            found[f"{m.group(1)}-{m.group(2)}"] = source
    return found


def load_notebook(path):
    """ノートブックのコードセルを上から順に実行し、``(名前空間, セルごとのエラー)`` を返します。

    ``grader-skip`` タグの付いたセル（Colab の準備や採点セル）は実行しません。
    あるセルで例外が起きても、残りのセルは実行を続けます。エラーは、そのセルが
    定義しようとした名前ごとに記録し、採点のときに読者へ伝えます。
    """
    namespace = {"__name__": "__exercise__"}
    errors = {}
    for i, (source, tags) in enumerate(notebook_cells(path), start=1):
        if SKIP_TAG in tags or not source.strip():
            continue
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("!", "%"))]
        code = "\n".join(lines)
        # エラーの場所に、ノートブックの JSON ではなくセルの行が出るように、セルごとの名前で登録する
        filename = f"<{pathlib.Path(path).name} のコードセル {i}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        try:
            exec(compile(code, filename, "exec"), namespace)
        except Exception as exc:  # 読者のコードは何を投げるか分からない
            message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            for name in _defined_names(code):
                errors.setdefault(name, message)
    return namespace, errors


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

    def __init__(self, number, name, obj, seed):
        self.number = number
        self.name = name
        self.obj = obj
        self.seed = seed

    def _header(self):
        return f"練習 {self.number}（{self.name}）"

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
        lines.append(f"  （乱数のシード: {self.seed}）")
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
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            # 読者のセル（ノートブック）の中でいちばん深い場所を示します
            cells = [f for f in frames[1:] if f.filename.startswith("<") or "ipykernel" in f.filename]
            mine = [f for f in frames[1:]
                    if "site-packages" not in f.filename and not f.filename.startswith(sys.base_prefix)]
            where = (cells or mine or frames)[-1]
            raise ExerciseFailure(
                f"{self._header()}: 実行中に例外が起きました。\n"
                f"  {type(exc).__name__}: {exc}\n"
                f"  場所: {where.name}() の {where.lineno} 行目: {where.line}\n"
                f"  （乱数のシード: {self.seed}）"
            ) from None

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
        if actual != expected:
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
        if got.shape != expected.shape:
            self.fail(f"shape が違います（期待 {expected.shape}、実際 {got.shape}）。",
                      inputs=inputs, expected=expected, actual=actual, hint=hint)
        if check_dtype and got.dtype != expected.dtype:
            self.fail(f"dtype が違います（期待 {expected.dtype}、実際 {got.dtype}）。",
                      inputs=inputs, expected=expected, actual=actual, hint=hint)
        if not np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
            err = np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))
            self.fail(f"値が違います（最大の差 {err:.3g}、許容 rtol={rtol:g}, atol={atol:g}）。",
                      inputs=inputs, expected=expected, actual=actual, hint=hint)

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
            if name in self.errors:
                raise ExerciseFailure(
                    f"{header}: 解答セルの実行中にエラーが起きました。\n  {self.errors[name]}"
                )
            raise ExerciseFailure(
                f"{header}: `{name}` が見つかりません（{self.origin}）。\n"
                f"  解答セルで `{name}` を定義したまま、名前を変えずに残してください。"
            )
        return Exercise(number, name, self.namespace[name], seed)


class GraderPlugin:
    """pytest に採点用のフィクスチャと日本語の結果表示を加えるプラグイン。"""

    def __init__(self, config):
        self.config = config
        answers_dir = config.getoption("mini_dl_answers") or os.environ.get("MINI_DL_ANSWERS")
        self.answers_dir = pathlib.Path(answers_dir) if answers_dir else EXERCISES_DIR
        self._cache = {}
        self.results = []

    def answers(self, chapter):
        if chapter in _injected_namespaces:
            return Answers(chapter, _injected_namespaces[chapter], {}, "このノートブック")
        if chapter not in self._cache:
            path = self.answers_dir / f"{chapter}.ipynb"
            if not path.exists():
                raise ExerciseFailure(f"{chapter}: 解答のノートブック {path} が見つかりません。")
            namespace, errors = load_notebook(path)
            self._cache[chapter] = Answers(chapter, namespace, errors, path.name)
        return self._cache[chapter]

    @pytest.fixture
    def exercise(self):
        """``exercise("2-1", "central_diff")`` で練習 2-1 の解答を受け取るフィクスチャ。"""
        seed = secrets.randbelow(2**32)

        def get(number, name):
            return self.answers(chapter_of(number)).get(number, name, seed)

        get.seed = seed
        return get

    @pytest.fixture
    def rng(self, exercise):
        """毎回ちがうシードの乱数生成器（シードは不合格のメッセージに出ます）。"""
        return np.random.default_rng(exercise.seed)

    def pytest_collection_modifyitems(self, items):
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if call.excinfo is not None and call.excinfo.errisinstance(ExerciseFailure):
            report.longrepr = str(call.excinfo.value)
        elif report.failed and "Timeout" in str(report.longrepr):
            report.longrepr = (
                f"{item.name}: {DEFAULT_TIMEOUT:g} 秒以内に終わりませんでした。"
                "無限ループになっていないか確かめてください。"
            )

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.failed:
            self.results.append(report)

    def summary_lines(self):
        """練習ごとの合否（その練習のテストがすべて通れば正解）と、不合格の理由。"""
        by_exercise = {}
        for r in self.results:
            name = r.nodeid.split("::")[-1]
            m = re.match(r"test_ex(\d+)_(\d+)_", name)
            key = f"練習 {m.group(1)}-{m.group(2)}" if m else name
            by_exercise.setdefault(key, []).append(r)
        solved = [k for k, rs in by_exercise.items() if not any(r.failed for r in rs)]
        tests_passed = sum(1 for r in self.results if r.when == "call" and r.passed)
        tests_total = sum(1 for r in self.results if r.when == "call" or r.failed)
        lines = [f"採点結果: {len(solved)} / {len(by_exercise)} 問 正解（テスト {tests_passed} / {tests_total} 件）"]
        for key, reports in by_exercise.items():
            failed = [r for r in reports if r.failed]
            lines.append(f"  {'✘' if failed else '✔'} {key}")
            for message in dict.fromkeys(str(r.longrepr) for r in failed):  # 同じ説明は 1 回だけ
                lines += ["      " + ln for ln in message.splitlines()[:16]]
        return lines

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("mini_dl 練習問題の採点")
        for line in self.summary_lines():
            terminalreporter.write_line(line)


def pytest_addoption(parser):
    group = parser.getgroup("mini_dl", "mini_dl の練習問題の採点")
    group.addoption("--answers", dest="mini_dl_answers", default=None,
                    help="解答のノートブック（chNN.ipynb）があるフォルダ。既定は exercises/。")
    group.addoption("--extra-tests", dest="mini_dl_extra_tests", default=None,
                    help="先生が用意した追加テストのフォルダ（環境変数 MINI_DL_EXTRA_TESTS でも可）。")


def configure(config):
    """``exercises/conftest.py`` から呼ばれ、採点プラグインを登録します。"""
    try:
        import pytest_timeout  # noqa: F401
    except ImportError:
        raise pytest.UsageError(
            "採点には pytest-timeout が必要です: pip install -e \".[test]\" を実行してください。"
        ) from None
    if config.pluginmanager.has_plugin("mini_dl_grader"):
        return
    config.pluginmanager.register(GraderPlugin(config), "mini_dl_grader")
    extra = config.getoption("mini_dl_extra_tests") or os.environ.get("MINI_DL_EXTRA_TESTS")
    if extra:
        extra_path = pathlib.Path(extra).resolve()
        if not extra_path.is_dir():
            raise pytest.UsageError(f"追加テストのフォルダが見つかりません: {extra}")
        config.args.append(str(extra_path))


def grade(chapter, namespace):
    """ノートブックの中から、いまの定義で ``chapter`` の練習を採点します。

    Args:
        chapter: ``"ch02"`` のような章の名前。
        namespace: 採点する定義の入った辞書。ノートブックでは ``globals()`` を渡します。

    Returns:
        bool: すべて正解なら ``True``。
    """
    test_file = HIDDEN_DIR / f"test_{chapter}.py"
    if not test_file.exists():
        raise ValueError(f"{chapter} の隠しテストが見つかりません（{test_file}）")
    _injected_namespaces[chapter] = namespace

    try:
        code = pytest.main(
            [str(test_file), "-q", "--no-header", "--tb=no", "-p", "no:cacheprovider",
             "--capture=sys", f"--rootdir={EXERCISES_DIR.parent}"]
        )
    finally:
        _injected_namespaces.pop(chapter, None)
    return code == 0
