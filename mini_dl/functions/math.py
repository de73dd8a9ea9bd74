"""四則演算と要素ごとの数学関数（第6〜7章）。

``Variable`` の演算子（``x + y``・``x * 2`` など）は、ここの関数を呼びます（``setup_variable``）。
"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Function, Variable, as_variable
from mini_dl.functions.tensor import sum_to


def as_operands(x0, x1):
    """2 項演算の入力を ``Variable`` にそろえます。

    Python の数値は、相手と同じ配列モジュール（NumPy か CuPy）の、NumPy の規則どおりの dtype の
    配列にします。``x * 2.0`` は、``x`` が float16 なら float16、float32 なら float32 のままです
    （NumPy 2 の規則では、0 次元でも配列にした数値は型を持つ値として扱われ、相手を昇格させるためです）。
    NumPy のスカラー（``np.sqrt(2.0)`` の結果の ``np.float64`` など）も、Python の数値と同じに扱います。
    NumPy 2 では ``np.float64`` のスカラーは float32 の配列を float64 に昇格させますが、
    ``x * np.sqrt(2.0)`` が float64 になるのは、ほとんどの場合、読者の意図ではないからです。

    Args:
        x0: 左の入力（``Variable``、配列、または数値）。
        x1: 右の入力（同上）。

    Returns:
        tuple[Variable, Variable]: そろえた 2 つの入力。

    Raises:
        ValueError: 2 つの shape がブロードキャストできないとき。
    """
    if not isinstance(x1, Variable):  # よくある「Variable と Variable」は、ここを飛ばす
        x1 = Variable(_scalar_like(x1, x0)) if _is_number(x1) and isinstance(x0, Variable) else as_variable(x1)
    if not isinstance(x0, Variable):
        x0 = Variable(_scalar_like(x0, x1)) if _is_number(x0) else as_variable(x0)
    if x0.data.shape != x1.data.shape:
        try:
            np.broadcast_shapes(x0.shape, x1.shape)
        except ValueError:
            raise ValueError(
                f"shape {x0.shape} と {x1.shape} はブロードキャストできません"
                f"（後ろの軸から比べて、長さが同じか、どちらかが 1 である必要があります）"
            ) from None
    return x0, x1


def _is_number(c):
    """Python の数値か、NumPy の数値のスカラー（``np.float64(2)``・``np.int64(3)`` など）なら ``True``。"""
    return isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, (bool, np.bool_))


def _scalar_like(c, x):
    """数値 ``c`` を、変数 ``x`` と同じ配列モジュール・NumPy の規則どおりの dtype の 0 次元配列にします。

    NumPy のスカラーは ``item()`` で Python の数にしてから dtype を決めるので、相手の dtype を変えません
    （float32 の ``x`` と ``np.float64(2)`` なら float32、int64 の ``x`` と ``2.5`` なら float64）。
    """
    if isinstance(c, np.generic):
        c = c.item()
    xp = cuda.get_array_module(x.data)
    return xp.asarray(c, dtype=np.result_type(x.dtype, c))


class Add(Function):
    r"""足し算 :math:`y = x_0 + x_1`。どちらの入力についての微分も 1 です。

    shape が違えばブロードキャストし、逆伝播では勾配を ``sum_to`` で入力の shape に戻します。
    """

    def forward(self, x0, x1):
        y = x0 + x1
        return y

    def backward(self, gy):
        x0, x1 = self.inputs
        return sum_to(gy, x0.shape), sum_to(gy, x1.shape)


class Mul(Function):
    r"""掛け算 :math:`y = x_0 x_1`。微分は :math:`\frac{\partial y}{\partial x_0} = x_1,\ \frac{\partial y}{\partial x_1} = x_0` です。"""

    def forward(self, x0, x1):
        y = x0 * x1
        return y

    def backward(self, gy):
        x0, x1 = self.inputs
        return sum_to(gy * x1, x0.shape), sum_to(gy * x0, x1.shape)


class Neg(Function):
    r"""符号の反転 :math:`y = -x`。微分は :math:`-1` です。"""

    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Sub(Function):
    r"""引き算 :math:`y = x_0 - x_1`。微分は :math:`1` と :math:`-1` です。"""

    def forward(self, x0, x1):
        y = x0 - x1
        return y

    def backward(self, gy):
        x0, x1 = self.inputs
        return sum_to(gy, x0.shape), sum_to(-gy, x1.shape)


class Div(Function):
    r"""割り算 :math:`y = x_0 / x_1`。微分は :math:`\frac{1}{x_1}` と :math:`-\frac{x_0}{x_1^2}` です。"""

    def forward(self, x0, x1):
        y = x0 / x1
        return y

    def backward(self, gy):
        x0, x1 = self.inputs
        gx0 = gy / x1
        gx1 = gy * (-x0 / x1 ** 2)
        return sum_to(gx0, x0.shape), sum_to(gx1, x1.shape)


class Pow(Function):
    r"""累乗 :math:`y = x^c`（:math:`c` は定数）。微分は :math:`c x^{c-1}` です。"""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        y = x ** self.c
        return y

    def backward(self, gy):
        x = self.inputs[0]
        c = self.c
        gx = c * x ** (c - 1) * gy
        return gx


def neg(x):
    """``-x`` を計算します。"""
    return Neg()(x)


def add(x0, x1):
    """``x0 + x1`` を計算します（どちらかが配列や数値でも構いません。shape はブロードキャストします）。

    Args:
        x0: 1 つ目の入力（``Variable``、配列、または数値）。
        x1: 2 つ目の入力（同上）。

    Returns:
        Variable: ``x0 + x1``。
    """
    x0, x1 = as_operands(x0, x1)
    return Add()(x0, x1)


def sub(x0, x1):
    """``x0 - x1`` を計算します（``add`` と同じく、配列・数値・ブロードキャストに対応します）。"""
    x0, x1 = as_operands(x0, x1)
    return Sub()(x0, x1)


def mul(x0, x1):
    """``x0 * x1`` を計算します（``add`` と同じく、配列・数値・ブロードキャストに対応します）。"""
    x0, x1 = as_operands(x0, x1)
    return Mul()(x0, x1)


def div(x0, x1):
    """``x0 / x1`` を計算します（``add`` と同じく、配列・数値・ブロードキャストに対応します）。"""
    x0, x1 = as_operands(x0, x1)
    return Div()(x0, x1)


def pow(x, c):
    """``x ** c`` を計算します。

    Args:
        x (Variable): 底。
        c (int | float): 指数（定数）。NumPy のスカラーは Python の数にしてから使うので、
            ``x ** np.float64(2)`` も ``x`` の dtype のままです。

    Raises:
        TypeError: ``c`` が数値でないとき（``Variable`` の指数には対応していません）。
    """
    if not _is_number(c):
        raise TypeError(f"** の指数には Python の数値を渡してください（受け取った型: {type(c).__name__}）")
    if isinstance(c, np.generic):
        c = c.item()
    return Pow(c)(x)


class Square(Function):
    r"""2 乗 :math:`y = x^2`。微分は :math:`\frac{dy}{dx} = 2x` です。"""

    def forward(self, x):
        return x ** 2

    def backward(self, gy):
        x = self.inputs[0]
        gx = 2 * x * gy
        return gx


class Exp(Function):
    r"""指数関数 :math:`y = e^x`。微分は :math:`\frac{dy}{dx} = e^x = y` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.exp(x)

    def backward(self, gy):
        y = self.outputs[0]()  # 出力は弱参照で持っているので、呼び出して取り出す
        gx = gy * y
        return gx


