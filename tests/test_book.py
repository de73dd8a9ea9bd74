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


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """README の本を作るコマンドと同じ設定（警告はエラー）で本を 1 回だけ作り、(結果, html のフォルダ) を返します。"""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("jupyter-book", path=str(pathlib.Path(sys.executable).parent))
    assert exe, "jupyter-book がインストールされていません（pip install -e \".[test]\"）"
    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run([exe, "build", str(ROOT), "--path-output", str(out), "-W", "--keep-going"],
                          capture_output=True, text=True, timeout=600)
    return proc, out / "_build" / "html"


@pytest.fixture(scope="module")
def html(built_book):
    """作った本の HTML のフォルダ（作れなかったら、そのテストも失敗にします）。"""
    proc, folder = built_book
    assert proc.returncode == 0, "本を作れませんでした: " + proc.stdout[-2000:] + proc.stderr[-2000:]
    return folder


def test_book_builds_without_warnings(built_book):
    """README の本を作るコマンドと同じ設定（警告はエラー）で、本が作れることを確かめます。"""
    proc, html = built_book
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    pages = {p.name for p in (html / "book").glob("*.html")}
    assert {f"{p.stem}.html" for p in NOTEBOOKS} <= pages
    assert (html / "searchindex.js").exists()


# ---- オフラインで読める本（数式・ウィジェット・検索・リンク・アンカー） ----

def _config():
    import yaml

    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def _pages(html):
    return sorted(html.rglob("*.html"))


def _article_text(page):
    """ページの本文（左右の目次を除く）の文字。検索の索引に入る部分です。"""
    import html as html_lib

    text = page.read_text(encoding="utf-8")
    m = re.search(r'<article class="bd-article"[^>]*>(.*?)</article>', text, flags=re.S)
    if not m:
        return ""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", m.group(1), flags=re.S)
    return html_lib.unescape(re.sub(r"<[^>]+>", "", body))


def test_built_pages_load_nothing_from_the_network(html):
    """どのページも、スクリプト・スタイル・フォントを CDN から読みません（オフラインで表示できる）。"""
    tag = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"", flags=re.I)
    found = {f"{p.relative_to(html)}: {url}" for p in _pages(html)
             for url in tag.findall(p.read_text(encoding="utf-8"))}
    assert not found, "ネットワークから読み込むタグがあります:\n" + "\n".join(sorted(found)[:20])


def test_mathjax_and_widget_scripts_are_vendored(html):
    """MathJax・require.js・HTML ウィジェットマネージャは _vendor/ の写しを _static/ から読みます。"""
    cfg = _config()["sphinx"]["config"]
    assert "_vendor" in cfg["html_static_path"]
    vendored = [cfg["mathjax_path"], *cfg["nb_ipywidgets_js"]]
    assert len(vendored) == 3
    for rel in vendored:
        assert "://" not in rel, f"{rel}: CDN ではなく _vendor/ の写しを使います"
        assert (ROOT / "_vendor" / rel).is_file(), f"_vendor/{rel} がありません"
        assert (html / "_static" / rel).is_file(), f"_build/html/_static/{rel} にコピーされていません"
    readme = (ROOT / "_vendor" / "README.md").read_text(encoding="utf-8")
    for name, license in [("mathjax", "Apache-2.0"), ("requirejs", "MIT"),
                          ("@jupyter-widgets/html-manager", "BSD-3-Clause")]:
        assert f"`{name}`" in readme and license in readme, f"_vendor/README.md に {name} の版とライセンスを書きます"
    math_pages = widget_pages = 0
    for page in _pages(html):
        text = page.read_text(encoding="utf-8")
        if 'class="math' in text:
            math_pages += 1
            assert re.search(r'<script[^>]*src="[./]*_static/' + re.escape(cfg["mathjax_path"]), text), (
                f"{page.name}: 数式があるのに、_vendor の MathJax を読み込んでいません")
        if "application/vnd.jupyter.widget-state+json" in text:
            widget_pages += 1
            for rel in cfg["nb_ipywidgets_js"]:
                assert re.search(r'<script[^>]*src="[./]*_static/' + re.escape(rel), text), (
                    f"{page.name}: ウィジェットがあるのに {rel} を読み込んでいません")
    assert math_pages >= 10 and widget_pages >= 5


