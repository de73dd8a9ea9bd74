"""mini_dl の心臓部: 変数 ``Variable``、関数 ``Function``、四則演算、テンソルの形を変える関数と行列積。

第3章で作り、第4章で逆伝播を自動化し、第5章でメモリとモード（``Config``・``no_grad``）を、
第6章で演算子と四則演算を、第7章で高階微分（``create_graph``）を、第8章でテンソルの形を扱う関数
（reshape・transpose・sum・添字・行列積）と ``Parameter``（第9章）を加えた形です。
"""
import contextlib
import heapq
import itertools
import weakref

import numpy as np

from mini_dl import cuda


class Config:
    """mini_dl 全体の設定です。

    Attributes:
        enable_backprop: ``True`` なら、関数を呼ぶたびに逆伝播のためのつながり
            （計算グラフ）を記録します。推論だけのときは ``False`` にしてメモリを節約します。
    """

    enable_backprop = True


@contextlib.contextmanager
def using_config(name, value):
    """``with`` ブロックの中だけ、``Config`` の設定 ``name`` を ``value`` に変えます。

    ブロックを抜けると（例外で抜けても）元の値に戻ります。

    Args:
        name (str): 設定の名前（例: ``"enable_backprop"``）。
        value: ブロックの中での値。

    Raises:
        AttributeError: ``Config`` にない名前を渡したとき。
    """
    if not hasattr(Config, name):
        raise AttributeError(f"Config に設定 {name!r} はありません")
    old_value = getattr(Config, name)
    setattr(Config, name, value)
    try:
        yield
    finally:
        setattr(Config, name, old_value)


def no_grad():
    """計算グラフを作らないモードにします（``with mini_dl.no_grad():`` と使います）。"""
    return using_config("enable_backprop", False)


