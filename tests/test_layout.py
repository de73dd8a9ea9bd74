"""パッケージの構成のテスト: import の循環がないこと、import の向き、モジュールの大きさ、``__init__.py`` の中身。

DESIGN.md の「Package layout」: import は ``cuda → core → functions → layers → models → optimizers → その他``
の一方向で、関数の中の（遅延）import でも上流から下流を import しません。モジュールは 500 行未満にします。
ソースを実行せずに ``ast`` で読むので、モジュールの中の ``import`` 文（関数の中のものも）をすべて調べます。
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mini_dl"
# import の向き: 前のものは後ろのものを import しません
ORDER = ["mini_dl.cuda", "mini_dl.core", "mini_dl.functions", "mini_dl.layers", "mini_dl.models", "mini_dl.optimizers"]
MAX_LINES = 500


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name, modules):
    """``name``（モジュールか、モジュールの中の名前）を、いちばん長く一致する mini_dl のモジュール名にします。"""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path, modules):
    """モジュールが import する mini_dl のモジュール名の集合（関数の中の import と import_module も含めます）。"""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # 相対 import: from . import x、from .tensor import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # from mini_dl import cuda は mini_dl.cuda を、from mini_dl import Variable は mini_dl を import する
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            targets = [str(node.args[0].value)]
        for t in targets:
            if t == "mini_dl" or t.startswith("mini_dl."):
                resolved = _resolve(t, modules)
                if resolved and resolved != me:
                    found.add(resolved)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _find_cycle(graph):
    """有向グラフの循環を 1 つ見つけて ``[a, b, ..., a]`` で返します（なければ ``None``）。"""
    state = {}  # 1: 調べている途中、2: 調べ終わった
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _rank(name):
    """``ORDER`` の中の位置（サブモジュールは親の位置）。``ORDER`` の外のモジュールは ``None``。"""
    for i, top in enumerate(ORDER):
        if name == top or name.startswith(top + "."):
            return i
    return None


def _levels(graph):
    """各モジュールが（間接的にも）import する ``ORDER`` のモジュールの、いちばん後ろの位置。"""
    levels = {}

    def level(name, seen=()):
        if name in levels:
            return levels[name]
        own = _rank(name)
        deps = [level(d, seen + (name,)) for d in graph.get(name, ()) if d not in seen]
        result = max([r for r in [own, *deps] if r is not None], default=None)
        levels[name] = result
        return result

    for name in graph:
        level(name)
    return levels


# --- テスト本体 -------------------------------------------------------------------------------

def test_every_import_is_found_and_resolved():
    graph = _graph()
    assert {"mini_dl.core", "mini_dl.functions", "mini_dl.functions.tensor", "mini_dl.layers"} <= set(graph)
    assert "mini_dl.cuda" in graph["mini_dl.core"]
    assert "mini_dl.core" in graph["mini_dl.functions.tensor"]


def test_no_import_cycle():
    graph = _graph()
    cycle = _find_cycle(graph)
    assert cycle is None, "mini_dl の中に import の循環があります: " + " → ".join(cycle)


def test_cycle_finder_reports_a_cycle():
    # 検査そのものが循環を見逃さないこと
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_cuda_does_not_import_core_at_all():
    graph = _graph()
    assert graph["mini_dl.cuda"] == set(), f"mini_dl.cuda が mini_dl のモジュールを import しています: {graph['mini_dl.cuda']}"


def test_imports_flow_one_way():
    graph = _graph()
    levels = _levels(graph)
    wrong = []
    for name, deps in sorted(graph.items()):
        own = _rank(name)
        if own is None:
            continue
        for dep in sorted(deps):
            if levels.get(dep) is not None and levels[dep] > own and not dep.startswith(name + "."):
                wrong.append(f"{name} が {dep}（{ORDER[levels[dep]]} の側）を import しています")
    assert not wrong, ("import の向き（" + " → ".join(ORDER) + "）に逆らう import があります:\n  " + "\n  ".join(wrong))


def test_core_and_functions_do_not_import_later_layers():
    graph = _graph()
    later = ("mini_dl.functions", "mini_dl.layers", "mini_dl.models", "mini_dl.optimizers")
    assert not [d for d in graph["mini_dl.core"] if d.startswith(later)], graph["mini_dl.core"]
    for name, deps in graph.items():
        if name.startswith("mini_dl.functions"):
            assert not [d for d in deps if d.startswith(later[1:])], f"{name} が {deps} を import しています"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_module_is_small(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n < MAX_LINES, f"{path.relative_to(PACKAGE.parent)} は {n} 行です（{MAX_LINES} 行未満にします）"


@pytest.mark.parametrize("subpackage", ["functions", "layers"])
def test_subpackage_init_only_reexports(subpackage):
    path = PACKAGE / subpackage / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    other = []
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if (isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
                and all(getattr(t, "id", None) == "__all__" for t in getattr(node, "targets", [node.target]))):
            continue
        other.append(f"{node.lineno} 行目: {ast.dump(node)[:60]}")
    assert not other, f"mini_dl/{subpackage}/__init__.py には import・__all__・docstring だけを書きます:\n  " + "\n  ".join(other)


def test_every_subpackage_is_installed_by_pip():
    """``pip install``（Colab の先頭のセルも）で入るパッケージに、``mini_dl`` のサブパッケージがすべて含まれます。

    ``pyproject.toml`` の ``[tool.setuptools.packages.find]`` の ``include`` を、setuptools と同じ規則で当てはめます。
    editable でないインストールでは、ここから漏れたサブパッケージは黙って無くなります。
    """
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 から
    setuptools = pytest.importorskip("setuptools")

    root = PACKAGE.parent
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(setuptools.find_packages(where=str(root), include=include))
    expected = {".".join(p.parent.relative_to(root).parts) for p in (root / "mini_dl").rglob("__init__.py")}
    assert expected <= found, f"pip install で入らないサブパッケージがあります: {sorted(expected - found)}"
