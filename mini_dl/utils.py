"""数値微分など、mini_dl を作り・確かめるための道具。"""
import numpy as np

from mini_dl import cuda


def numerical_diff(f, x, eps=1e-4):
    r"""中心差分で関数 ``f`` の微分を近似します。

    .. math::

        f'(x) \approx \frac{f(x + h) - f(x - h)}{2h}

    丸め誤差を小さくするため、``x`` を ``float64`` に変換してから計算します。
    ``x`` が配列なら要素ごとの微分（``f`` が要素ごとの関数の場合）を返します。

    Args:
        f: 数値または配列を受け取り、同じ shape の値を返す関数。
        x: 微分する点（数値または配列）。
        eps: 差分の幅 :math:`h`。

    Returns:
        float64 の数値または配列: :math:`f'(x)` の近似値。
    """
    x = np.asarray(x, dtype=np.float64)
    return (f(x + eps) - f(x - eps)) / (2 * eps)


def numerical_grad(f, x, eps=1e-4):
    r"""スカラーを返す関数 ``f`` の、配列 ``x`` についての勾配を中心差分で求めます。

    ``x`` の要素を 1 つずつ :math:`\pm h` だけずらして ``f`` を 2 回ずつ計算します。
    計算は ``float64`` で行います。

    Args:
        f: 配列を受け取り、スカラー（要素 1 個の値）を返す関数。
        x: 微分する点（配列）。
        eps: 差分の幅 :math:`h`。

    Returns:
        float64 の配列: ``x`` と同じ shape の勾配の近似値（``x`` が CuPy の配列なら CuPy の配列）。
    """
    xp = cuda.get_array_module(x)
    x = xp.array(x, dtype=np.float64)  # 書き換えるのでコピーする（GPU の配列なら GPU の上で）
    grad = xp.zeros_like(x)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + eps
        y_plus = float(f(x))
        x[idx] = original - eps
        y_minus = float(f(x))
        x[idx] = original
        grad[idx] = (y_plus - y_minus) / (2 * eps)
    return grad


def gradient_check(f, *inputs, eps=1e-5, rtol=1e-4, atol=1e-5, seed=0):
    r"""関数 ``f`` の逆伝播が、数値微分と合っているかを確かめます。

    入力を ``float64`` の ``Variable`` にして ``y = f(*inputs)`` を計算し、乱数の重み
    :math:`g` で :math:`L = \sum g \odot y` を作ります。:math:`L` の各入力についての勾配を、
    逆伝播と中心差分の両方で求めて、すべての要素を比べます。入力が CuPy の配列なら、
    計算はすべて GPU の上で行い、比べるときだけ CPU に移します。

    Args:
        f: ``Variable`` を受け取り ``Variable`` を返す関数（``Function`` のインスタンスやクラスでも可）。
        *inputs: 入力の配列（または数値）。
        eps: 中心差分の幅 :math:`h`。
        rtol, atol: 許す誤差。:math:`|数値 - 逆伝播| \le atol + rtol \cdot |数値|` なら合格です。
        seed: 重み :math:`g` の乱数の種。

    Raises:
        AssertionError: 合わない要素があったとき。関数名、入力の番号、要素の位置、
            数値微分と逆伝播の値を日本語で示します。
    """
    # 章のノートブックで同じ名前のクラスを定義していても、パッケージの Variable と Function を使う
    from mini_dl.core import Function, Variable

    name = _function_name(f)
    if isinstance(f, type) and issubclass(f, Function):
        cls = f
        f = lambda *xs: cls()(*xs)  # noqa: E731  関数のクラスなら、呼ぶたびに新しいインスタンスを作る
    xp = cuda.get_array_module(inputs[0]) if inputs else np
    arrays = [xp.array(x, dtype=np.float64) for x in inputs]
    xs = [Variable(a) for a in arrays]
    y = f(*xs)
    for x in xs:
        x.cleargrad()  # f の中で逆伝播した（高階微分の検査）ときの勾配を消しておく
    g = xp.asarray(np.random.default_rng(seed).uniform(0.5, 1.5, size=y.shape))
    y.grad = Variable(g)
    y.backward()

    for i, (a, x) in enumerate(zip(arrays, xs)):
        def loss(v, i=i):
            # f が中で逆伝播を使う（高階微分の検査）こともあるので、no_grad にはしない
            args = [Variable(v) if j == i else Variable(b) for j, b in enumerate(arrays)]
            return (f(*args).data * g).sum()

        expected = cuda.as_numpy(numerical_grad(loss, a, eps=eps))
        actual = np.zeros(a.shape) if x.grad is None else cuda.as_numpy(x.grad.data).astype(np.float64)
        if actual.shape != a.shape:
            raise AssertionError(
                f"gradient_check: {name} の {i} 番目の入力の勾配の shape が {actual.shape} です"
                f"（入力の shape {a.shape} と同じであるべきです）"
            )
        bad = np.abs(actual - expected) > atol + rtol * np.abs(expected)
        if bad.any():
            err = np.where(bad, np.abs(actual - expected), -1.0)
            idx = np.unravel_index(np.argmax(err), a.shape)
            raise AssertionError(
                f"gradient_check: {name} の逆伝播が数値微分と合いません。\n"
                f"  入力: {i} 番目（shape {a.shape}）\n"
                f"  要素: {tuple(int(k) for k in idx)}（合わない要素 {int(bad.sum())} 個 / {a.size} 個のうち最も外れたもの）\n"
                f"  数値微分: {expected[idx]:.8g}\n"
                f"  逆伝播  : {actual[idx]:.8g}\n"
                f"  許す誤差: atol={atol} + rtol={rtol} × |数値微分|"
            )


