"""mini_dl.utils.numerical_diff のテスト。"""
import numpy as np
import pytest

from mini_dl.utils import numerical_diff


@pytest.mark.parametrize("f, df, x", [
    (np.sin, np.cos, 0.3),
    (np.exp, np.exp, np.array([-1.0, 0.0, 2.0])),
    (lambda x: x ** 3, lambda x: 3 * x ** 2, np.linspace(-2, 2, 7)),
])
def test_central_difference_is_accurate(f, df, x):
    np.testing.assert_allclose(numerical_diff(f, x), df(x), rtol=1e-7, atol=1e-7)


def test_error_is_second_order_in_eps():
    # 中心差分の打ち切り誤差は h^2 に比例: h を 1/10 にすると誤差はほぼ 1/100
    x = 1.0
    e1 = abs(numerical_diff(np.exp, x, eps=1e-2) - np.exp(x))
    e2 = abs(numerical_diff(np.exp, x, eps=1e-3) - np.exp(x))
    assert 80 < e1 / e2 < 120


def test_computes_in_float64_even_for_float32_input():
    x = np.float32(1.0)
    d = numerical_diff(lambda v: v ** 2, x)
    assert d.dtype == np.float64
    assert abs(d - 2.0) < 1e-8


# --- numerical_grad と gradient_check --------------------------------------------------------

import mini_dl.functions as F  # noqa: E402
from mini_dl import Function, Variable  # noqa: E402
from mini_dl.utils import get_dot_graph, gradient_check, numerical_grad, plot_graph  # noqa: E402


def test_numerical_grad_of_a_scalar_function():
    x = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    g = numerical_grad(lambda v: np.sum(v ** 3), x)
    assert g.dtype == np.float64 and g.shape == x.shape
    np.testing.assert_allclose(g, 3 * x.astype(np.float64) ** 2, rtol=1e-7)
    assert x[0, 0] == 1.0  # 入力は書き換えない


class ExpWithWrongBackward(Function):
    def forward(self, x):
        return np.exp(x)

    def backward(self, gy):
        x = self.inputs[0]
        return gy * F.exp(x) * 1.001  # 0.1% だけずれている


def test_gradient_check_accepts_correct_backward():
    gradient_check(F.exp, np.array([[0.1, -0.2, 0.3]]))
    gradient_check(lambda a, b: a * b + F.sin(a), np.ones((2, 2)), np.arange(4.0).reshape(2, 2))


def test_gradient_check_rejects_a_wrong_backward_with_a_japanese_message():
    with pytest.raises(AssertionError) as info:
        gradient_check(ExpWithWrongBackward, np.array([[0.1, 2.0], [-0.5, 0.3]]))
    message = str(info.value)
    assert "ExpWithWrongBackward の逆伝播が数値微分と合いません" in message
    assert "入力: 0 番目（shape (2, 2)）" in message
    assert "要素: (0, 1)" in message  # いちばん外れているのは e^2 の要素
    assert "数値微分" in message and "逆伝播" in message


def test_gradient_check_names_the_input_that_is_wrong():
    class WrongSecondInput(Function):
        def forward(self, a, b):
            return a * b

        def backward(self, gy):
            a, b = self.inputs
            return gy * b, gy * b  # 2 つ目は gy * a であるべき

    with pytest.raises(AssertionError, match="入力: 1 番目"):
        gradient_check(WrongSecondInput, np.array([1.0, 2.0]), np.array([3.0, 5.0]))


def test_gradient_check_catches_a_missing_gradient():
    class Forgets(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, gy):
            return gy, gy * 0

    with pytest.raises(AssertionError, match="Forgets"):
        gradient_check(Forgets, np.array(1.0), np.array(2.0))


# --- 計算グラフの描画 ------------------------------------------------------------------------

def _small_graph():
    x = Variable(np.array(1.0, dtype=np.float32), name="x")
    y = Variable(np.array(2.0, dtype=np.float32), name="y")
    z = x * y + F.sin(x)
    z.name = "z"
    return x, y, z


def test_dot_graph_lists_variables_functions_and_edges():
    x, y, z = _small_graph()
    dot = get_dot_graph(z, verbose=True)
    assert dot.startswith("digraph g {") and dot.endswith("}")
    for label in ['label="x: () float32"', 'label="z: () float32"', 'label="Mul"', 'label="Sin"', 'label="Add"']:
        assert label in dot
    assert f"{id(x)} -> {id(z.creator.inputs[0].creator)}" in dot
    assert dot.count("->") == 3 + 3 + 2  # Mul: 2 入力 + 1 出力、Sin: 1 + 1、Add: 2 + 1
    assert 'label="x"' in get_dot_graph(z, verbose=False)


def test_plot_graph_draws_an_image_without_graphviz(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, z = _small_graph()
    fig, ax = plt.subplots()
    assert plot_graph(z, ax=ax) is ax
    labels = sorted(t.get_text() for t in ax.texts if t.get_text().strip())  # 矢印と名前のない変数は除く
    assert labels == ["Add", "Mul", "Sin", "x", "y", "z"]
    plt.close(fig)
    out = tmp_path / "graph.png"
    plot_graph(z, verbose=True, to_file=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close("all")
