"""採点器の検証: 隠しテストは解答例（solutions/）ですべて通り、手を付けていない練習ですべて落ちる。"""
import json
import os
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import booktools

ROOT = booktools.ROOT
EXERCISES = ROOT / "exercises"
SOLUTIONS = ROOT / "solutions"
HIDDEN = EXERCISES / "hidden"
sys.path.insert(0, str(EXERCISES))
import grader  # noqa: E402

CHAPTERS = sorted(p.stem for p in booktools.exercise_notebooks())
MIN_EXERCISES = {"ch01": 3, "ch02": 3, "ch03": 3}


def run_grader(*args, env=None):
    """``pytest exercises/ ...`` を別プロセスで走らせ、テストごとの結果と出力を返します。"""
    xml = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"grader-{os.getpid()}-{len(args)}.xml"
    cmd = [sys.executable, "-m", "pytest", str(EXERCISES), "-p", "no:cacheprovider", "-q",
           f"--junitxml={xml}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    results = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        results[case.get("name")] = None if bad is None else (bad.get("message", "") + (bad.text or ""))
    xml.unlink()
    return results, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def untouched():
    return run_grader()


@pytest.fixture(scope="module")
def solved():
    return run_grader("--answers", str(SOLUTIONS))


def test_every_chapter_has_exercises_solutions_and_hidden_tests():
    assert CHAPTERS, "exercises/chNN.ipynb がありません"
    for ch in CHAPTERS:
        assert (SOLUTIONS / f"{ch}.ipynb").exists(), f"solutions/{ch}.ipynb がありません"
        assert (HIDDEN / f"test_{ch}.py").exists(), f"exercises/hidden/test_{ch}.py がありません"
        numbers = grader.answer_cells(EXERCISES / f"{ch}.ipynb")
        assert len(numbers) >= MIN_EXERCISES.get(ch, 4), f"{ch} の練習が少なすぎます: {sorted(numbers)}"


@pytest.mark.parametrize("ch", CHAPTERS)
def test_solutions_differ_from_exercises_only_in_answer_cells(ch):
    ex = booktools.read_nb(EXERCISES / f"{ch}.ipynb")["cells"]
    so = booktools.read_nb(SOLUTIONS / f"{ch}.ipynb")["cells"]
    assert len(ex) == len(so), f"{ch}: セルの数が違います"
    for i, (a, b) in enumerate(zip(ex, so)):
        sa, sb = booktools.cell_source(a), booktools.cell_source(b)
        first_a, first_b = sa.split("\n", 1)[0], sb.split("\n", 1)[0]
        if a["cell_type"] == "code" and grader.EXERCISE_RE.search(first_a) and first_a.startswith("#"):
            assert first_a == first_b, f"{ch} のセル {i}: 解答セルの 1 行目が違います"
            assert "NotImplementedError" in sa, f"{ch} のセル {i}: 練習の雛形に NotImplementedError がありません"
            assert "NotImplementedError" not in sb, f"{ch} のセル {i}: 解答例が未完成です"
        else:
            assert sa == sb, f"{ch} のセル {i} が練習と解答例で食い違っています"


@pytest.mark.parametrize("folder", ["exercises", "solutions"])
def test_exercise_notebooks_are_stored_clean_with_colab_cell(folder):
    for path in booktools.exercise_notebooks(folder):
        nb = booktools.read_nb(path)
        first, last = nb["cells"][0], nb["cells"][-1]
        assert booktools.cell_source(first) == booktools.setup_source("exercise"), f"{path.name}: 先頭セル"
        assert "grader-skip" in first["metadata"].get("tags", [])
        assert "grader-skip" in last["metadata"].get("tags", []) and "grade(" in booktools.cell_source(last)
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name} は未実行で保存します"


def _exercise_of(test_name):
    m = re.match(r"test_ex(\d+)_(\d+)_", test_name)
    return f"{m.group(1)}-{m.group(2)}" if m else None


def test_every_exercise_has_hidden_tests_named_after_it(untouched):
    results, _ = untouched
    tested = {_exercise_of(name) for name in results}
    assert None not in tested, f"隠しテストの名前は test_exN_M_... にします: {sorted(results)}"
    for ch in CHAPTERS:
        numbers = set(grader.answer_cells(EXERCISES / f"{ch}.ipynb"))
        assert numbers <= tested, f"{ch}: 隠しテストのない練習 {sorted(numbers - tested)}"


def test_every_hidden_test_passes_on_the_solutions(solved):
    results, output = solved
    assert results, output
    failed = {name: msg for name, msg in results.items() if msg is not None}
    assert not failed, f"解答例で落ちた隠しテスト: {json.dumps(failed, ensure_ascii=False, indent=1)}"


