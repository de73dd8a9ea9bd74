"""本のノートブックを扱う小さな道具（テストと執筆の両方で使います）。

    python tests/booktools.py setup-cells             # 各ノートブックの先頭セル（Colab 用）を書き直す
    python tests/booktools.py run book/chNN_xxx.ipynb  # 章を上から実行し、同じ書式で保存する

リポジトリの URL は ``_config.yml`` の ``repository.url`` にだけ書き、
ノートブックの先頭セルはそこから作ります。
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETUP_TAG = "colab-setup"


def repo_url():
    """``_config.yml`` の ``repository.url`` を返します。"""
    text = (ROOT / "_config.yml").read_text(encoding="utf-8")
    m = re.search(r"^repository:\s*\n(?:\s+.*\n)*?\s+url:\s*(\S+)", text, flags=re.M)
    if m is None:
        raise RuntimeError("_config.yml に repository.url がありません")
    return m.group(1)


def toc_pages():
    """``_toc.yml`` に載っているページ（ノートブックと .md）のパスを順に返します。"""
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    pages = []
    for name in re.findall(r"(?:file|root):\s*([^\s#]+)", toc):
        p = ROOT / name
        if not p.suffix:
            p = p.with_suffix(".ipynb") if p.with_suffix(".ipynb").exists() else p.with_suffix(".md")
        pages.append(p)
    return pages


def toc_notebooks():
    """``_toc.yml`` に載っているノートブックのパスを順に返します（md のページは除きます）。"""
    return [p for p in toc_pages() if p.suffix == ".ipynb"]


def exercise_notebooks(folder="exercises"):
    return sorted((ROOT / folder).glob("ch[0-9][0-9].ipynb"))


def setup_source(kind):
    """Colab のときだけ動く先頭セルのソース。``kind`` は ``"book"`` か ``"exercise"``。"""
    url = repo_url()
    if kind == "book":
        return (
            "# Google Colab で開いたときだけ mini_dl をインストールします（手元の Jupyter では何もしません）。\n"
            "import sys\n"
            "\n"
            'if "google.colab" in sys.modules:\n'
            "    import subprocess\n"
            "\n"
            '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
            f'                    "mini_dl[notebook] @ git+{url}"], check=True)'
        )
    if kind == "exercise":
        return (
            "# Google Colab で開いたときだけ、リポジトリ（採点器と隠しテスト入り）を用意します。\n"
            "# 手元の Jupyter では何もしません。\n"
            "import sys\n"
            "\n"
            'if "google.colab" in sys.modules:\n'
            "    import os\n"
            "    import subprocess\n"
            "\n"
            '    if not os.path.isdir("/content/mini_dl"):\n'
            f'        subprocess.run(["git", "clone", "-q", "{url}", "/content/mini_dl"], check=True)\n'
            '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/mini_dl[test]"],\n'
            "                   check=True)\n"
            '    sys.path.insert(0, "/content/mini_dl/exercises")'
        )
    raise ValueError(kind)


def read_nb(path):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def write_nb(path, nb):
    """nbformat と同じ書式（ソースは行のリスト、キーは整列）で保存します。"""
    for cell in nb["cells"]:
        if isinstance(cell["source"], str):
            cell["source"] = cell["source"].splitlines(keepends=True)
    text = json.dumps(nb, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    pathlib.Path(path).write_text(text, encoding="utf-8")


def cell_source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def set_setup_cell(path, kind):
    """先頭のコードセルを Colab 用のセルにします（無ければ先頭に足します）。"""
    nb = read_nb(path)
    source = setup_source(kind)
    # 本の HTML には出さず（remove-cell）、採点器は実行しません（grader-skip）
    tags = [SETUP_TAG] + (["grader-skip"] if kind == "exercise" else ["remove-cell"])
    first = nb["cells"][0] if nb["cells"] else None
    if first is not None and first["cell_type"] == "code" and SETUP_TAG in first["metadata"].get("tags", []):
        first["source"] = source
        first["metadata"]["tags"] = tags
    else:
        nb["cells"].insert(0, {
            "cell_type": "code", "execution_count": None, "id": "colab-setup", "metadata": {"tags": tags},
            "outputs": [], "source": source,
        })
    write_nb(path, nb)


def run(path, timeout=600):
    """ノートブックを上から実行し（作業フォルダはノートブックのあるフォルダ）、``write_nb`` の書式で保存します。"""
    import nbclient
    import nbformat

    path = pathlib.Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    write_nb(path, json.loads(nbformat.writes(nb)))


def main(argv):
    if argv[:1] == ["run"] and len(argv) > 1:
        for p in argv[1:]:
            run(p)
            print(f"実行して保存しました: {p}")
        return 0
    if argv[:1] == ["setup-cells"]:
        for p in toc_notebooks():
            set_setup_cell(p, "book")
        for folder in ("exercises", "solutions"):
            for p in exercise_notebooks(folder):
                set_setup_cell(p, "exercise")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
