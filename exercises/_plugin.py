"""pytest に採点用のフィクスチャ・子プロセスでの実行・日本語の結果表示を加えるプラグイン。

``grader.configure()`` が登録します。テストの実行は ``_runner`` が章ごとの子プロセスで行い、
このプラグインの同じオブジェクトが、親（集計と表示）と子（解答の用意とフィクスチャ）の両方で
働きます（子は ``os.fork()`` で親から作るので、親の状態をそのまま受け継ぎます）。
"""
import os
import pathlib
import re
import secrets

import numpy as np
import pytest

import _runner
import grader

TEST_NAME_RE = re.compile(r"test_ex(\d+)_(\d+)(?:_|$|\[)")


def exercise_of(name):
    """テストの名前 ``test_ex2_3_...`` から練習番号 ``"2-3"`` を返します（なければ None）。"""
    m = TEST_NAME_RE.match(name)
    return f"{m.group(1)}-{m.group(2)}" if m else None


def _number_key(number):
    try:
        return tuple(int(p) for p in number.split("-")), ""
    except ValueError:
        return (10 ** 6,), number


class GraderPlugin:
    """採点のプラグイン。``namespaces`` は ``grade()`` から渡された、章 → カーネルの名前空間。"""

    def __init__(self, config, namespaces=None):
        self.config = config
        answers_dir = config.getoption("mini_dl_answers") or os.environ.get("MINI_DL_ANSWERS")
        # 解答のフォルダは最初に 1 度だけ絶対パスにします（読者のコードが os.chdir しても変わりません）
        self.answers_dir = (pathlib.Path(answers_dir) if answers_dir else grader.EXERCISES_DIR).resolve()
        self.namespaces = dict(namespaces or {})
        seed = config.getoption("mini_dl_seed") or os.environ.get("MINI_DL_GRADER_SEED")
        try:
            self.seed = None if seed in (None, "") else int(seed) % 2**32
        except ValueError:
            raise pytest.UsageError(f"--seed には整数を指定してください（受け取った値: {seed!r}）") from None
        self._cache = {}
        self._live_notes = {}
        self.results = []
        self.deselected = 0
        self.runner = _runner.Runner(self)

    # ------------------------------------------------------------------ 章と解答

    def group_of(self, item):
        """テストをどの章の子プロセスで実行するか（章の名前、分からなければファイルのパス）。"""
        number = exercise_of(getattr(item, "originalname", None) or item.name)
        if number:
            return grader.chapter_of(number)
        m = re.search(r"ch\d\d", pathlib.Path(str(item.path)).name)
        return m.group(0) if m else str(item.path)

    def prepare_answers(self, key, skip, send):
        """（子プロセスで）章 ``key`` の解答を用意します。セルを実行するたびに ``send`` で知らせます。"""
        if key in self.namespaces:  # grade(): 試してみるセルの名前は、保存した採点と同じく使いません
            self._live_notes[key] = grader.forget_trial_names(self.namespaces[key])
        if not re.fullmatch(r"ch\d\d", key) or key in self.namespaces:
            return
        self._cache[key] = self._load(key, skip, lambda n, ex: send({"t": "cell", "n": n, "ex": ex}))

    def _load(self, chapter, skip=None, on_cell=None):
        path = self.answers_dir / f"{chapter}.ipynb"
        if not path.exists():
            raise grader.ExerciseFailure(f"{chapter}: 解答のノートブック {path} が見つかりません。")
        notes = {}
        namespace, errors = grader.load_notebook(path, on_cell=on_cell, skip=skip, notes=notes)
        return grader.Answers(chapter, namespace, {**notes, **errors}, path.name)

    def answers(self, chapter):
        if chapter in self.namespaces:
            return grader.Answers(chapter, self.namespaces[chapter], self._live_notes.get(chapter, {}),
                                  "このノートブックのカーネル")
        if chapter not in self._cache:
            self._cache[chapter] = self._load(chapter)
        return self._cache[chapter]

    def exercises_of(self, chapter):
        """章のノートブックにある練習の番号（分母に使います）。"""
        template = grader.EXERCISES_DIR / f"{chapter}.ipynb"
        # grade() のときと、提出物が壊れていて読めないときは、配布した雛形の練習を数えます
        paths = [template] if chapter in self.namespaces else [self.answers_dir / f"{chapter}.ipynb", template]
        for path in paths:
            try:
                return list(grader.answer_cells(path))
            except Exception:
                continue
        return []

    def child_main(self, key, items, skip, send):
        _runner.child_main(self, key, items, skip, send)

    # ------------------------------------------------------------------ フィクスチャ（子プロセスで使われます）

    @pytest.fixture
    def exercise(self):
        """``exercise("2-1", "central_diff")`` で練習 2-1 の解答を受け取るフィクスチャ。"""
        seed = self.seed if self.seed is not None else secrets.randbelow(2**32)

        def get(number, name):
            return self.answers(grader.chapter_of(number)).get(number, name, seed)

        get.seed = seed
        return get

    @pytest.fixture
    def rng(self, exercise):
        """毎回ちがうシードの乱数生成器（シードは不合格のメッセージに出ます）。"""
        return np.random.default_rng(exercise.seed)

    # ------------------------------------------------------------------ pytest のフック

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items):
        for item in items:  # -k ch01 で、名前に ch01 を含まない先生のテストも選ばれるように
            key = self.group_of(item)
            if re.fullmatch(r"ch\d\d", key):
                item.extra_keyword_matches.add(key)

    def pytest_deselected(self, items):
        self.deselected += len(items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if grader._in_worker or "exercise" not in getattr(item, "fixturenames", ()):
            return None
        if not hasattr(os, "fork"):  # Windows: 子プロセスを作れないので、このプロセスで採点します（隔離なし）
            return None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self.runner.reports_for(item):
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        try:
            return (yield)
        except (SystemExit, KeyboardInterrupt) as exc:
            what = ("sys.exit() / exit() でプログラムを終わらせようとしました"
                    if isinstance(exc, SystemExit) else "KeyboardInterrupt（Ctrl-C）が送出されました")
            raise grader.ExerciseFailure(
                f"{grader.header_of(pyfuncitem)}: 採点中に {what}。\n"
                "  解答の中では sys.exit() を呼ばず、答えを return してください。") from None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if call.excinfo is not None and call.excinfo.errisinstance(grader.ExerciseFailure):
            report.longrepr = str(call.excinfo.value)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.failed or report.skipped:
            self.results.append(report)

    def pytest_sessionfinish(self, session):
        # 飛ばされた・実行されなかった練習があれば、pytest が「成功」と言っても失敗で終わります
        # （-k などで選ばなかった練習は、採点しなかったと表示するだけで、失敗にはしません）
        by_exercise = self._by_exercise()
        unsolved = [rs for rs in by_exercise.values() if not self._passed(rs)]
        honest_fail = any(rs for rs in unsolved) or (unsolved and not self.deselected)
        if honest_fail and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_unconfigure(self):
        self.runner.close()

    # ------------------------------------------------------------------ 集計

    def _by_exercise(self):
        by_exercise, chapters = {}, []
        for r in self.results:
            name = r.nodeid.split("::")[-1]
            number = exercise_of(name)
            if number and grader.chapter_of(number) not in chapters:
                chapters.append(grader.chapter_of(number))
            by_exercise.setdefault(number or name, []).append(r)
        for chapter in chapters:
            for number in self.exercises_of(chapter):
                by_exercise.setdefault(number, [])
        return dict(sorted(by_exercise.items(), key=lambda kv: _number_key(kv[0])))

    @staticmethod
    def _passed(reports):
        return (any(r.when == "call" and r.passed for r in reports)
                and not any(r.failed or r.skipped or hasattr(r, "wasxfail") for r in reports))

    def summary_lines(self):
        """練習ごとの合否（その練習のテストがすべて通れば正解）と、不合格の理由。"""
        by_exercise = self._by_exercise()
        solved = sum(self._passed(rs) for rs in by_exercise.values())
        nodeids = {}
        for r in self.results:
            nodeids.setdefault(r.nodeid, []).append(r)
        tests_passed = sum(self._passed(rs) for rs in nodeids.values())
        lines = [f"採点結果: {solved} / {len(by_exercise)} 問 正解（テスト {tests_passed} / {len(nodeids)} 件）"]
        for number, reports in by_exercise.items():
            ok = self._passed(reports)
            label = "練習 " + number if exercise_of("test_ex" + number.replace("-", "_")) else number
            if not reports:  # 分母には数えます（正解ではありません）
                lines.append(f"  － {label}（採点していません。この練習のテストは実行されませんでした）")
                continue
            lines.append(f"  {'✔' if ok else '✘'} {label}")
            messages = []
            for r in reports:
                if r.failed:
                    messages.append(str(r.longrepr))
                elif r.skipped or hasattr(r, "wasxfail"):
                    reason = r.longrepr[-1] if isinstance(r.longrepr, tuple) else getattr(r, "wasxfail", "")
                    messages.append(f"テストが飛ばされました（skip / xfail は不合格として数えます）: {reason}")
            for message in dict.fromkeys(messages):  # 同じ説明は 1 回だけ
                lines += ["      " + ln for ln in message.splitlines()[:16]]
        for note in self.runner.notes:
            lines.append(f"  注意: {note}")
        if self.deselected:
            lines.append(f"  （-k などで選ばなかったテスト {self.deselected} 件は実行していません）")
        return lines

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("mini_dl 練習問題の採点")
        for line in self.summary_lines():
            terminalreporter.write_line(line)
