"""要素ごとの数学関数（``mini_dl.functions``、``import mini_dl.functions as F`` と使います）。

どの関数も ``forward`` は配列で、``backward`` は ``Variable`` で計算するので、
何回でも微分できます（第7章）。
"""
from mini_dl import cuda
from mini_dl.core import Function


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
