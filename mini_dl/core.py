"""mini_dl の心臓部: 変数 ``Variable`` と関数 ``Function``。

第3章で作り、第4章で逆伝播を自動化した形です。このあとの章で、メモリ管理・
演算子の多重定義・高階微分へと少しずつ育てていきます。
"""
import heapq
import itertools

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
        self.creator = None
        self.generation = 0

    def set_creator(self, func):
        """この変数を作った関数 ``func`` を記録し、世代を ``func`` の世代 + 1 にします。"""
        self.creator = func
        self.generation = func.generation + 1

    def cleargrad(self):
        """勾配を消します（同じ変数で別の計算を微分し直す前に呼びます）。"""
        self.grad = None

    def backward(self):
        """この変数から計算グラフをさかのぼり、途中のすべての変数の ``grad`` を求めます。

        関数は世代（generation）の大きい順、つまり出力に近い順に 1 回ずつ呼びます。
        同じ変数に複数の道から勾配が届いたときは、足し合わせます。

        ``grad`` が未設定なら、出発点の勾配を 1 とします。これができるのは要素が
        1 個の変数（損失など）だけです。それ以外の変数から始めるときは、先に
        ``grad`` に出力側の勾配を入れておきます（PyTorch と同じ規則です）。

        Raises:
            ValueError: ``grad`` が未設定で、``data`` の要素が 1 個ではないとき。
        """
        if self.grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward() を grad なしで呼べるのは、要素が 1 個の変数だけです"
                    f"（この変数の shape: {self.data.shape}）。"
                    f"先に grad に出力側の勾配を入れてください。"
                )
            xp = cuda.get_array_module(self.data)
            self.grad = xp.ones_like(self.data)

        funcs = []  # (-世代, 追加した順番, 関数) のヒープ: 世代の大きい関数から取り出す
        seen = set()
        order = itertools.count()

        def add_func(f):
            if f not in seen:
                seen.add(f)
                heapq.heappush(funcs, (-f.generation, next(order), f))

        if self.creator is not None:
            add_func(self.creator)
        while funcs:
            _, _, f = heapq.heappop(funcs)
            # 使われなかった出力（grad が None）からは、勾配 0 が流れてくるとみなします
            gys = [y.grad if y.grad is not None else cuda.get_array_module(y.data).zeros_like(y.data)
                   for y in f.outputs]
            gxs = f.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if len(gxs) != len(f.inputs):
                raise ValueError(
                    f"{type(f).__name__}.backward は入力の数（{len(f.inputs)} 個）だけ勾配を返します"
                    f"（返ってきた数: {len(gxs)} 個）"
                )
            for x, gx in zip(f.inputs, gxs):
                if x.grad is None:
                    x.grad = gx
                else:
                    x.grad = x.grad + gx  # 複数の道から届いた勾配は足し合わせる
                if x.creator is not None:
                    add_func(x.creator)


class Function:
    """すべての関数（演算）の基底クラスです。

    ``Function`` のインスタンスを 1 個以上の ``Variable`` に適用すると、中身の配列を
    ``forward`` で計算し、結果を新しい ``Variable`` に入れて返します（出力が複数なら
    リスト）。このとき、入力・出力・世代を覚え、出力に「自分を作った関数」として
    自分を記録します。これが計算グラフになり、``Variable.backward`` がたどります。
    具体的な計算はサブクラスの ``forward`` と ``backward`` に書きます。
    """

    def __call__(self, *inputs):
        for x in inputs:
            if not isinstance(x, Variable):
                raise TypeError(
                    f"{type(self).__name__} には Variable を渡してください"
                    f"（受け取った型: {type(x).__name__}）"
                )
        xs = [x.data for x in inputs]
        ys = self.forward(*xs)
        if not isinstance(ys, tuple):
            ys = (ys,)
        outputs = [Variable(as_array(y)) for y in ys]

        self.generation = max(x.generation for x in inputs)
        for output in outputs:
            output.set_creator(self)
        self.inputs = inputs
        self.outputs = outputs
        return outputs if len(outputs) > 1 else outputs[0]

    def forward(self, *xs):
        """順伝播: 入力の配列から出力の配列（複数ならタプル）を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.forward が実装されていません")

    def backward(self, *gys):
        """逆伝播: 出力側の勾配から、入力ごとの勾配（複数ならタプル）を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.backward が実装されていません")


class Square(Function):
    r"""2 乗 :math:`y = x^2`。微分は :math:`\frac{dy}{dx} = 2x` です。"""

    def forward(self, x):
        return x ** 2

    def backward(self, gy):
        x = self.inputs[0].data
        gx = 2 * x * gy
        return gx


class Exp(Function):
    r"""指数関数 :math:`y = e^x`。微分は :math:`\frac{dy}{dx} = e^x` です。"""

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.exp(x)

    def backward(self, gy):
        xp = cuda.get_array_module(gy)
        x = self.inputs[0].data
        gx = xp.exp(x) * gy
        return gx


class Add(Function):
    r"""足し算 :math:`y = x_0 + x_1`。どちらの入力についての微分も 1 です。

    入力の shape は同じでなければなりません（ブロードキャストする足し算は第8章で扱います）。
    """

    def forward(self, x0, x1):
        if x0.shape != x1.shape:
            raise ValueError(
                f"Add の 2 つの入力は同じ shape にしてください（受け取った shape: {x0.shape} と {x1.shape}）"
            )
        y = x0 + x1
        return y

    def backward(self, gy):
        return gy, gy


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


def add(x0, x1):
    """``Add()(x0, x1)`` の短縮形です。

    Args:
        x0 (Variable): 1 つ目の入力。
        x1 (Variable): 2 つ目の入力（``x0`` と同じ shape）。

    Returns:
        Variable: ``x0 + x1``。
    """
    return Add()(x0, x1)


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
