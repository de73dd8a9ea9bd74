"""提出物のフォルダをまとめて採点し、練習ごとの得点を CSV に書きます（先生向け）。

使い方（リポジトリの直下で）::

    .venv/bin/python exercises/grade_all.py SUBMISSIONS_DIR --csv scores.csv
    .venv/bin/python exercises/grade_all.py SUBMISSIONS_DIR --csv scores.csv --extra-tests private/ -k ch03

``SUBMISSIONS_DIR`` の下のフォルダ 1 つが 1 人分の提出物です（中に ``chNN.ipynb``）。1 人ずつ別の
``pytest exercises/ --answers フォルダ`` で採点し、CSV には 1 行に 1 人、練習ごとに 1（正解）か
0（不正解・未提出・採点できなかった）と、合計を書きます。
"""
import argparse
import csv
import pathlib
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

EXERCISES_DIR = pathlib.Path(__file__).resolve().parent
ROOT = EXERCISES_DIR.parent
sys.path.insert(0, str(EXERCISES_DIR))
import grader  # noqa: E402

TEST_RE = re.compile(r"test_ex(\d+)_(\d+)(?:_|$|\[)")


def _number_key(number):
    return tuple(int(p) for p in number.split("-"))


def grade_one(folder, pytest_args=(), timeout=3600):
    """1 人分のフォルダを採点し、``({練習番号: 合否}, pytest の終了コード)`` を返します。"""
    with tempfile.TemporaryDirectory() as tmp:
        xml = pathlib.Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", str(EXERCISES_DIR), "--answers", str(folder), "-q",
               "-p", "no:cacheprovider", f"--junitxml={xml}", *pytest_args]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            return {}, "timeout"
        if not xml.exists():
            return {}, code
        passed = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            m = TEST_RE.match(case.get("name", ""))
            if m is None:
                continue
            number = f"{m.group(1)}-{m.group(2)}"
            bad = any(case.find(tag) is not None for tag in ("failure", "error", "skipped"))
            passed[number] = passed.get(number, True) and not bad
        return passed, code


def main(argv=None):
    parser = argparse.ArgumentParser(description="提出物のフォルダをまとめて採点し、CSV に書きます。")
    parser.add_argument("submissions", help="1 人 1 フォルダの提出物が入ったフォルダ")
    parser.add_argument("--csv", required=True, help="書き出す CSV のパス")
    parser.add_argument("--extra-tests", default=None, help="先生の非公開テストのフォルダ")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest の -k（例: ch03）")
    parser.add_argument("--seed", default=None, help="全員を同じ乱数のシードで採点します")
    args = parser.parse_args(argv)

    root = pathlib.Path(args.submissions).resolve()
    students = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        parser.error(f"{root} の下に提出物のフォルダがありません")
    pytest_args = []
    if args.extra_tests:
        pytest_args += ["--extra-tests", str(pathlib.Path(args.extra_tests).resolve())]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.seed is not None:
        pytest_args += ["--seed", str(args.seed)]

    # 列: 配布した練習のノートブックにある練習（-k で章を選んだときはその章だけ）と、テストのあった練習
    columns = set()
    for path in sorted(EXERCISES_DIR.glob("ch[0-9][0-9].ipynb")):
        if args.keyword is None or re.fullmatch(r"ch\d\d", args.keyword) is None or path.stem == args.keyword:
            columns.update(grader.answer_cells(path))
    rows = []
    for folder in students:
        passed, code = grade_one(folder, pytest_args)
        columns.update(passed)
        rows.append((folder.name, passed, code))
        print(f"{folder.name}: {sum(passed.values())} / {len(columns)} 問 正解", flush=True)
    columns = sorted(columns, key=_number_key)

    out = pathlib.Path(args.csv)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", *columns, "total", "note"])
        for name, passed, code in rows:
            marks = [int(passed.get(number, False)) for number in columns]
            note = "" if code in (0, 1) else f"pytest の終了コード {code}"
            writer.writerow([name, *marks, sum(marks), note])
    print(f"{len(rows)} 人分を {out} に書きました。")
    return 0


if __name__ == "__main__":
    sys.exit(main())