class Variable:
    """値（配列）とその勾配を入れておく「箱」です。

    Args:
        data: 中身となる配列。``numpy.ndarray``（GPU なら ``cupy.ndarray``）、
            NumPy のスカラー（同じ dtype の 0 次元配列になります）、
            Python の数値（``float32`` の 0 次元配列になります）、または ``None``。
        name: 変数の名前（計算グラフの表示などに使います）。

    Attributes:
        data: 中身の配列。
        grad (Variable): 逆伝播で求めた勾配（``data`` と同じ shape）。求める前は ``None``。
        creator (Function): この変数を作った関数。入力として作った変数なら ``None``。
        generation (int): 世代。入力から何段目の関数で作られたかを表します。
        name: 変数の名前。

    Raises:
        TypeError: ``data`` が配列でも数値でもないとき。
    """

    # ndarray と Variable の演算（ndarray が左）で、Variable の演算子を優先させます
    __array_priority__ = 200

    def __init__(self, data, name=None):
        if isinstance(data, cuda.array_types) or data is None:
            pass  # 配列はそのまま入れる（いちばんよくある場合なので、最初に調べる）
        elif isinstance(data, np.generic):
            data = np.asarray(data)
        elif isinstance(data, (int, float)) and not isinstance(data, bool):
            data = np.array(data, dtype=np.float32)
        else:
            raise TypeError(
                f"Variable の data には ndarray か数値を渡してください"
                f"（受け取った型: {type(data).__name__}）"
            )
        self.data = data
        self.name = name
        self.grad = None
        self.creator = None
        self.generation = 0

    @property
    def shape(self):
        """中身の配列の shape です。"""
        return self.data.shape

    @property
    def ndim(self):
        """中身の配列の次元数です。"""
        return self.data.ndim

    @property
    def size(self):
        """中身の配列の要素数です。"""
        return self.data.size

    @property
    def dtype(self):
        """中身の配列の dtype です。"""
        return self.data.dtype

    @property
    def T(self):
        """転置（軸の順番をすべて逆にしたもの）です。"""
        return transpose(self)

    def reshape(self, *shape):
        """shape を変えた変数を返します（``x.reshape(2, 3)`` と ``x.reshape((2, 3))`` のどちらでも）。"""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return reshape(self, shape)

    def transpose(self, *axes):
        """軸を並べ替えた変数を返します（引数なしなら順番をすべて逆に）。"""
        if len(axes) == 0:
            axes = None
        elif len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = axes[0]
        return transpose(self, axes)

    def sum(self, axis=None, keepdims=False):
        """要素の和を返します。"""
        return sum(self, axis, keepdims)

    def __getitem__(self, slices):
        return get_item(self, slices)

    def to_cpu(self):
        """中身の配列を CPU（NumPy）に移します。自分自身を返します。"""
        if self.data is not None:
            self.data = cuda.as_numpy(self.data)
        return self

    def to_gpu(self):
        """中身の配列を GPU（CuPy）に移します（使える GPU が無ければ ``RuntimeError``）。自分自身を返します。"""
        if self.data is not None:
            self.data = cuda.as_cupy(self.data)
        return self

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        if self.data is None:
            return "variable(None)"
        body = str(self.data).replace("\n", "\n" + " " * len("variable("))
        return f"variable({body})"

    def __neg__(self):
        return neg(self)

    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __pow__(self, c):
        return pow(self, c)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def set_creator(self, func):
        """この変数を作った関数 ``func`` を記録し、世代を ``func`` の世代 + 1 にします。"""
        self.creator = func
        self.generation = func.generation + 1

    def cleargrad(self):
        """勾配を消します（同じ変数で別の計算を微分し直す前に呼びます）。"""
        self.grad = None

    def backward(self, retain_grad=False, create_graph=False):
        """この変数から計算グラフをさかのぼり、入力側の変数の ``grad`` を求めます。

        関数は世代（generation）の大きい順、つまり出力に近い順に 1 回ずつ呼びます。
        同じ変数に複数の道から勾配が届いたときは、足し合わせます。

        ``grad`` が未設定なら、出発点の勾配を 1 とします。これができるのは要素が
        1 個の変数（損失など）だけです。それ以外の変数から始めるときは、先に
        ``grad`` に出力側の勾配を入れておきます（PyTorch と同じ規則です）。

        Args:
            retain_grad (bool): ``False`` なら、途中の変数（関数の出力）の勾配は使い終わったら
                消し、メモリを節約します。残るのは入力側の変数（``creator`` が ``None``）の勾配です。
            create_graph (bool): ``True`` なら、逆伝播の計算そのものも計算グラフに記録します。
                求めた ``grad`` をさらに微分できる（高階微分）ようになります。

        Raises:
            ValueError: ``grad`` が未設定で ``data`` の要素が 1 個ではないとき、
                または ``grad`` の shape が ``data`` と違うとき。
        """
        if self.grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward() を grad なしで呼べるのは、要素が 1 個の変数だけです"
                    f"（この変数の shape: {self.data.shape}）。"
                    f"先に grad に出力側の勾配を入れてください。"
                )
            xp = cuda.get_array_module(self.data)
            self.grad = Variable(xp.ones_like(self.data))
        elif not isinstance(self.grad, Variable):
            self.grad = Variable(as_array(self.grad))
        if self.grad.shape != self.data.shape:
            raise ValueError(
                f"grad の shape {self.grad.shape} が data の shape {self.data.shape} と違います"
            )

        funcs = []  # (-世代, 追加した順番, 関数) のヒープ: 世代の大きい関数から取り出す
        seen = set()
        order = itertools.count()

        def add_func(f):
            if f not in seen:
                seen.add(f)
                heapq.heappush(funcs, (-f.generation, next(order), f))

        if self.creator is not None:
            add_func(self.creator)
        # 逆伝播の計算そのものを計算グラフに記録するのは、create_graph=True のときだけ
        with using_config("enable_backprop", create_graph):
            while funcs:
                _, _, f = heapq.heappop(funcs)
                outputs = [ref() for ref in f.outputs]  # 弱参照から出力を取り出す（消えていれば None）
                gys = [_output_grad(f, i, y) for i, y in enumerate(outputs)]
                gxs = f.backward(*gys)
                if not isinstance(gxs, tuple):
                    gxs = (gxs,)
                if len(gxs) != len(f.inputs):
                    raise ValueError(
                        f"{type(f).__name__}.backward は入力の数（{len(f.inputs)} 個）だけ勾配を返します"
                        f"（返ってきた数: {len(gxs)} 個）"
                    )
                for x, gx in zip(f.inputs, gxs):
                    if gx is None:
                        continue  # 微分しない入力（正解ラベルなど）の勾配は None
                    if not isinstance(gx, Variable):
                        gx = Variable(as_array(gx))
                    if gx.shape != x.shape:
                        raise ValueError(
                            f"{type(f).__name__}.backward が返した勾配の shape {gx.shape} が、"
                            f"入力の shape {x.shape} と違います"
                        )
                    if x.grad is None:
                        x.grad = gx
                    else:
                        x.grad = x.grad + gx  # 複数の道から届いた勾配は足し合わせる
                    if x.creator is not None:
                        add_func(x.creator)

                if not retain_grad:
                    for y in outputs:
                        if y is not None:
                            y.grad = None  # 途中の変数の勾配は使い終わったので消す