def _function_name(f):
    if isinstance(f, type):
        return f.__name__
    name = getattr(f, "__name__", None)
    return name if name is not None else type(f).__name__


# --- 計算グラフを描く ----------------------------------------------------------------------

def _graph(output):
    """``output`` からさかのぼれる関数を集め、(変数のリスト, 関数のリスト) を返します。"""
    variables, functions = {id(output): output}, {}
    stack = [output.creator] if output.creator is not None else []
    while stack:
        f = stack.pop()
        if id(f) in functions:
            continue
        functions[id(f)] = f
        for x in f.inputs:
            variables[id(x)] = x
            if x.creator is not None:
                stack.append(x.creator)
        for ref in f.outputs:
            y = ref()
            if y is not None:
                variables[id(y)] = y
    return list(variables.values()), list(functions.values())


def _variable_label(v, verbose):
    label = "" if v.name is None else v.name
    if verbose and v.data is not None:
        label += ": " if label else ""
        label += f"{v.shape} {v.dtype}"
    return label


def get_dot_graph(output, verbose=True):
    """計算グラフを DOT 言語（Graphviz の形式）の文字列にします。

    変数は楕円、関数は箱で表します。得られた文字列は Graphviz の ``dot`` コマンドや
    オンラインの Graphviz ビューアで画像にできます。

    Args:
        output (Variable): グラフの出力側の変数。
        verbose (bool): ``True`` なら変数の shape と dtype も書きます。

    Returns:
        str: ``digraph g { ... }`` の形の文字列。
    """
    variables, functions = _graph(output)
    lines = ["digraph g {"]
    for v in variables:
        label = _variable_label(v, verbose).replace('"', '\\"')
        lines.append(f'{id(v)} [label="{label}", color=orange, style=filled]')
    for f in functions:
        lines.append(f'{id(f)} [label="{type(f).__name__}", color=lightblue, style=filled, shape=box]')
        for x in f.inputs:
            lines.append(f"{id(x)} -> {id(f)}")
        for ref in f.outputs:
            y = ref()
            if y is not None:
                lines.append(f"{id(f)} -> {id(y)}")
    lines.append("}")
    return "\n".join(lines)


