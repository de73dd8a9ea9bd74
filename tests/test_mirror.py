"""mini_dl/ の公開定義が、章のノートブックに同じソースで載っていることを確かめます。"""
import pytest

import mirror

PACKAGE_DEFS = mirror.package_definitions()


@pytest.fixture(scope="module")
def by_name():
    return mirror.book_index()


@pytest.mark.parametrize("pkg", PACKAGE_DEFS, ids=[f"{d.where}:{d.name}" for d in PACKAGE_DEFS])
def test_definition_is_shown_identically_in_a_chapter(pkg, by_name):
    siblings = {d.source for d in PACKAGE_DEFS if d.name == pkg.name and d is not pkg}
    issues = mirror.check(pkg, by_name, siblings)
    assert not issues, "\n\n".join(issues)


def test_package_has_public_definitions():
    names = {d.name for d in PACKAGE_DEFS}
    assert {"Variable", "Function", "numerical_diff", "get_array_module"} <= names


def _nb(cells):
    return {"cells": cells}


def _code(source):
    return {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": 1}


def test_mirror_detects_drift_missing_and_accepts_drafts(monkeypatch):
    pkg = mirror.Definition("f", "def f(x):\n    return x + 1", "mini_dl/m.py")
    same = mirror.Definition("f", pkg.source, "book/a.ipynb のセル 1", "第1章")
    draft = mirror.Definition("f", "def f(x):\n    return x", "book/a.ipynb のセル 0", "第1章", draft=True)
    drift = mirror.Definition("f", "def f(x):\n    return x + 2", "book/b.ipynb のセル 3", "第2章")
    assert mirror.check(pkg, {"f": [draft, same]}) == []
    missing = mirror.check(pkg, {})
    assert len(missing) == 1 and "どの章のノートブックにも載っていません" in missing[0]
    only_draft = mirror.check(pkg, {"f": [draft]})
    assert len(only_draft) == 1 and "完成形がどの章にもありません" in only_draft[0]
    drifted = mirror.check(pkg, {"f": [same, drift]})
    assert len(drifted) == 1 and "第2章" in drifted[0] and "+    return x + 1" in drifted[0]


def test_private_helpers_need_not_appear_but_must_match_when_shown():
    # 非公開の定義（_helper）は章に無くてもよいが、下書きでないセルに同じ名前で載せたら同じソースでなければならない
    pkg = mirror.Definition("_helper", "def _helper(x):\n    return x * 2", "mini_dl/m.py")
    assert pkg.private and not mirror.Definition("f", "", "").private
    assert mirror.check(pkg, {}) == []
    same = mirror.Definition("_helper", pkg.source, "book/a.ipynb のセル 1", "第5章")
    assert mirror.check(pkg, {"_helper": [same]}) == []
    draft = mirror.Definition("_helper", "def _helper(x):\n    return x", "book/a.ipynb のセル 0", "第5章",
                              draft=True)
    assert mirror.check(pkg, {"_helper": [draft]}) == []
    drift = mirror.Definition("_helper", "def _helper(x):\n    return x + x", "book/b.ipynb のセル 3", "第5章")
    drifted = mirror.check(pkg, {"_helper": [same, drift]})
    assert len(drifted) == 1 and "_helper" in drifted[0] and "第5章" in drifted[0]
    assert "+    return x * 2" in drifted[0]


def test_private_definitions_are_collected_from_package_and_chapters(tmp_path, monkeypatch):
    import booktools
    assert any(d.name == "_output_grad" and d.where == "mini_dl/core.py" for d in PACKAGE_DEFS)
    assert not any(d.name.startswith("__") for d in PACKAGE_DEFS)
    nb_path = tmp_path / "ch.ipynb"
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# 第5章 テスト"},
             _code("__all__ = []\n_cache = {}\n\n\ndef _helper():\n    pass")]
    booktools.write_nb(nb_path, _nb(cells))
    monkeypatch.setattr(booktools, "toc_notebooks", lambda: [nb_path])
    monkeypatch.setattr(mirror, "ROOT", tmp_path)
    assert [d.name for d in mirror.notebook_definitions()] == ["_cache", "_helper"]

def test_same_name_in_two_modules_is_not_drift():
    # functions.Linear（関数）と layers.Linear（層）のように、別のモジュールの同じ名前は両方載せられる
    f = mirror.Definition("Linear", "class Linear(Function):\n    pass", "mini_dl/functions.py")
    layer = mirror.Definition("Linear", "class Linear(Layer):\n    pass", "mini_dl/layers.py")
    shown = {"Linear": [mirror.Definition("Linear", f.source, "book/a.ipynb のセル 1", "第9章"),
                        mirror.Definition("Linear", layer.source, "book/a.ipynb のセル 2", "第9章")]}
    assert mirror.check(f, shown, {layer.source}) == []
    assert mirror.check(layer, shown, {f.source}) == []
    assert len(mirror.check(f, shown)) == 1  # 兄弟を知らなければ、ずれとして報告される


def test_draft_label_is_read_from_first_line(tmp_path, monkeypatch):
    nb_path = tmp_path / "ch.ipynb"
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": "# 第9章 テスト"},
        _code("# 下書き（draft）: 最初の形\ndef f(x):\n    return x"),
        _code("def f(x):\n    return x + 1"),
        _code("!pip install nothing\ndef g():\n    pass"),
    ]
    import booktools
    booktools.write_nb(nb_path, _nb(cells))
    monkeypatch.setattr(booktools, "toc_notebooks", lambda: [nb_path])
    monkeypatch.setattr(mirror, "ROOT", tmp_path)
    defs = mirror.notebook_definitions()
    assert [(d.name, d.draft, d.chapter) for d in defs] == [
        ("f", True, "第9章 テスト"), ("f", False, "第9章 テスト"), ("g", False, "第9章 テスト")]


def test_sync_rewrites_final_cells_but_not_drafts(tmp_path, monkeypatch):
    import booktools
    nb_path = tmp_path / "ch.ipynb"
    draft = "# 下書き: 古い形\ndef numerical_diff(f, x):\n    return 0"
    cells = [_code(draft), _code("import numpy as np\n\n\ndef numerical_diff(f, x):\n    return 1\n\nprint(1)")]
    booktools.write_nb(nb_path, _nb(cells))
    monkeypatch.setattr(booktools, "toc_notebooks", lambda: [nb_path])
    assert mirror.sync() == [nb_path]
    new = [booktools.cell_source(c) for c in booktools.read_nb(nb_path)["cells"]]
    pkg = {d.name: d.source for d in PACKAGE_DEFS}["numerical_diff"]
    assert new[0] == draft
    assert new[1] == "import numpy as np\n\n\n" + pkg + "\n\nprint(1)"