class Parameter(Variable):
    """学習で更新する変数（重みやバイアス）です。

    中身は ``Variable`` と同じです。型で区別できるので、``Layer`` は属性のうち
    ``Parameter`` のものだけを「パラメータ」として集めます。
    """


def _output_grad(f, i, y):
    """関数 ``f`` の ``i`` 番目の出力 ``y`` の勾配。使われなかった出力からは 0 が流れてきたとみなします。"""
    if y is not None:
        if y.grad is not None:
            return y.grad
        return Variable(cuda.get_array_module(y.data).zeros_like(y.data))
    shape, dtype = f.output_specs[i]  # 出力が消えている（出力が複数の関数でだけ起こります）
    xp = cuda.get_array_module(f.inputs[0].data)
    return Variable(xp.zeros(shape, dtype=dtype))


class Function:
    """すべての関数（演算）の基底クラスです。

    ``Function`` のインスタンスを 1 個以上の入力に適用すると、中身の配列を ``forward`` で
    計算し、結果を新しい ``Variable`` に入れて返します（出力が複数ならリスト）。
    入力には ``Variable`` のほか、配列や数値も渡せます（``Variable`` に包みます）。

    逆伝播が有効（``Config.enable_backprop``）なら、入力・出力・世代を覚え、出力に
    「自分を作った関数」として自分を記録します。これが計算グラフになり、``Variable.backward``
    がたどります。出力は弱参照（``weakref``）で持つので、関数と出力の間に循環参照はできません。
    具体的な計算はサブクラスの ``forward``（配列の計算）と ``backward``（``Variable`` の計算）に書きます。
    """

    def __call__(self, *inputs):
        variables, xs, generation = [], [], 0
        for x in inputs:  # 入力を Variable に揃え、中身の配列を集めながら、いちばん大きな世代も求める
            if not isinstance(x, Variable):
                x = _as_input(self, x)
            variables.append(x)
            xs.append(x.data)
            if x.generation > generation:
                generation = x.generation
        ys = self.forward(*xs)
        # NumPy のスカラーは、Variable が同じ dtype の 0 次元配列にする
        outputs = [Variable(y) for y in ys] if isinstance(ys, tuple) else [Variable(ys)]

        if Config.enable_backprop:
            self.generation = generation
            for output in outputs:
                output.set_creator(self)  # 出力に「自分を作った関数」を記録する
            self.inputs = variables
            self.outputs = list(map(weakref.ref, outputs))
            if len(outputs) > 1:
                # 出力が複数なら、使われずに消えた出力にも勾配 0 を作れるように、shape と dtype を覚えておく
                self.output_specs = [(y.shape, y.dtype) for y in outputs]
        return outputs if len(outputs) > 1 else outputs[0]

    def forward(self, *xs):
        """順伝播: 入力の配列から出力の配列（複数ならタプル）を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.forward が実装されていません")

    def backward(self, *gys):
        """逆伝播: 出力側の勾配（``Variable``）から、入力ごとの勾配（複数ならタプル）を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.backward が実装されていません")