def test_every_hidden_test_fails_on_the_untouched_exercises_in_japanese(untouched, solved):
    results, output = untouched
    assert set(results) == set(solved[0])
    passed = [name for name, msg in results.items() if msg is None]
    assert not passed, f"手を付けていない練習で通ってしまう隠しテスト: {passed}"
    for name, msg in results.items():
        number = _exercise_of(name)
        assert f"練習 {number}" in msg, f"{name} の失敗メッセージに練習番号がありません: {msg}"
    assert "採点結果: 0 /" in output


@pytest.mark.parametrize("ch", CHAPTERS)
def test_k_selects_one_chapter(ch):
    results, _ = run_grader("--answers", str(SOLUTIONS), "-k", ch)
    assert results and all(_exercise_of(n).split("-")[0] == str(int(ch[2:])) for n in results)


def test_infinite_loop_fails_only_that_exercise(tmp_path):
    ch = CHAPTERS[0]
    nb = booktools.read_nb(SOLUTIONS / f"{ch}.ipynb")
    looping = None
    for cell in nb["cells"]:
        src = booktools.cell_source(cell)
        m = grader.EXERCISE_RE.search(src.split("\n", 1)[0])
        if cell["cell_type"] == "code" and m and looping is None:
            looping = f"{m.group(1)}-{m.group(2)}"
            # 最初の関数の本体の先頭に無限ループを差し込みます
            cell["source"] = re.sub(r"(\n(\s+)(?=\S))", r"\1while True:\n\2    pass\n\2", src, count=1)
    booktools.write_nb(tmp_path / f"{ch}.ipynb", nb)
    results, output = run_grader("--answers", str(tmp_path), "-k", ch, env={"MINI_DL_GRADER_TIMEOUT": "2"})
    stuck = {n for n, msg in results.items() if msg is not None}
    assert stuck and all(_exercise_of(n) == looping for n in stuck), output
    assert any("秒以内に終わりませんでした" in results[n] for n in stuck), output
    assert any(_exercise_of(n) != looping and msg is None for n, msg in results.items())


def test_teacher_can_add_private_tests(tmp_path):
    ch = CHAPTERS[0]
    number = sorted(grader.answer_cells(EXERCISES / f"{ch}.ipynb"))[0]
    name = _defined_name(SOLUTIONS / f"{ch}.ipynb", number)
    (tmp_path / f"test_private_{ch}.py").write_text(
        "def test_ex{0}_private(exercise):\n"
        "    ex = exercise({1!r}, {2!r})\n"
        "    assert ex.obj is not None\n".format(number.replace("-", "_"), number, name),
        encoding="utf-8")
    results, output = run_grader("--answers", str(SOLUTIONS), "--extra-tests", str(tmp_path))
    assert f"test_ex{number.replace('-', '_')}_private" in results, output
    results, output = run_grader("--answers", str(SOLUTIONS), "-k", "private",
                                 env={"MINI_DL_EXTRA_TESTS": str(tmp_path)})
    assert list(results.values()) == [None], output


def _defined_name(path, number):
    for cell_src in grader.answer_cells(path).items():
        if cell_src[0] == number:
            return grader._defined_names(cell_src[1])[0]
    raise AssertionError(number)