def _sphinx_search(index, words):
    """searchtools.js の performTermsSearch と同じ規則で、語をすべて含むページの名前を返します。

    語ごとに索引の完全一致（本文と見出し）、3 文字以上なら部分一致も拾い、すべての語（または
    3 文字以上の語すべて）に当たったページだけを残します。
    """
    def as_list(v):
        return [] if v is None else [v] if isinstance(v, int) else v

    hits = {}
    for word in set(words):
        files = set()
        for table in (index["terms"], index["titleterms"]):
            files |= set(as_list(table.get(word)))
            if len(word) > 2 and word not in table:
                for term, v in table.items():
                    if word in term:
                        files |= set(as_list(v))
        for f in files:
            hits.setdefault(f, set()).add(word)
    need = {len(set(words)), len([w for w in set(words) if len(w) > 2])}
    return {index["docnames"][f] for f, ws in hits.items() if len(ws) in need}


def test_search_finds_every_page_containing_a_term(html):
    """「逆伝播」などで検索すると、その語を本文に含むページがすべて見つかります。

    索引（searchindex.js）と、ブラウザの検索語の区切り方（language_data.js に入る splitQuery と
    同じ規則の book_ext.query_terms）から、Sphinx の検索と同じ手順で結果を求めます。
    """
    import json
    import sys

    sys.path.insert(0, str(ROOT / "_ext"))
    import book_ext

    raw = (html / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(raw[raw.index("(") + 1: raw.rindex(")")])
    language_data = (html / "_static" / "language_data.js").read_text(encoding="utf-8")
    assert book_ext.JS_SPLITTER.strip() in language_data, "ブラウザ側の検索語の区切り方が入っていません"
    texts = {str(p.relative_to(html).with_suffix("")): _article_text(p) for p in _pages(html)}
    for term in ["逆伝播", "勾配確認", "計算グラフ", "ブロードキャスト", "層", "backward", "float32"]:
        expected = {doc for doc, text in texts.items() if term.lower() in text.lower()}
        assert expected, f"{term} を含むページがありません（テストの語を選び直してください）"
        found = _sphinx_search(index, [w.lower() for w in book_ext.query_terms(term)])
        assert expected <= found, f"「{term}」で見つからないページ: {sorted(expected - found)}"
    assert len({doc for doc, text in texts.items() if "逆伝播" in text}) >= 12


def test_js_and_python_split_queries_the_same_way():
    """ブラウザの splitQuery（JavaScript）と book_ext.query_terms が同じ語に区切ります（node があるとき）。"""
    import json
    import shutil
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "_ext"))
    import book_ext

    node = shutil.which("node")
    if not node:
        pytest.skip("node がありません")
    samples = ["逆伝播", "誤差逆伝播法で勾配を求める", "Variable の backward()", "float32 のまま",
               "ニューラルネットワーク・MLP", "層", "x.grad と y_1", "ＧＰＵで計算"]
    script = book_ext.JS_SPLITTER + f"\nconsole.log(JSON.stringify({json.dumps(samples)}.map(splitQuery)));"
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [book_ext.query_terms(s) for s in samples]