def _as_input(func, x):
    """``Function`` の入力を ``Variable`` に揃えます。変換できない型なら、関数名と型を挙げて知らせます。"""
    if isinstance(x, Variable):
        return x
    if isinstance(x, (*cuda.array_types, np.generic, int, float)) and not isinstance(x, bool):
        return Variable(x)  # Python の数は float32 の 0 次元配列になる
    raise TypeError(
        f"{type(func).__name__} には Variable か ndarray を渡してください"
        f"（受け取った型: {type(x).__name__}）"
    )


def as_array(x):
    """スカラーを 0 次元配列に直します（配列はそのまま返します）。

    NumPy では 0 次元配列どうしの計算結果が ``numpy.float32`` のような
    スカラーになることがあります。``Variable`` は配列だけを入れる箱なので、
    ``Function`` の出力をこの関数で配列に揃えます。dtype は変わりません。

    Args:
        x: 配列かスカラー。

    Returns:
        ndarray: ``x`` が配列ならそのもの、スカラーなら同じ dtype の 0 次元配列。
    """
    if isinstance(x, cuda.array_types):
        return x
    return np.array(x)


def as_variable(obj):
    """``Variable`` はそのまま、配列や数値は ``Variable`` に包んで返します。

    Python の数は、``Variable`` と同じ規則で float32 の 0 次元配列になります。

    Args:
        obj: ``Variable``、配列、または数値。

    Returns:
        Variable: ``obj`` を中身とする変数（``obj`` が ``Variable`` ならそのもの）。
    """
    if isinstance(obj, Variable):
        return obj
    return Variable(obj)


def as_operands(x0, x1):
    """2 項演算の入力を ``Variable`` に揃えます。

    Python の数値は、相手と同じ配列モジュール（NumPy か CuPy）の、NumPy の規則どおりの dtype の
    配列にします。``x * 2.0`` は、``x`` が float16 なら float16、float32 なら float32 のままです
    （NumPy 2 の規則では、0 次元でも配列にした数値は型を持つ値として扱われ、相手を昇格させるためです）。

    Args:
        x0: 左の入力（``Variable``、配列、または数値）。
        x1: 右の入力（同上）。

    Returns:
        tuple[Variable, Variable]: 揃えた 2 つの入力。

    Raises:
        ValueError: 2 つの shape がブロードキャストできないとき。
    """
    if not isinstance(x1, Variable):  # よくある「Variable と Variable」は、ここを飛ばす
        x1 = Variable(_scalar_like(x1, x0)) if _is_python_number(x1) and isinstance(x0, Variable) else as_variable(x1)
    if not isinstance(x0, Variable):
        x0 = Variable(_scalar_like(x0, x1)) if _is_python_number(x0) else as_variable(x0)
    if x0.data.shape != x1.data.shape:
        try:
            np.broadcast_shapes(x0.shape, x1.shape)
        except ValueError:
            raise ValueError(
                f"shape {x0.shape} と {x1.shape} はブロードキャストできません"
                f"（後ろの軸から比べて、長さが同じか、どちらかが 1 である必要があります）"
            ) from None
    return x0, x1


def _is_python_number(c):
    return isinstance(c, (int, float)) and not isinstance(c, (bool, np.generic))


def _scalar_like(c, x):
    """Python の数値 ``c`` を、変数 ``x`` と同じ配列モジュール・NumPy の規則どおりの dtype の 0 次元配列にします。"""
    xp = cuda.get_array_module(x.data)
    return xp.asarray(c, dtype=np.result_type(x.dtype, c))


# --- 形を合わせる関数（ブロードキャストの逆伝播に使います） ---------------------------------

def sum_to_array(x, shape):
    """配列 ``x`` の要素を足し合わせて、``shape`` にします（ブロードキャストの逆）。

    Args:
        x: 配列。
        shape (tuple): 結果の shape。``x`` の shape にブロードキャストできる形。

    Returns:
        ndarray: shape が ``shape`` の配列。
    """
    lead = x.ndim - len(shape)  # 前に足された軸の数
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    y = x.sum(axis=axes, keepdims=True) if axes else x
    if lead > 0:
        y = y.reshape(shape)  # (1, ..., 1, *shape) -> shape
    return y