@pytest.mark.parametrize("ch", CHAPTERS)
def test_grading_inside_a_notebook_uses_the_live_namespace(ch):
    code = (
        "import sys; sys.path.insert(0, {ex!r})\n"
        "from grader import grade, load_notebook\n"
        "ns, errors = load_notebook({sol!r})\n"
        "assert not errors, errors\n"
        "ok = grade({ch!r}, ns)\n"
        "ns2, _ = load_notebook({exn!r})\n"
        "bad = grade({ch!r}, ns2)\n"
        "print('RESULT', ok, bad)\n"
    ).format(ex=str(EXERCISES), sol=str(SOLUTIONS / f"{ch}.ipynb"), ch=ch,
             exn=str(EXERCISES / f"{ch}.ipynb"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=EXERCISES, capture_output=True, text=True,
                          timeout=600)
    assert "RESULT True False" in proc.stdout, proc.stdout + proc.stderr
    assert "採点結果:" in proc.stdout


# ---------------------------------------------------------------- 隔離・制限時間・正直な集計（issue 10）
#
# 第1章の解答例をもとに、読者がやりがちなこと（無限ループ・sys.exit・スレッド・segfault など）を
# 書き込んだノートブックを tmp_path に作り、pytest exercises/ を別プロセスで走らせて確かめます。

FAST = {"MINI_DL_GRADER_TIMEOUT": "3", "MINI_DL_GRADER_CELL_TIMEOUT": "4"}


def _answers(tmp_path, ch="ch01", replace=None, insert=None, also=("ch02",), raw=None):
    """解答例の ``ch`` を書き換えたノートブックを ``tmp_path/answers`` に置き、そのフォルダを返します。

    ``replace``: {練習番号: 関数の定義などのコード}（1 行目の「# 練習 N-M」は残します）。
    ``insert``: [(セルの位置, コード)]（練習ではないコードセルを足します）。
    ``also``: 解答例をそのまま置く章。``raw``: ノートブックの代わりに書くテキスト。
    """
    folder = tmp_path / "answers"
    folder.mkdir(exist_ok=True)
    for other in also:
        booktools.write_nb(folder / f"{other}.ipynb", booktools.read_nb(SOLUTIONS / f"{other}.ipynb"))
    if raw is not None:
        (folder / f"{ch}.ipynb").write_text(raw, encoding="utf-8")
        return folder
    nb = booktools.read_nb(SOLUTIONS / f"{ch}.ipynb")
    for cell in nb["cells"]:
        src = booktools.cell_source(cell)
        m = grader.EXERCISE_RE.search(src.split("\n", 1)[0])
        if cell["cell_type"] == "code" and m and (replace or {}).get(f"{m.group(1)}-{m.group(2)}"):
            cell["source"] = src.split("\n", 1)[0] + "\n" + replace[f"{m.group(1)}-{m.group(2)}"]
    for index, code in sorted(insert or [], reverse=True):
        nb["cells"].insert(index, {"cell_type": "code", "execution_count": None, "id": f"extra{index}",
                                   "metadata": {}, "outputs": [], "source": code})
    booktools.write_nb(folder / f"{ch}.ipynb", nb)
    return folder


def _grade(folder, *args, env=None, k="ch01 or ch02"):
    """採点を走らせ、(練習ごとの結果, 出力, 終了コード, かかった秒数) を返します。"""
    import time
    xml = folder.parent / "report.xml"
    cmd = [sys.executable, "-m", "pytest", str(EXERCISES), "-p", "no:cacheprovider", "-q",
           f"--junitxml={xml}", "--answers", str(folder), "-k", k, *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **FAST, **(env or {})},
                          timeout=300)
    elapsed = time.monotonic() - start
    by_exercise = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = [e for tag in ("failure", "error", "skipped") for e in case.findall(tag)]
        msg = "".join((e.get("message", "") + (e.text or "")) for e in bad) or None
        number = _exercise_of(case.get("name"))
        by_exercise.setdefault(number, []).append(msg)
    return by_exercise, proc.stdout + proc.stderr, proc.returncode, elapsed


def _ok(by_exercise, number):
    return number in by_exercise and all(m is None for m in by_exercise[number])


def _messages(by_exercise, number):
    return "\n".join(m for m in by_exercise.get(number, []) if m)


def _ch02_all_pass(by_exercise):
    numbers = [n for n in by_exercise if n.startswith("2-")]
    return numbers and all(_ok(by_exercise, n) for n in numbers)


def test_hangs_are_killed_and_fail_only_their_exercise(tmp_path):
    folder = _answers(tmp_path, replace={
        # 裸の except で、時間切れの例外も握りつぶしてループを続ける
        "1-1": "def c_strides(shape, itemsize):\n    while True:\n        try:\n            sum(range(10**6))\n"
               "        except:\n            pass\n",
        # タイマーを止めてから C の中で眠る（signal による時間切れは効きません）
        "1-3": "import signal, time, threading\n"
               "threading.Thread(target=time.sleep, args=(10**6,)).start()  # デーモンでないスレッド\n"
               "def matmul_gflops(m, k, n, seconds):\n"
               "    signal.setitimer(signal.ITIMER_REAL, 0)\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
               "    time.sleep(10**6)\n",
        # 解答のセルの中で採点を入れ子に呼ぶ（何もせずに続けます）
        "1-4": "import numpy as np\nfrom grader import grade\ngrade('ch01', globals())\n"
               "def standardize_rows(x):\n    mu = x.mean(axis=1, keepdims=True)\n"
               "    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)\n    return (x - mu) / np.sqrt(var + 1e-5)\n",
    })
    results, output, code, elapsed = _grade(folder)
    assert code != 0 and elapsed < 60, output
    for number in ("1-1", "1-3"):
        assert "秒以内に終わりませんでした" in _messages(results, number), output
    assert _ok(results, "1-2") and _ok(results, "1-4") and _ch02_all_pass(results), output
    assert "採点結果: " in output and "✘ 練習 1-1" in output and "✔ 練習 1-2" in output


