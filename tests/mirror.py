"""「本とパッケージの鏡」: mini_dl/ の公開定義が、章のノートブックに同じ形で載っているかを調べます。

規則:

* ``mini_dl/`` の下（``functions/`` などのサブパッケージも含む）の ``*.py`` のトップレベルにある公開の定義（``_`` で始まらない ``def`` ・ ``class`` ・
  代入）は、``_toc.yml`` に載ったどれかのノートブックのコードセルに、まったく同じソースで
  現れなければなりません。
* 同じ名前で中身の違う定義は、セルの 1 行目が ``# 下書き`` で始まる「下書き」セルにだけ書けます。
  それ以外で食い違えば、ずれ（drift）として報告します。
* 非公開の定義（``_`` で始まる名前。``__version__`` のような ``__`` の名前は除く）は、章に載せなくてもかまいません。
  ただし、下書きでないセルに同じ名前で載せたなら、公開の定義と同じく、まったく同じソースでなければなりません。

    python tests/mirror.py          # 食い違いを一覧表示（テストと同じ判定）
    python tests/mirror.py --sync   # 章の完成形のセルを、パッケージのソースで書き換える
"""
import ast
import difflib
import pathlib
import re
import sys
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import booktools  # noqa: E402

ROOT = booktools.ROOT
PACKAGE = ROOT / "mini_dl"
DRAFT_RE = re.compile(r"^\s*#\s*下書き")


@dataclass
class Definition:
    name: str
    source: str
    where: str  # "mini_dl/core.py" や "book/ch03_variable_function.ipynb のセル 12"
    chapter: str = ""
    draft: bool = False

    @property
    def private(self):
        """``_`` で始まる非公開の名前なら True（``__version__`` のような ``__`` の名前は対象外）。"""
        return self.name.startswith("_")


def _wanted(name):
    # 公開の名前と非公開の名前（_helper）を調べ、__version__ のような __ の名前は調べません
    return not name.startswith("__")


def _top_level(tree, text):
    """モジュールのトップレベルの定義（公開と非公開）を ``(名前, ソース)`` で返します。"""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
        else:
            continue
        source = ast.get_source_segment(text, node, padded=False)
        if node.__dict__.get("decorator_list"):
            first = node.decorator_list[0]
            lines = text.splitlines()
            source = "\n".join(lines[first.lineno - 1:node.end_lineno])
        for name in names:
            if _wanted(name):
                yield name, source


def package_definitions():
    defs = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue  # __init__.py は再エクスポートだけ
        text = path.read_text(encoding="utf-8")
        for name, source in _top_level(ast.parse(text), text):
            defs.append(Definition(name, source, str(path.relative_to(ROOT))))
    return defs


def _strip_magics(source):
    # IPython のマジック（!pip, %timeit など）は Python として読めないので空行にします
    return "\n".join("" if ln.lstrip().startswith(("!", "%")) else ln for ln in source.splitlines())


def notebook_definitions():
    defs = []
    for path in booktools.toc_notebooks():
        nb = booktools.read_nb(path)
        title = _chapter_title(nb) or path.stem
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            source = _strip_magics(booktools.cell_source(cell))
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            draft = bool(DRAFT_RE.match(source.lstrip("\n").split("\n", 1)[0]))
            for name, src in _top_level(tree, source):
                where = f"{path.relative_to(ROOT)} のセル {i}"
                defs.append(Definition(name, src, where, title, draft))
    return defs


def _chapter_title(nb):
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", booktools.cell_source(cell), flags=re.M)
            if m:
                return m.group(1).strip()
    return ""


def _diff(a, b, a_name, b_name):
    return "\n".join(difflib.unified_diff(
        a.splitlines(), b.splitlines(), fromfile=a_name, tofile=b_name, lineterm=""))


def book_index():
    """章のノートブックの定義を名前ごとにまとめた辞書。"""
    by_name = {}
    for d in notebook_definitions():
        by_name.setdefault(d.name, []).append(d)
    return by_name


def check(pkg, by_name, siblings=()):
    """パッケージの定義 ``pkg`` 1 つについて、食い違いの説明（日本語）のリストを返します。

    ``siblings`` は、別のモジュールにある同じ名前の定義のソース（``functions.Linear`` と
    ``layers.Linear`` など）。それと同じセルは、ずれとはみなしません。
    非公開の定義（``_helper``）は、章に無くてもかまいませんが、下書きでないセルに載っていればずれを調べます。
    """
    found = []
    shown = by_name.get(pkg.name, [])
    exact = [d for d in shown if d.source == pkg.source]
    drifted = [d for d in shown if d.source != pkg.source and d.source not in siblings and not d.draft]
    for d in drifted:
        found.append(
            f"{pkg.name}（{pkg.where}）が {d.chapter}（{d.where}）の定義と食い違っています。"
            f"下書きなら、セルの 1 行目を「# 下書き」で始めてください。\n"
            + _diff(d.source, pkg.source, d.where, pkg.where)
        )
    if not exact and not drifted and not pkg.private:
        if shown:
            closest = max(shown, key=lambda d: difflib.SequenceMatcher(None, d.source, pkg.source).ratio())
            found.append(
                f"{pkg.name}（{pkg.where}）の完成形がどの章にもありません。"
                f"いちばん近いのは {closest.chapter}（{closest.where}）の下書きです。\n"
                + _diff(closest.source, pkg.source, closest.where, pkg.where)
            )
        else:
            found.append(f"{pkg.name}（{pkg.where}）がどの章のノートブックにも載っていません。")
    return found


def problems():
    """すべての食い違いの説明のリスト。空なら本とパッケージは一致しています。"""
    by_name = book_index()
    package = package_definitions()
    return [text for pkg in package
            for text in check(pkg, by_name, {d.source for d in package if d.name == pkg.name and d is not pkg})]


def sync():
    """下書きでないセルにある、パッケージと同じ名前の定義をパッケージのソースで置き換えます。

    書き換えたノートブックのパスのリストを返します（実行し直して保存するのは書き手の仕事です）。
    """
    defs = package_definitions()
    names = [d.name for d in defs]
    # 同じ名前が 2 つのモジュールにあるもの（functions.Linear と layers.Linear など）は、どちらか決められないので書き換えない
    package = {d.name: d.source for d in defs if names.count(d.name) == 1}
    changed = []
    for path in booktools.toc_notebooks():
        nb = booktools.read_nb(path)
        touched = False
        for cell in nb["cells"]:
            source = booktools.cell_source(cell)
            if cell["cell_type"] != "code" or DRAFT_RE.match(source.lstrip("\n").split("\n", 1)[0]):
                continue
            try:
                tree = ast.parse(_strip_magics(source))
            except SyntaxError:
                continue
            lines = source.split("\n")
            for node in reversed(tree.body):
                pairs = list(_top_level(ast.Module(body=[node], type_ignores=[]), source))
                new = package.get(pairs[0][0]) if pairs else None
                if new is None or pairs[0][1] == new:
                    continue
                first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                lines[first - 1:node.end_lineno] = new.split("\n")
                touched = True
            cell["source"] = "\n".join(lines)
        if touched:
            booktools.write_nb(path, nb)
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] == ["--sync"]:
        for path in sync():
            print(f"書き換えました（実行し直して保存してください）: {path.relative_to(ROOT)}")
    issues = problems()
    for text in issues:
        print(text, end="\n\n")
    print("本とパッケージは一致しています。" if not issues else f"{len(issues)} 件の食い違いがあります。")
    sys.exit(1 if issues else 0)