class BroadcastTo(Function):
    """配列を ``shape`` にブロードキャストします。逆伝播は ``sum_to`` です。"""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.broadcast_to(x, self.shape)

    def backward(self, gy):
        return sum_to(gy, self.inputs[0].shape)


class SumTo(Function):
    """要素を足し合わせて ``shape`` にします。逆伝播は ``broadcast_to`` です。"""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        return sum_to_array(x, self.shape)

    def backward(self, gy):
        return broadcast_to(gy, self.inputs[0].shape)


def broadcast_to(x, shape):
    """``x`` を ``shape`` にブロードキャストします（shape が同じなら ``x`` をそのまま返します）。"""
    if x.shape == tuple(shape):
        return as_variable(x)
    return BroadcastTo(shape)(x)


def sum_to(x, shape):
    """``x`` の要素を足し合わせて ``shape`` にします（shape が同じなら ``x`` をそのまま返します）。"""
    if x.shape == tuple(shape):
        return as_variable(x)
    return SumTo(shape)(x)


# --- 四則演算 ------------------------------------------------------------------------------

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
        c (int | float): 指数（定数）。

    Raises:
        TypeError: ``c`` が Python の数値でないとき（``Variable`` の指数には対応していません）。
    """
    if not isinstance(c, (int, float)) or isinstance(c, bool):
        raise TypeError(f"** の指数には Python の数値を渡してください（受け取った型: {type(c).__name__}）")
    return Pow(c)(x)


# --- テンソルの形を変える関数と行列積（第8章） -------------------------------------------

class Reshape(Function):
    """要素の並びはそのままに、shape だけを変えます。逆伝播は元の shape に戻すだけです。"""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        return x.reshape(self.shape)

    def backward(self, gy):
        return reshape(gy, self.inputs[0].shape)


class Transpose(Function):
    """軸を並べ替えます（``axes`` が ``None`` なら順番をすべて逆に）。逆伝播は逆の並べ替えです。"""

    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.transpose(x, self.axes)

    def backward(self, gy):
        if self.axes is None:
            return transpose(gy)
        inverse = tuple(int(i) for i in np.argsort([a % gy.ndim for a in self.axes]))
        return transpose(gy, inverse)


class Sum(Function):
    """要素の和（``axis`` で軸を選べます）。逆伝播は、勾配を元の shape にブロードキャストします。"""

    def __init__(self, axis=None, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        x = self.inputs[0]
        gy = reshape(gy, _keepdims_shape(x.shape, self.axis, self.keepdims, gy.shape))
        return broadcast_to(gy, x.shape)


def _keepdims_shape(x_shape, axis, keepdims, y_shape):
    """``sum(axis)`` で消えた軸を長さ 1 で戻した shape（ブロードキャストで元の shape に広げられる形）。"""
    if keepdims or axis is None and len(y_shape) == len(x_shape):
        return y_shape
    axes = range(len(x_shape)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    axes = {a % len(x_shape) for a in axes}
    return tuple(1 if i in axes else n for i, n in enumerate(x_shape))


class GetItem(Function):
    """添字で要素を取り出します（``x[1]``、``x[:, 0]``、``x[[0, 0, 2]]`` など）。

    逆伝播では、取り出した場所に勾配を戻します。同じ要素を何回も取り出したときは、
    その回数分の勾配を足し合わせます（``GetItemGrad``）。
    """

    def __init__(self, slices):
        self.slices = slices

    def forward(self, x):
        return x[self.slices]

    def backward(self, gy):
        x = self.inputs[0]
        return GetItemGrad(self.slices, x.shape)(gy)


class GetItemGrad(Function):
    """``GetItem`` の逆伝播: 形 ``in_shape`` の 0 の配列の ``slices`` の場所に、勾配を足し込みます。"""

    def __init__(self, slices, in_shape):
        self.slices = slices
        self.in_shape = in_shape

    def forward(self, gy):
        xp = cuda.get_array_module(gy)
        gx = xp.zeros(self.in_shape, dtype=gy.dtype)
        cuda.scatter_add(gx, self.slices, gy)  # 同じ添字が何回出てきても、その分だけ足す
        return gx

    def backward(self, ggx):
        return get_item(ggx, self.slices)


class MatMul(Function):
    r"""行列積 :math:`Y = X W`（NumPy の ``@`` と同じ規則: 1 次元や、前の軸がバッチの配列も扱います）。

    勾配は :math:`\frac{\partial L}{\partial X} = G W^\top,\ \frac{\partial L}{\partial W} = X^\top G`
    （:math:`G = \frac{\partial L}{\partial Y}`）です。バッチの軸がブロードキャストされたときは、
    ``sum_to`` で入力の shape に戻します。

    Shape:
        X: (..., N, D)、W: (..., D, H) -> Y: (..., N, H)。1 次元の X は (1, D)、W は (D, 1) とみなします。
    """

    def forward(self, x, W):
        y = x @ W
        return y

    def backward(self, gy):
        x, W = self.inputs
        x2 = x if x.ndim > 1 else reshape(x, (1, -1))  # (D,) -> (1, D)
        W2 = W if W.ndim > 1 else reshape(W, (-1, 1))  # (D,) -> (D, 1)
        batch = np.broadcast_shapes(x2.shape[:-2], W2.shape[:-2])
        g = reshape(gy, batch + (x2.shape[-2], W2.shape[-1]))  # (..., N, H)
        gx = sum_to(matmul(g, _swap_last(W2)), x2.shape)  # (..., N, H) @ (..., H, D) -> (..., N, D)
        gW = sum_to(matmul(_swap_last(x2), g), W2.shape)  # (..., D, N) @ (..., N, H) -> (..., D, H)
        return reshape(gx, x.shape), reshape(gW, W.shape)


def _swap_last(x):
    """最後の 2 つの軸を入れ替えます（バッチの行列それぞれの転置）。"""
    axes = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return transpose(x, axes)


def reshape(x, shape):
    """``x`` の shape を ``shape`` に変えます（``-1`` は残りの要素数から決まります）。"""
    if x.shape == tuple(shape):
        return as_variable(x)
    return Reshape(tuple(shape))(x)


def transpose(x, axes=None):
    """``x`` の軸を ``axes`` の順に並べ替えます（``None`` なら順番をすべて逆に）。"""
    return Transpose(None if axes is None else tuple(axes))(x)


def sum(x, axis=None, keepdims=False):
    """``x`` の要素の和を計算します（``axis`` は int か int のタプル）。"""
    return Sum(axis, keepdims)(x)


def get_item(x, slices):
    """``x[slices]`` を取り出します（勾配は取り出した場所に戻ります）。"""
    return GetItem(slices)(x)


def matmul(x, W):
    """行列積 ``x @ W`` を計算します（NumPy の ``@`` と同じ shape の規則）。

    Args:
        x: shape (..., N, D) または (D,) の ``Variable`` または配列。
        W: shape (..., D, H) または (D,) の ``Variable`` または配列。

    Returns:
        Variable: 行列積。2 次元どうしなら shape (N, H)。

    Raises:
        ValueError: 0 次元の入力や、``x`` の最後の軸と ``W`` の行の長さが違うとき。
    """
    x, W = as_variable(x), as_variable(W)
    if x.ndim == 0 or W.ndim == 0:
        raise ValueError(f"matmul に 0 次元の配列は使えません（受け取った shape: {x.shape} と {W.shape}）")
    d_w = W.shape[0] if W.ndim == 1 else W.shape[-2]
    if x.shape[-1] != d_w:
        raise ValueError(
            f"matmul の shape が合いません: {x.shape} @ {W.shape}"
            f"（左の最後の軸の長さ {x.shape[-1]} と右の行数 {d_w} が同じである必要があります）"
        )
    return MatMul()(x, W)