def test_exits_and_crashes_fail_with_a_japanese_line_and_grading_continues(tmp_path):
    folder = _answers(tmp_path, replace={
        "1-1": "import os\ndef c_strides(shape, itemsize):\n    os._exit(3)\n",
        "1-2": "import ctypes\ndef broadcast_shape(a, b):\n    return ctypes.string_at(0)\n",
        "1-3": "import sys\ndef matmul_gflops(m, k, n, seconds):\n    sys.exit('おしまい')\n",
        "1-4": "def standardize_rows(x):\n    raise KeyboardInterrupt\n",
    })
    results, output, code, _ = _grade(folder)
    assert code != 0, output
    assert "終了コード 3" in _messages(results, "1-1"), output
    assert "SIGSEGV" in _messages(results, "1-2"), output
    assert "sys.exit()" in _messages(results, "1-3"), output
    assert "KeyboardInterrupt" in _messages(results, "1-4"), output
    assert _ch02_all_pass(results), output
    assert "採点結果: 6 / 10 問 正解" in output, output


def test_an_allocation_loop_fails_only_that_exercise(tmp_path):
    folder = _answers(tmp_path, replace={
        "1-1": "import numpy as np\ndef c_strides(shape, itemsize):\n    keep = []\n    while True:\n"
               "        keep.append(np.ones(10**7))\n",
    })
    results, output, code, _ = _grade(folder, env={"MINI_DL_GRADER_MEMORY_GB": "0.5", "MINI_DL_GRADER_TIMEOUT": "20"})
    assert code != 0 and "MemoryError" in _messages(results, "1-1"), output
    assert _ok(results, "1-2") and _ch02_all_pass(results), output


def test_chapters_share_no_state(tmp_path):
    # 第1章の準備のセルが NumPy・作業フォルダ・mini_dl の設定を変えても、第2章の採点は変わりません
    folder = _answers(tmp_path, insert=[(3, (
        "import os, numpy as np, mini_dl\n"
        "np.seterr(all='raise')\nos.chdir(os.path.expanduser('~'))\n"
        "np.sum = lambda *a, **k: 0\nmini_dl.Config.enable_backprop = False\n"))])
    relative = os.path.relpath(folder, ROOT)  # 相対パスの --answers も、最初に 1 度だけ解決します
    results, output, code, _ = _grade(pathlib.Path(relative).resolve(), "--answers", relative)
    assert _ch02_all_pass(results), output


def test_a_slow_cell_outside_the_exercises_is_named_and_skipped(tmp_path):
    folder = _answers(tmp_path, insert=[(5, "import time\ntime.sleep(10**6)  # 重い学習のつもり\n")])
    results, output, code, elapsed = _grade(folder, k="ch01")
    assert all(_ok(results, n) for n in ("1-1", "1-2", "1-3", "1-4")), output
    assert "練習のセルではありません" in output and "飛ばして採点しました" in output, output
    assert "無限ループ" not in output and elapsed < 60


def test_a_hanging_answer_cell_fails_only_its_exercise(tmp_path):
    folder = _answers(tmp_path, replace={"1-2": "while True:\n    pass\n"})
    results, output, code, _ = _grade(folder, k="ch01")
    assert code != 0 and "練習 1-2 のセル" in _messages(results, "1-2"), output
    assert all(_ok(results, n) for n in ("1-1", "1-3", "1-4")), output


def test_a_corrupt_notebook_fails_its_chapter_in_japanese(tmp_path):
    # 空・途中で切れた JSON・JSON でない・セルの形が壊れている、の 4 つを第1〜4章に置きます
    raws = {"ch01": "", "ch02": '{"cells": [', "ch03": "not a notebook", "ch04": '{"cells": [{"cell_type": "code"}]}'}
    for ch, raw in raws.items():
        folder = _answers(tmp_path, ch=ch, raw=raw, also=("ch05",))
    results, output, code, _ = _grade(folder, k=" or ".join([*raws, "ch05"]))
    numbers = [n for n in results if n.split("-")[0] in "1234"]
    assert code != 0 and len(numbers) > 10, output
    for number in numbers:
        assert "読み込めませんでした" in _messages(results, number), output
    assert all(_ok(results, n) for n in results if n.startswith("5-")), output
    assert "Traceback" not in output