class Log(Function):
    r"""自然対数 :math:`y = \log x`。微分は :math:`\frac{dy}{dx} = \frac{1}{x}` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.log(x)

    def backward(self, gy):
        x = self.inputs[0]
        gx = gy / x
        return gx


class Sin(Function):
    r""":math:`y = \sin x`。微分は :math:`\cos x` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.sin(x)

    def backward(self, gy):
        x = self.inputs[0]
        gx = gy * cos(x)
        return gx


class Cos(Function):
    r""":math:`y = \cos x`。微分は :math:`-\sin x` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.cos(x)

    def backward(self, gy):
        x = self.inputs[0]
        gx = gy * -sin(x)
        return gx


class Tanh(Function):
    r"""双曲線正接 :math:`y = \tanh x`。微分は :math:`1 - y^2` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.tanh(x)

    def backward(self, gy):
        y = self.outputs[0]()
        gx = gy * (1 - y * y)
        return gx


def square(x):
    """``x`` の各要素を 2 乗します。"""
    return Square()(x)


def exp(x):
    """``x`` の各要素の指数関数 :math:`e^x` を計算します。"""
    return Exp()(x)


def log(x):
    """``x`` の各要素の自然対数を計算します。"""
    return Log()(x)


def sin(x):
    """``x`` の各要素の :math:`\\sin` を計算します。"""
    return Sin()(x)


def cos(x):
    """``x`` の各要素の :math:`\\cos` を計算します。"""
    return Cos()(x)


def tanh(x):
    """``x`` の各要素の :math:`\\tanh` を計算します。"""
    return Tanh()(x)
