"""テンソルの形を扱う関数（第8章）: ブロードキャスト・reshape・transpose・sum・添字・行列積・最大と最小。

どの関数も、逆伝播では「勾配を入力と同じ shape で返す」ように作ります。
"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Function, Variable, as_variable


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
        self.slices = _index_like(self.slices, x)  # GPU の配列を CPU の添字配列で引かないように
        return x[self.slices]

    def backward(self, gy):
        x = self.inputs[0]
        return GetItemGrad(self.slices, x.shape)(gy)


def _index_like(slices, x):
    """添字に含まれる整数や真偽値の配列を、``x`` と同じ配列モジュール（NumPy か CuPy）の配列にします。"""
    xp = cuda.get_array_module(x)
    if xp is np:
        return slices

    def move(s):
        return xp.asarray(s) if isinstance(s, (np.ndarray, list)) else s

    return tuple(move(s) for s in slices) if isinstance(slices, tuple) else move(slices)


class GetItemGrad(Function):
    """``GetItem`` の逆伝播: 形 ``in_shape`` の 0 の配列の ``slices`` の場所に、勾配を足し込みます。"""

    def __init__(self, slices, in_shape):
        self.slices = slices
        self.in_shape = in_shape

    def forward(self, gy):
        xp = cuda.get_array_module(gy)
        gx = xp.zeros(self.in_shape, dtype=gy.dtype)
        xp.add.at(gx, self.slices, gy)  # 同じ添字が何回出てきても、その分だけ足す（CuPy にも add.at があります）
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


# --- 最大・最小・切り詰め（第8章） ------------------------------------------------------------

class Max(Function):
    """最大値（``axis`` で軸を選べます）。

    勾配は最大値をとった要素にだけ流れます。最大値の要素が複数あるときは、勾配を等分します。
    """

    def __init__(self, axis=None, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        return x.max(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        return _extreme_grad(self, gy)


class Min(Max):
    """最小値（``axis`` で軸を選べます）。勾配の流れ方は ``Max`` と同じです。"""

    def forward(self, x):
        return x.min(axis=self.axis, keepdims=self.keepdims)


def _extreme_grad(f, gy):
    """``Max``・``Min`` の逆伝播: 選ばれた要素（同点なら等分）にだけ ``gy`` を流します。"""
    x, y = f.inputs[0], f.outputs[0]()
    shape = _keepdims_shape(x.shape, f.axis, f.keepdims, y.shape)
    hit = x.data == y.data.reshape(shape)  # (x の shape) 選ばれた要素なら True
    share = hit / hit.sum(axis=f.axis, keepdims=True)  # 同点の要素で等分する重み
    return broadcast_to(reshape(gy, shape), x.shape) * share.astype(x.dtype)


class Clip(Function):
    r"""値を :math:`[x_{min}, x_{max}]` に切り詰めます。範囲の外では勾配は 0 です。"""

    def __init__(self, x_min, x_max):
        self.x_min = x_min
        self.x_max = x_max

    def forward(self, x):
        xp = cuda.get_array_module(x)
        return xp.clip(x, self.x_min, self.x_max)

    def backward(self, gy):
        x = self.inputs[0].data
        mask = (x >= self.x_min) & (x <= self.x_max)
        return gy * mask.astype(gy.dtype)


def max(x, axis=None, keepdims=False):
    """``x`` の最大値を計算します（``axis`` は int か int のタプル）。"""
    return Max(axis, keepdims)(x)


def min(x, axis=None, keepdims=False):
    """``x`` の最小値を計算します（``axis`` は int か int のタプル）。"""
    return Min(axis, keepdims)(x)


def clip(x, x_min, x_max):
    """``x`` の各要素を ``x_min`` 以上 ``x_max`` 以下に切り詰めます。"""
    return Clip(x_min, x_max)(x)


# --- dtype の変換・平均・連結・条件による選択（第8章） ---------------------------------------

class AsType(Function):
    """dtype を ``dtype`` に変えます。逆伝播は、勾配を元の dtype に戻します。"""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        return x.astype(self.dtype, copy=False)

    def backward(self, gy):
        return astype(gy, self.inputs[0].dtype)


def astype(x, dtype):
    """``x`` の dtype を ``dtype`` に変えます（同じ dtype なら ``x`` をそのまま返します）。

    float16 で計算して float32 に戻す混合精度（第14章）や、勾配確認の float64 で使います。
    """
    x = as_variable(x)
    if x.dtype == np.dtype(dtype):
        return x
    return AsType(np.dtype(dtype))(x)


class Mean(Function):
    r"""平均 :math:`\frac{1}{n}\sum x`（``axis`` で軸を選べます）。逆伝播は勾配を :math:`1/n` 倍して広げます。"""

    def __init__(self, axis=None, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        return x.mean(axis=self.axis, keepdims=self.keepdims)  # float32 の平均は float32 のまま

    def backward(self, gy):
        x = self.inputs[0]
        n = x.size // gy.size if gy.size else 1  # 平均をとった要素の数（このモジュールの max は F.max なので使わない）
        gy = reshape(gy, _keepdims_shape(x.shape, self.axis, self.keepdims, gy.shape))
        return broadcast_to(gy, x.shape) * (1 / n)


def mean(x, axis=None, keepdims=False):
    """``x`` の要素の平均を計算します（``axis`` は int か int のタプル。float32 の ``x`` なら float32）。"""
    return Mean(axis, keepdims)(x)


class Concat(Function):
    """複数の入力を軸 ``axis`` に沿ってつなげます。逆伝播は、勾配を元の長さごとに切り分けます。"""

    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, *xs):
        xp = cuda.get_array_module(xs[0])
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        axis = self.axis % gy.ndim
        bounds = np.cumsum([x.shape[axis] for x in self.inputs])
        starts = [0, *bounds[:-1]]
        index = (slice(None),) * axis
        return tuple(get_item(gy, index + (slice(int(a), int(b)),)) for a, b in zip(starts, bounds))


def concat(xs, axis=0):
    """``Variable``（か配列）のリスト ``xs`` を、軸 ``axis`` に沿ってつなげます（``numpy.concatenate`` と同じ）。

    Raises:
        ValueError: ``xs`` が空のとき、または ``axis`` 以外の軸の長さがそろっていないとき。
    """
    xs = [as_variable(x) for x in xs]
    if not xs:
        raise ValueError("concat には 1 個以上の入力を渡してください")
    ndim = xs[0].ndim
    axis_ = axis % ndim if ndim else 0
    rest = {tuple(n for i, n in enumerate(x.shape) if i != axis_) for x in xs}
    if len(rest) > 1 or any(x.ndim != ndim for x in xs):
        raise ValueError(f"concat の入力は、axis={axis} 以外の軸の長さをそろえてください（受け取った shape: {[x.shape for x in xs]}）")
    return Concat(axis)(*xs)


def stack(xs, axis=0):
    """同じ shape の ``xs`` を、新しい軸 ``axis`` に沿って積み重ねます（``numpy.stack`` と同じ）。

    それぞれに長さ 1 の軸を足して（``reshape``）から ``concat`` するので、逆伝播も両者の組み合わせです。

    Raises:
        ValueError: ``xs`` が空のとき、または shape がそろっていないとき。
    """
    xs = [as_variable(x) for x in xs]
    if not xs or len({x.shape for x in xs}) != 1:
        raise ValueError(f"stack には同じ shape の入力を 1 個以上渡してください（受け取った shape: {[x.shape for x in xs]}）")
    ndim = xs[0].ndim + 1  # 積み重ねたあとの次元数
    if not -ndim <= axis < ndim:
        raise ValueError(f"stack の axis は {-ndim} 以上 {ndim - 1} 以下にします（受け取った値: {axis}）")
    axis = axis % ndim
    shape = xs[0].shape[:axis] + (1,) + xs[0].shape[axis:]  # (..., 1, ...) の新しい軸
    return concat([reshape(x, shape) for x in xs], axis=axis)


class Where(Function):
    """``condition`` が真の場所は ``x0``、偽の場所は ``x1`` の値をとります（``numpy.where`` と同じ）。

    ``condition`` は微分しない真偽値の配列です。勾配は、選ばれたほうの入力にだけ流れます。
    """

    def __init__(self, condition):
        self.condition = condition

    def forward(self, x0, x1):
        xp = cuda.get_array_module(x0)
        return xp.where(self.condition, x0, x1)

    def backward(self, gy):
        x0, x1 = self.inputs
        zero = gy.data.dtype.type(0)
        gx0 = where(self.condition, gy, zero)
        gx1 = where(self.condition, zero, gy)
        return sum_to(gx0, x0.shape), sum_to(gx1, x1.shape)


def where(condition, x0, x1):
    """``condition`` が真なら ``x0``、偽なら ``x1`` を選びます（shape はブロードキャストします）。

    Args:
        condition: 真偽値の配列（``Variable`` なら中身を使います。微分はしません）。
        x0, x1: 選ぶ値（``Variable``、配列、または数）。数は相手の ``Variable`` の dtype にそろえます。

    Returns:
        Variable: shape は 3 つをブロードキャストした形。
    """
    ref = x0 if isinstance(x0, Variable) else x1 if isinstance(x1, Variable) else None
    x0, x1 = _operand_like(x0, ref), _operand_like(x1, ref)
    xp = cuda.get_array_module(x0.data)
    cond = xp.asarray(condition.data if isinstance(condition, Variable) else condition)
    if cond.dtype != bool:
        raise TypeError(f"where の condition には真偽値の配列を渡してください（受け取った dtype: {cond.dtype}）")
    np.broadcast_shapes(cond.shape, x0.shape, x1.shape)  # ブロードキャストできなければ ValueError
    return Where(cond)(x0, x1)


def _operand_like(c, ref):
    """数（Python か NumPy のスカラー）は ``ref`` と同じ dtype・配列モジュールの 0 次元配列に、ほかは ``Variable`` にします。"""
    if ref is not None and isinstance(c, (int, float, np.generic)) and not isinstance(c, bool):
        xp = cuda.get_array_module(ref.data)
        return Variable(xp.asarray(c, dtype=ref.dtype))
    return as_variable(c)