def test_reference_urls_become_links_but_file_names_do_not(html):
    """本文の URL はリンクになり、mini_dl/core.py や README.md のようなファイル名はリンクになりません。"""
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    cfg = _config()
    assert "linkify" in cfg["parse"]["myst_enable_extensions"]
    assert cfg["sphinx"]["config"]["myst_linkify_fuzzy_links"] is False
    md = create_md_parser(MdParserConfig(enable_extensions={"linkify"}, linkify_fuzzy_links=False), RendererHTML)
    out = md.render("詳しくは https://d2l.ai を。実装は mini_dl/core.py と README.md、numpy.org です。")
    assert '<a href="https://d2l.ai">' in out
    assert out.count("<a ") == 1, out
    n_links = 0
    for page in _pages(html):
        text = page.read_text(encoding="utf-8")
        hrefs = re.findall(r'<a\b[^>]*href="(https?://[^"]*)"', text)
        bad = [h for h in hrefs if re.search(r"//(mini_dl|readme\.md|[\w-]+\.(py|ipynb))\b", h, flags=re.I)]
        assert not bad, f"{page.name}: ファイル名がリンクになっています: {bad}"
        # 本文（コード・出力・リンクの外）に、リンクになっていない URL が残っていないこと
        m = re.search(r'<article class="bd-article"[^>]*>(.*?)</article>', text, flags=re.S)
        prose = re.sub(r"<(script|style|pre|code|a)\b.*?</\1>", " ", m.group(1) if m else "", flags=re.S)
        bare = re.findall(r"https?://[^\s<>\"）」]+", re.sub(r"<[^>]+>", " ", prose))
        assert not bare, f"{page.name}: リンクになっていない URL: {bare[:5]}"
        n_links += len(re.findall(r'<a class="reference external" href="https?://', text))
    assert n_links >= 20, f"本文の URL のリンクが {n_links} 個しかありません"


def test_section_anchors_are_readable(html):
    """節のアンカーは見出しの語（日本語のまま）で、#id2 のような番号ではありません。"""
    for path in NOTEBOOKS:
        text = (html / "book" / f"{path.stem}.html").read_text(encoding="utf-8")
        numbered = re.findall(r'<section id="(id\d+)"', text)
        assert not numbered, f"{path.name}: 番号だけのアンカー {numbered}"
        ids = set(re.findall(r'\bid="([^"]+)"', text))
        for target in re.findall(r'<a class="reference internal nav-link" href="#([^"]+)"', text):
            assert target in ids, f"{path.name}: ページ内の目次のリンク #{target} の行き先がありません"
    ch04 = (html / "book" / "ch04_backprop.html").read_text(encoding="utf-8")
    assert '<section id="学習目標">' in ch04


def test_readme_reading_instructions_match_the_built_book(html):
    """README の「本を読む」に書いたファイルとアンカーが、作った本に実際にあります。"""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## 本を読む", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`_build/html/([^`#]+)`", section)
    assert "index.html" in paths and "book/index.html" in paths
    for rel in paths:
        assert (html / rel).is_file(), f"README の _build/html/{rel} が、作った本にありません"
    for page, anchor in re.findall(r"`(book/[\w.]+\.html)#([^`]+)`", section):
        text = (html / page).read_text(encoding="utf-8")
        assert f'id="{anchor}"' in text, f"README のアンカー {page}#{anchor} が、作った本にありません"
    assert "offline_check.py" in section and (ROOT / "tests" / "offline_check.py").is_file()
    assert "検索" in section and "Ctrl" in section


# ---- ウィジェットの静止画と、セルの 3 種類のラベル ----