def test_innocent_mistakes_get_japanese_messages_with_the_line(tmp_path):
    folder = _answers(tmp_path, replace={
        "1-2": "import numpy as np\ndef broadcast_shape(a, b):\n    return np.array(np.broadcast_shapes(a, b))\n",
        "1-3": "def matmul_gflops(m, k, n, seconds):\n    flops = 2 * m * n * k / seconds / 1e9\n",
        "1-4": "import sys\nsys.exit()\ndef standardize_rows(x):\n    return x\n",
    }, also=())
    results, output, code, _ = _grade(folder, k="ch01")
    assert "タプルを返すとき" in _messages(results, "1-2") and "ndarray" in _messages(results, "1-2"), output
    assert "return` を書き忘れていませんか" in _messages(results, "1-3"), output
    assert "SystemExit" in _messages(results, "1-4") and "sys.exit()" in _messages(results, "1-4"), output
    assert "コードセルの 3 行目" in _messages(results, "1-4"), output
    assert "Traceback" not in output


def _private(tmp_path, filename, body):
    folder = tmp_path / "private"
    folder.mkdir(exist_ok=True)
    (folder / filename).write_text(body, encoding="utf-8")
    return folder


def test_skipped_xfailed_and_errored_tests_count_as_not_passed(tmp_path):
    private = _private(tmp_path, "test_ch01.py", (  # 隠しテストと同じファイル名でもぶつかりません
        "import pytest\n"
        "def test_ex1_1_skips(exercise):\n    pytest.skip('あとで')\n"
        "@pytest.mark.xfail(reason='わざと')\ndef test_ex1_2_xfails(exercise):\n    assert False\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('準備に失敗')\n"
        "def test_ex1_3_errors(exercise, broken):\n    pass\n"))
    folder = _answers(tmp_path, also=())
    results, output, code, _ = _grade(folder, "--extra-tests", str(private), k="ch01")
    assert code != 0, output
    assert "採点結果: 1 / 4 問 正解" in output, output


def test_k_keeps_private_tests_of_that_chapter_and_seed_is_replayable(tmp_path):
    private = _private(tmp_path, "test_mine.py", (
        "def test_ex1_4_private(exercise, rng):\n"
        "    exercise('1-4', 'standardize_rows')\n"
        "    print('SEED', exercise.seed)\n    assert False, f'seed={exercise.seed}'\n"))
    folder = _answers(tmp_path, also=())
    results, output, code, _ = _grade(folder, "--extra-tests", str(private), "--seed", "12345", k="ch01")
    assert "seed=12345" in _messages(results, "1-4"), output
    assert "採点結果: 3 / 4 問 正解" in output, output
    results, output, code, _ = _grade(folder, "--extra-tests", str(private), k="ch01",
                                      env={"MINI_DL_GRADER_SEED": "777"})
    assert "seed=777" in _messages(results, "1-4"), output


def test_a_wrong_answer_message_can_be_replayed_with_its_seed(tmp_path):
    folder = _answers(tmp_path, replace={"1-3": "def matmul_gflops(m, k, n, seconds):\n    return m * n * k / seconds / 1e9\n"},
                      also=())
    results, output, _, _ = _grade(folder, k="test_ex1_3")
    seed = re.search(r"乱数のシード: (\d+)", _messages(results, "1-3")).group(1)
    again, _, _, _ = _grade(folder, "--seed", seed, k="test_ex1_3")
    first_input = lambda text: re.search(r"入力: .*", text).group(0)  # noqa: E731
    assert first_input(_messages(again, "1-3")) == first_input(_messages(results, "1-3"))


def test_live_grading_runs_in_a_child_and_leaves_the_kernel_alone(tmp_path):
    code = (
        "import sys, numpy as np; sys.path.insert(0, {ex!r})\n"
        "from grader import grade, load_notebook\n"
        "ns, _ = load_notebook({sol!r})\n"
        "def c_strides(shape, itemsize):\n"
        "    np.seterr(all='raise')\n    while True:\n        pass\n"
        "ns['c_strides'] = c_strides\n"
        "before = np.geterr()\n"
        "ok = grade('ch01', ns)\n"
        "print('RESULT', ok, np.geterr() == before)\n"
    ).format(ex=str(EXERCISES), sol=str(SOLUTIONS / "ch01.ipynb"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=EXERCISES, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **FAST})
    assert "RESULT False True" in proc.stdout, proc.stdout + proc.stderr
    assert "いまの定義" in proc.stdout and "秒以内に終わりませんでした" in proc.stdout
    assert "採点結果: 3 / 4 問 正解" in proc.stdout


