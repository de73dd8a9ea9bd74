"""``Variable`` に演算子とテンソルのメソッドを取り付けます（第8章）。

``Variable`` は ``mini_dl.core`` に、演算子が呼ぶ関数（``add``・``reshape`` など）は
``mini_dl.functions`` にあります。``core`` が ``functions`` を import すると循環してしまうので、
関数をすべて定義し終えたあとで、このモジュールの ``setup_variable`` がメソッドを取り付けます
（DeZero の ``setup_variable``、JAX の配列のメソッドと同じやり方です）。``mini_dl`` を import すると
1 回だけ呼ばれます。
"""
from mini_dl.core import Variable
from mini_dl.functions.math import add, div, mul, neg, pow, sub
from mini_dl.functions.tensor import astype, get_item, matmul, reshape, sum, transpose


def setup_variable():
    """``Variable`` に演算子（``+ - * / ** @``、単項の ``-``、添字）とテンソルのメソッドを取り付けます。

    どのメソッドも、対応する関数を呼ぶだけです。``x + y`` は ``add(x, y)``、``2 - x`` は
    ``sub(2, x)``（左が ``Variable`` でないときは反射演算子 ``__rsub__`` が呼ばれます）、
    ``x.reshape(2, 3)`` は ``reshape(x, (2, 3))`` になります。
    """
    Variable.__neg__ = neg
    Variable.__add__ = add
    Variable.__radd__ = lambda self, other: add(other, self)
    Variable.__sub__ = sub
    Variable.__rsub__ = lambda self, other: sub(other, self)
    Variable.__mul__ = mul
    Variable.__rmul__ = lambda self, other: mul(other, self)
    Variable.__truediv__ = div
    Variable.__rtruediv__ = lambda self, other: div(other, self)
    Variable.__pow__ = pow
    Variable.__matmul__ = matmul
    Variable.__rmatmul__ = lambda self, other: matmul(other, self)
    Variable.__getitem__ = get_item
    Variable.T = property(transpose, doc="転置（軸の順番をすべて逆にしたもの）です。")
    Variable.reshape = _reshape
    Variable.transpose = _transpose
    Variable.sum = sum
    Variable.astype = astype


def _reshape(self, *shape):
    """shape を変えた変数を返します（``x.reshape(2, 3)`` と ``x.reshape((2, 3))`` のどちらでも）。"""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return reshape(self, shape)


def _transpose(self, *axes):
    """軸を並べ替えた変数を返します（引数なしなら順番をすべて逆に）。"""
    if len(axes) == 0:
        axes = None
    elif len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = axes[0]
    return transpose(self, axes)