def _has_png(cell):
    return cell["cell_type"] == "code" and any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_widget_has_a_static_picture(path):
    """``interact(`` を呼ぶセルのあと 2 つ以内に、同じ関数を直接呼んだ静止画（image/png）のセルがあります。

    HTML や GitHub で読む人は、カーネルが無くても結果の図を見られます。
    """
    cells = booktools.read_nb(path)["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and "interact(" in booktools.cell_source(cell):
            assert any(_has_png(c) for c in cells[i + 1:i + 3]), (
                f"{path.name} のセル {i}: ウィジェットのあと 2 つ以内に、静止画のセルがありません")


SAME_AS_PACKAGE = re.compile(r"^# (mini_dl/[\w/]+\.py(?:・mini_dl/[\w/]+\.py)*) と同じ（完成形）$")
DRAFT_LABEL = re.compile(r"^# 下書き（(draft|この章の完成形)）: \S")
# セルの 3 種類のラベル（下書き・この章の完成形・パッケージと同じ）・ウィジェットの説明・図の補助関数の畳み方は、
# 本のすべての章（NOTEBOOKS）で確かめます


def _code_cells_with_definitions(path):
    """(番号, セル, 1 行目, トップレベルの定義 [(名前, ソース)]) を返します（定義の読み方は tests/mirror.py と同じ）。"""
    import ast

    import mirror

    for i, cell in enumerate(booktools.read_nb(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = booktools.cell_source(cell)
        text = mirror._strip_magics(source)
        try:
            defs = list(mirror._top_level(ast.parse(text), text))
        except SyntaxError:
            defs = []
        yield i, cell, source.lstrip("\n").split("\n", 1)[0], defs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_cell_labels_are_one_of_three_kinds_and_true(path):
    """下書きは「# 下書き（draft）: …」か「# 下書き（この章の完成形）: …」で始め、
    「# mini_dl/… と同じ（完成形）」と書いたセルの定義は、そのファイルの定義と一字一句同じです。"""
    import ast

    import mirror

    for i, _, first, defs in _code_cells_with_definitions(path):
        if mirror.DRAFT_RE.match(first):
            assert DRAFT_LABEL.match(first), (
                f"{path.name} のセル {i}: 下書きの 1 行目は「# 下書き（draft）: …」か"
                f"「# 下書き（この章の完成形）: …」です: {first}")
        m = SAME_AS_PACKAGE.match(first)
        if not m:
            continue
        assert defs, f"{path.name} のセル {i}: 「と同じ（完成形）」のセルに定義がありません"
        package = {}
        for rel in m.group(1).split("・"):
            file = ROOT / rel
            assert file.is_file(), f"{path.name} のセル {i}: {rel} がありません"
            text = file.read_text(encoding="utf-8")
            package.update(mirror._top_level(ast.parse(text), text))
        for name, source in defs:
            assert package.get(name) == source, (
                f"{path.name} のセル {i}: {name} が {m.group(1)} の定義と一字一句同じではありません")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_package_definition_cell_carries_a_label(path):
    """パッケージと同じ名前を定義するセルは、3 種類のどれかのラベルで始まります。
    「この章の完成形」のセルは、直前の説明の文にも「この章の完成形」と書きます。"""
    import mirror

    names = {d.name for d in mirror.package_definitions()}
    cells = booktools.read_nb(path)["cells"]
    for i, _, first, defs in _code_cells_with_definitions(path):
        if not any(name in names for name, _ in defs):
            continue
        assert DRAFT_LABEL.match(first) or SAME_AS_PACKAGE.match(first), (
            f"{path.name} のセル {i}: 1 行目に「# 下書き（draft）: …」「# 下書き（この章の完成形）: …」"
            f"「# mini_dl/… と同じ（完成形）」のどれかを書きます: {first}")
        if first.startswith("# 下書き（この章の完成形）"):
            prose = next(booktools.cell_source(c) for c in reversed(cells[:i]) if c["cell_type"] == "markdown")
            assert "この章の完成形" in prose, f"{path.name} のセル {i}: 直前の説明に「この章の完成形」とありません"


WIDGET_NOTE = "（ウィジェットは Jupyter か Colab で動かせます。HTML の本では、下の 1 枚目の図がウィジェットと同じ設定の結果です。）"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_widget_note_is_the_same_everywhere(path):
    """ウィジェットの直前の説明は、どの章でも同じ言い方で、HTML の本では静止画を見ることを伝えます。"""
    cells = booktools.read_nb(path)["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and "interact(" in booktools.cell_source(cell):
            prose = next(booktools.cell_source(c) for c in reversed(cells[:i]) if c["cell_type"] == "markdown")
            assert WIDGET_NOTE in prose, f"{path.name} のセル {i}: ウィジェットの前の説明に「{WIDGET_NOTE}」がありません"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_drawing_helpers_are_folded(path):
    """図のためだけの補助関数（``draw_…``）を定義するセルは、タグ ``hide-input`` で畳みます（ウィジェットのセルは除く）。"""
    import ast

    for i, cell in enumerate(booktools.read_nb(path)["cells"]):
        source = booktools.cell_source(cell)
        if cell["cell_type"] != "code" or "interact(" in source:
            continue
        try:
            names = [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
        except SyntaxError:  # IPython のマジック（%timeit など）のセル
            continue
        if any(name.startswith("draw_") for name in names):
            assert "hide-input" in cell["metadata"].get("tags", []), (
                f"{path.name} のセル {i}: 図の補助関数 {names} のセルに hide-input のタグがありません")
