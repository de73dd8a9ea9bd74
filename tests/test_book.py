"""本の形のチェック: 目次・Colab のセル・実行済みで保存・日本語の図・設定。"""
import pathlib
import re

import pytest

import booktools

ROOT = booktools.ROOT
NOTEBOOKS = booktools.toc_notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def test_toc_lists_every_chapter_notebook_and_they_exist():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = re.findall(r"(?:file|root):\s*([^\s#]+)", toc)
    for name in listed:
        p = ROOT / name
        assert p.with_suffix(".ipynb").exists() or p.with_suffix(".md").exists(), f"{name} がありません"
    on_disk = {p.resolve() for p in (ROOT / "book").glob("*.ipynb")}
    assert on_disk == {p.resolve() for p in NOTEBOOKS}, "book/ のノートブックと _toc.yml が一致しません"
    assert len(NOTEBOOKS) >= 4


def test_config_is_japanese_offline_and_strict():
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s+language:\s*ja\s*$", config, flags=re.M)
    assert re.search(r'execute_notebooks:\s*"?off"?', config)
    assert "only_build_toc_files: true" in config
    assert booktools.repo_url().startswith("https://github.com/")
    assert "colab_url" in config
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "jupyter-book build . -W" in readme, "本のビルドは警告をエラーとして扱います"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_cell_installs_mini_dl_only_in_colab(path):
    first = booktools.read_nb(path)["cells"][0]
    assert first["cell_type"] == "code"
    assert booktools.cell_source(first) == booktools.setup_source("book"), (
        f"{path.name}: 先頭セルは `python tests/booktools.py setup-cells` で作ります")
    assert booktools.SETUP_TAG in first["metadata"].get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_executed_top_to_bottom(path):
    nb = booktools.read_nb(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    counts = [c["execution_count"] for c in nb["cells"]
              if c["cell_type"] == "code" and booktools.cell_source(c).strip()]
    assert None not in counts, f"{path.name}: 未実行のセルがあります"
    assert counts == sorted(counts), f"{path.name}: 上から順に実行して保存してください"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_outputs_have_no_errors_glyph_warnings_or_object_reprs(path):
    for i, cell in enumerate(booktools.read_nb(path)["cells"]):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name} のセル {i} がエラーで終わっています"
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            assert "Glyph" not in text and "missing from font" not in text, f"{path.name} のセル {i}: 豆腐"
            assert not re.search(r"<matplotlib\.\w+.* at 0x", text), (
                f"{path.name} のセル {i}: 図のセルは plt.show() で終えます")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_chapter_structure(path):
    nb = booktools.read_nb(path)
    md = "\n".join(booktools.cell_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    titles = re.findall(r"^# (.+)$", md, flags=re.M)
    assert len(titles) == 1 and titles[0].startswith("第"), f"{path.name}: 章の題は 1 つだけ: {titles}"
    if path.stem != "ch00_introduction":
        for section in ("学習目標", "まとめ", "練習問題", "参考文献"):
            assert re.search(rf"^##+ .*{section}", md, flags=re.M), f"{path.name}: 「{section}」の節がありません"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_plots_use_japanese_font(path):
    nb = booktools.read_nb(path)
    has_png = any("image/png" in out.get("data", {}) for c in nb["cells"] for out in c.get("outputs", []))
    code = "\n".join(booktools.cell_source(c) for c in nb["cells"] if c["cell_type"] == "code")
    if has_png:
        assert "import matplotlib_fontja" in code, f"{path.name}: 図の日本語には matplotlib_fontja を使います"


def test_book_builds_without_warnings(tmp_path):
    """README の本を作るコマンドと同じ設定（警告はエラー）で、本が作れることを確かめます。"""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("jupyter-book", path=str(pathlib.Path(sys.executable).parent))
    assert exe, "jupyter-book がインストールされていません（pip install -e \".[test]\"）"
    proc = subprocess.run([exe, "build", str(ROOT), "--path-output", str(tmp_path), "-W", "--keep-going"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    pages = {p.name for p in (html / "book").glob("*.html")}
    assert {f"{p.stem}.html" for p in NOTEBOOKS} <= pages
    assert (html / "searchindex.js").exists()
