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