def plot_graph(output, verbose=False, ax=None, to_file=None):
    """計算グラフを matplotlib で描きます（Graphviz などのインストールは要りません）。

    上から下へ、入力から出力に向かって描きます。変数（オレンジ）は世代 :math:`g` の段、
    関数（青い箱）は入力の世代の段のすぐ下に置き、定数のように途中から入る変数は使う関数の
    すぐ上に置きます。同じ段の中は、つながる相手の横位置の平均で並べ、線の交差を減らします。

    Args:
        output (Variable): グラフの出力側の変数。
        verbose (bool): ``True`` なら変数の shape と dtype も書きます。
        ax: 描き込む matplotlib の Axes。``None`` なら新しい図を作って表示します。
        to_file (str): 画像ファイルの保存先（``None`` なら保存しません）。

    Returns:
        matplotlib.axes.Axes: 描いた Axes（``ax`` を渡したときだけ。それ以外は ``None``）。
    """
    import matplotlib.pyplot as plt

    variables, functions = _graph(output)
    nodes = {}  # id -> [段, 横の位置, ラベル, 種類]
    for v in variables:
        nodes[id(v)] = [2 * v.generation, 0.0, _variable_label(v, verbose), "variable"]
    for f in functions:
        nodes[id(f)] = [2 * f.generation + 1, 0.0, type(f).__name__, "function"]
    edges = [(id(x), id(f)) for f in functions for x in f.inputs]
    edges += [(id(f), id(ref())) for f in functions for ref in f.outputs if ref() is not None]
    for v in variables:  # 定数など途中から入る変数は、使う関数のすぐ上の段に置く
        if v.creator is None:
            users = [nodes[b][0] for a, b in edges if a == id(v)]
            if users:
                nodes[id(v)][0] = min(users) - 1

    rows, neighbors = {}, {key: [] for key in nodes}
    for key, node in nodes.items():
        rows.setdefault(node[0], []).append(key)
    for a, b in edges:
        neighbors[a].append(b)
        neighbors[b].append(a)
    # 段の中の並び順: つながる相手の横位置の平均（重心）で並べ直すのを、上から・下からと繰り返す
    for sweep in range(5):
        downward = sweep % 2 == 0
        for row in sorted(rows, reverse=not downward):
            def barycenter(key):
                near = [nodes[k][1] for k in neighbors[key] if (nodes[k][0] < row) == downward]
                near = near or [nodes[k][1] for k in neighbors[key]]
                return sum(near) / len(near) if near else nodes[key][1]
            keys = sorted(rows[row], key=barycenter)
            for i, key in enumerate(keys):
                nodes[key][1] = i - (len(keys) - 1) / 2

    width = max(len(keys) for keys in rows.values())
    height = max(rows) + 1
    own_figure = ax is None
    if own_figure:
        fig, ax = plt.subplots(figsize=(max(3.0, 1.8 * width), max(2.0, 0.8 * height)))
    for a, b in edges:
        (ya, xa), (yb, xb) = nodes[a][:2], nodes[b][:2]
        ax.annotate("", xy=(xb, -yb), xytext=(xa, -ya),
                    arrowprops=dict(arrowstyle="-|>", color="0.35", shrinkA=12, shrinkB=12))
    for row, x, label, kind in nodes.values():
        style = (dict(boxstyle="round,pad=0.4", fc="#ffc878", ec="#d08000") if kind == "variable"
                 else dict(boxstyle="square,pad=0.4", fc="#add8e6", ec="#3b7fa0"))
        ax.text(x, -row, label if label else " ", ha="center", va="center", fontsize=9, bbox=style)
    ax.set_xlim(-width / 2 - 0.2, width / 2 + 0.2)
    ax.set_ylim(-height + 0.4, 0.6)
    ax.axis("off")
    if to_file is not None:
        ax.figure.savefig(to_file, bbox_inches="tight")
    if own_figure:
        plt.show()
        return None
    return ax