def test_grade_all_writes_a_csv_of_scores_per_exercise(tmp_path):
    submissions = tmp_path / "submissions"
    good, bad = submissions / "alice", submissions / "bob"
    good.mkdir(parents=True)
    booktools.write_nb(good / "ch01.ipynb", booktools.read_nb(SOLUTIONS / "ch01.ipynb"))
    _answers(tmp_path, replace={"1-2": "def broadcast_shape(a, b):\n    return a\n"}, also=())
    (tmp_path / "answers").rename(bad)
    out = tmp_path / "scores.csv"
    proc = subprocess.run([sys.executable, str(EXERCISES / "grade_all.py"), str(submissions), "--csv", str(out),
                           "-k", "ch01"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **FAST})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import csv
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["student"] for r in rows] == ["alice", "bob"]
    assert rows[0]["total"] == "4" and rows[1]["total"] == "3" and rows[1]["1-2"] == "0" and rows[1]["1-1"] == "1"


def test_ctrl_c_stops_the_run_and_leaves_no_process_behind(tmp_path):
    import signal
    import time
    pidfile = tmp_path / "pid"
    folder = _answers(tmp_path, replace={"1-1": (
        "import os\ndef c_strides(shape, itemsize):\n"
        f"    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "    while True:\n        try:\n            pass\n        except BaseException:\n            pass\n")}, also=())
    cmd = [sys.executable, "-m", "pytest", str(EXERCISES), "-p", "no:cacheprovider", "-q",
           "--answers", str(folder), "-k", "ch01"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MINI_DL_GRADER_TIMEOUT": "600"})
    for _ in range(300):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.1)
    child = int(pidfile.read_text())
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0, output
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_helpers_from_trial_cells_are_treated_the_same_live_and_saved(tmp_path):
    # 練習 1-3 が「試してみる」のセルで定義した helper を使う: どちらの採点でも同じ説明で不合格
    folder = _answers(tmp_path, replace={"1-3": "def matmul_gflops(m, k, n, seconds):\n    return helper(m, k, n, seconds)\n"},
                      insert=[(11, "# 試してみる\ndef helper(m, k, n, seconds):\n    return 2 * m * n * k / seconds / 1e9\n")],
                      also=())
    nb = booktools.read_nb(folder / "ch01.ipynb")
    nb["cells"][11]["metadata"]["tags"] = ["grader-skip"]
    booktools.write_nb(folder / "ch01.ipynb", nb)
    results, output, _, _ = _grade(folder, k="ch01")
    assert "「試してみる」のセル" in _messages(results, "1-3"), output
    assert all(_ok(results, n) for n in ("1-1", "1-2", "1-4")), output
    code = (
        "import sys; sys.path.insert(0, {ex!r})\n"
        "from grader import grade, load_notebook, notebook_cells\n"
        "ns, _ = load_notebook({nb!r})\n"
        "ns['In'] = [src for src, tags in notebook_cells({nb!r})]  # IPython の実行の記録のかわり\n"
        "for src in ns['In']:\n"
        "    if src.startswith('# 試してみる\\ndef helper'): exec(src, ns)\n"
        "print('RESULT', grade('ch01', ns), 'helper' in ns)\n"
    ).format(ex=str(EXERCISES), nb=str(folder / "ch01.ipynb"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=EXERCISES, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **FAST})
    assert "RESULT False True" in proc.stdout, proc.stdout + proc.stderr
    assert "「試してみる」のセル" in proc.stdout and "採点結果: 3 / 4 問 正解" in proc.stdout, proc.stdout


def test_escaping_exceptions_and_a_closed_pipe_fail_only_that_test(tmp_path):
    private = _private(tmp_path, "test_odd.py", (
        "import os, pytest\n"
        "def test_ex1_1_exit(exercise):\n    pytest.exit('おしまい')\n"
        "def test_ex1_2_closes_the_pipe(exercise):\n    os.closerange(3, 4096)\n    while True:\n        pass\n"))
    folder = _answers(tmp_path, also=())
    results, output, code, elapsed = _grade(folder, "--extra-tests", str(private), k="ch01")
    assert code != 0 and elapsed < 60, output
    assert "Exit: おしまい" in _messages(results, "1-1"), output
    assert "パイプを閉じて" in _messages(results, "1-2"), output
    assert "採点結果: 2 / 4 問 正解" in output, output


# ---------------------------------------------------------------- 本文が決めた規則・辺の入力（issue 10 の 6）
#
# 出力だけでは見分けられない間違い（計算せずに読む・数値微分・出力を使い直さない・式で済ませる・ライブラリに任せる・
# データのループ）と、配列を返す backward・同点・行ごとの最大値を、書き込んだ答えで確かめます。

_WRONG = {
    "1-1 strides": ("ch01", "1-1", "import numpy as np\ndef c_strides(shape, itemsize):\n"
                    "    return np.empty(shape, dtype=f'V{itemsize}').strides\n", "`.strides` を読んでいます"),
    "1-2 message": ("ch01", "1-2", "def broadcast_shape(shape_a, shape_b):\n    n = max(len(shape_a), len(shape_b))\n"
                    "    a = (1,) * (n - len(shape_a)) + tuple(shape_a)\n    b = (1,) * (n - len(shape_b)) + tuple(shape_b)\n"
                    "    for p, q in zip(a, b):\n        if p != q and 1 not in (p, q):\n"
                    "            raise ValueError('ブロードキャストできません')\n"
                    "    return tuple(q if p == 1 else p for p, q in zip(a, b))\n", "2 つの shape が書かれていません"),
    "2-3 numerical": ("ch02", "2-3", "def sigmoid_grad(x):\n    s = lambda v: 1 / (1 + np.exp(-v))\n"
                      "    return ((s(x + 1e-5) - s(x - 1e-5)) / 2e-5).astype(x.dtype)\n", "数値微分"),
    "3-2 recompute": ("ch03", "3-2", "class Tanh(Function):\n    def forward(self, x):\n        return np.tanh(x)\n\n"
                      "    def backward(self, gy):\n        return (1 - np.tanh(self.input.data) ** 2) * gy\n",
                      "tanh をもう一度計算しています"),
    "3-4 verdict": ("ch03", "3-4", "def check_backward(function_class, x, eps=1e-4):\n    f = function_class()\n"
                    "    f(Variable(x))\n    gy = np.random.default_rng(0).uniform(0.5, 1.5, size=x.shape)\n"
                    "    numerical = numerical_diff(lambda v: function_class()(Variable(v)).data, x, eps)\n"
                    "    return bool(np.allclose(f.backward(gy), numerical, rtol=1e-5, atol=1e-7))\n",
                    "の backward は正しいので True が正解です"),
    "6-4 ties": ("ch06", "6-4", "class Maximum(Function):\n    def forward(self, x0, x1):\n        return np.maximum(x0, x1)\n\n"
                 "    def backward(self, gy):\n        x0, x1 = self.inputs\n        mask = (x0.data > x1.data).astype(gy.dtype)\n"
                 "        return sum_to(gy * mask, x0.shape), sum_to(gy * (1 - mask), x1.shape)\n\n\n"
                 "def maximum(x0, x1):\n    return Maximum()(*as_operands(x0, x1))\n", "同じ値のところでは"),
    "7-2 arrays": ("ch07", "7-2", "def newton_minimize(f, x0, steps):\n    x = Variable(np.array(x0, dtype=np.float64))\n"
                   "    history = [x.data.copy()]\n    for _ in range(steps):\n        x.cleargrad()\n"
                   "        f(x).backward(create_graph=True)\n        gx = x.grad\n        x.cleargrad()\n        gx.backward()\n"
                   "        x.data = x.data - gx.data / x.grad.data\n        history.append(x.data.copy())\n    return history\n",
                   "Python の数値（float）を入れてください"),
    "7-3 formula": ("ch07", "7-3", "def gradient_penalty(f, x):\n    x = Variable(np.asarray(x))\n    y = f(x)\n"
                    "    y.grad = Variable(np.ones_like(y.data))\n    y.backward(create_graph=True)\n    gx = x.grad\n"
                    "    x.cleargrad()\n    gx.grad = Variable(np.ones_like(gx.data))\n    gx.backward()\n"
                    "    return 2 * gx.data * x.grad.data\n", "(df/dx)^2 を逆伝播していません"),
    "8-1 ndarray": ("ch08", "8-1", "class Flatten(Function):\n    def forward(self, x):\n        return x.reshape(x.shape[0], -1)\n\n"
                    "    def backward(self, gy):\n        return gy.data.reshape(self.inputs[0].shape)\n\n\n"
                    "def flatten(x):\n    return Flatten()(x)\n", "backward は Variable を返してください"),
    "8-4 delegate": ("ch08", "8-4", "from mini_dl.functions.tensor import GetItemGrad\n\n\nclass EmbedID(Function):\n"
                     "    def __init__(self, ids):\n        self.ids = ids\n\n    def forward(self, W):\n        return W[self.ids]\n\n"
                     "    def backward(self, gy):\n        return GetItemGrad(self.ids, self.inputs[0].shape)(gy)\n",
                     "GetItemGrad に計算を任せています"),
    "8-5 global max": ("ch08", "8-5", "def logsumexp(x, axis=-1):\n    m = F.max(x)\n"
                       "    return F.log(F.sum(F.exp(x - m), axis=axis)) + m\n", "軸ごとに F.max"),
    "11-5 loop": ("ch11", "11-5", "def top_k_accuracy(y, t, k):\n    s = y.data if isinstance(y, Variable) else np.asarray(y)\n"
                  "    return float(np.mean([ti in np.argsort(r)[-k:] for r, ti in zip(s, t)]))\n",
                  "データについての Python のループ"),
}

_VALID = {
    "1-1 cumprod": ("ch01", "1-1", "import numpy as np\ndef c_strides(shape, itemsize):\n    if not shape:\n        return ()\n"
                    "    after = np.cumprod((tuple(shape[1:]) + (1,))[::-1])[::-1]\n"
                    "    return tuple(int(v) * itemsize for v in after)\nprint(c_strides((3, 4), 4))\n"),
    "1-2 lists": ("ch01", "1-2", "def broadcast_shape(shape_a, shape_b):\n    n = max(len(shape_a), len(shape_b))\n"
                  "    a = [1] * (n - len(shape_a)) + list(shape_a)\n    b = [1] * (n - len(shape_b)) + list(shape_b)\n"
                  "    if any(p != q and 1 not in (p, q) for p, q in zip(a, b)):\n"
                  "        raise ValueError('x'.join(map(str, shape_a)) + ' vs ' + 'x'.join(map(str, shape_b)))\n"
                  "    return tuple(q if p == 1 else p for p, q in zip(a, b))\n"),
    "3-2 attribute": ("ch03", "3-2", "class Tanh(Function):\n    def forward(self, x):\n        self.out = np.tanh(x)\n"
                      "        return self.out\n\n    def backward(self, gy):\n        return gy - gy * self.out * self.out\n"),
    "7-3 sum": ("ch07", "7-3", "def gradient_penalty(f, x):\n    x = Variable(np.asarray(x))\n    F.sum(f(x)).backward(create_graph=True)\n"
                "    gx = x.grad\n    x.cleargrad()\n    F.sum(gx * gx).backward()\n    return x.grad.data\n"),
    "8-3 transpose": ("ch08", "8-3", "class Swapaxes(Function):\n    def __init__(self, axis1, axis2):\n"
                      "        self.axis1, self.axis2 = axis1, axis2\n\n    def forward(self, x):\n"
                      "        return np.swapaxes(x, self.axis1, self.axis2)\n\n    def backward(self, gy):\n"
                      "        axes = list(range(gy.ndim))\n        a, b = self.axis1 % gy.ndim, self.axis2 % gy.ndim\n"
                      "        axes[a], axes[b] = axes[b], axes[a]\n        return F.transpose(gy, axes)\n\n\n"
                      "def swapaxes(x, axis1, axis2):\n    return Swapaxes(axis1, axis2)(x)\n"),
    "11-5 loop over k": ("ch11", "11-5", "def top_k_accuracy(y, t, k):\n    s = np.asarray(y.data if isinstance(y, Variable) else y)\n"
                         "    order = np.argsort(-s, axis=1)\n    hit = np.zeros(len(s), dtype=bool)\n"
                         "    for j in range(k):\n        hit |= order[:, j] == np.asarray(t)\n    return float(hit.mean())\n"),
}


def _by_chapter(cases):
    chapters = {}
    for case in cases.values():
        chapters.setdefault(case[0], []).append(case[1:])
    return chapters


@pytest.mark.parametrize("ch", sorted(_by_chapter(_WRONG)))
def test_rules_the_text_states_are_enforced_with_a_hint(tmp_path, ch):
    cases = _by_chapter(_WRONG)[ch]  # 同じ章の間違いは 1 つのノートブックに書き込んで、1 回で採点します
    folder = _answers(tmp_path, ch=ch, replace={number: code for number, code, _ in cases}, also=())
    results, output, _, _ = _grade(folder, k=" or ".join(f"test_ex{n.replace('-', '_')}_" for n, _, _ in cases))
    for number, _, hint in cases:
        assert number in results and not _ok(results, number), output
        assert hint in _messages(results, number), output


@pytest.mark.parametrize("ch", sorted(_by_chapter(_VALID)))
def test_valid_answers_written_differently_are_accepted(tmp_path, ch):
    cases = _by_chapter(_VALID)[ch]
    folder = _answers(tmp_path, ch=ch, replace=dict(cases), also=())
    results, output, _, _ = _grade(folder, k=" or ".join(f"test_ex{n.replace('-', '_')}_" for n, _ in cases))
    for number, _ in cases:
        assert _ok(results, number), output
