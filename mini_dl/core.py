"""mini_dl の心臓部: 変数 ``Variable`` と関数 ``Function``。

第3章で作る最初の形です。このあとの章で、逆伝播の自動化・メモリ管理・
演算子の多重定義・高階微分へと少しずつ育てていきます。
"""
import numpy as np

from mini_dl import cuda


class Variable:
    """値（配列）とその勾配を入れておく「箱」です。

    Args:
        data: 中身となる配列。``numpy.ndarray``（GPU なら ``cupy.ndarray``）、
            NumPy のスカラー（同じ dtype の 0 次元配列になります）、
            Python の数値（``float32`` の 0 次元配列になります）、または ``None``。
        name: 変数の名前（計算グラフの表示などに使います）。

    Attributes:
        data: 中身の配列。
        grad: 逆伝播で求めた勾配（``data`` と同じ shape）。求める前は ``None``。
        name: 変数の名前。

    Raises:
        TypeError: ``data`` が配列でも数値でもないとき。
    """

    def __init__(self, data, name=None):
        if isinstance(data, np.generic):
            data = np.asarray(data)
        elif isinstance(data, (int, float)) and not isinstance(data, bool):
            data = np.array(data, dtype=np.float32)
        elif data is not None and not isinstance(data, cuda.array_types):
            raise TypeError(
                f"Variable の data には ndarray か数値を渡してください"
                f"（受け取った型: {type(data).__name__}）"
            )
        self.data = data
        self.name = name
        self.grad = None


class Function:
    """すべての関数（演算）の基底クラスです。

    ``Function`` のインスタンスを ``Variable`` に適用すると、中身の配列を
    ``forward`` で計算し、結果を新しい ``Variable`` に入れて返します。
    入力は逆伝播（``backward``）で使うので ``self.input`` に覚えておきます。
    具体的な計算はサブクラスの ``forward`` と ``backward`` に書きます。
    """

    def __call__(self, input):
        if not isinstance(input, Variable):
            raise TypeError(
                f"{type(self).__name__} には Variable を渡してください"
                f"（受け取った型: {type(input).__name__}）"
            )
        x = input.data
        y = self.forward(x)
        output = Variable(as_array(y))
        self.input = input
        return output

    def forward(self, x):
        """順伝播: 配列 ``x`` から出力の配列を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.forward が実装されていません")

    def backward(self, gy):
        """逆伝播: 出力側の勾配 ``gy`` から入力側の勾配を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.backward が実装されていません")


class Square(Function):
    r"""2 乗 :math:`y = x^2`。微分は :math:`\frac{dy}{dx} = 2x` です。"""

    def forward(self, x):
        return x ** 2

    def backward(self, gy):
        x = self.input.data
        gx = 2 * x * gy
        return gx


class Exp(Function):
    r"""指数関数 :math:`y = e^x`。微分は :math:`\frac{dy}{dx} = e^x` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.exp(x)

    def backward(self, gy):
        xp = cuda.get_array_module(gy)
        x = self.input.data
        gx = xp.exp(x) * gy
        return gx


def square(x):
    """``Square()(x)`` の短縮形です。

    Args:
        x (Variable): 入力。

    Returns:
        Variable: ``x`` の各要素を 2 乗した値。
    """
    return Square()(x)


def exp(x):
    """``Exp()(x)`` の短縮形です。

    Args:
        x (Variable): 入力。

    Returns:
        Variable: ``x`` の各要素の指数関数の値。
    """
    return Exp()(x)


def as_array(x):
    """スカラーを 0 次元配列に直します（配列はそのまま返します）。

    NumPy では 0 次元配列どうしの計算結果が ``numpy.float32`` のような
    スカラーになることがあります。``Variable`` は配列だけを入れる箱なので、
    ``Function`` の出力をこの関数で配列に揃えます。dtype は変わりません。

    Args:
        x: 配列かスカラー。

    Returns:
        ndarray: ``x`` がスカラーなら同じ dtype の 0 次元配列、配列ならそのもの。
    """
    if np.isscalar(x):
        return np.array(x)
    return x
