"""要素ごとのカーネル（第13章）: 足し算、バイアス+ReLU の融合、Adam の更新の融合。

どのカーネルも NumPy の参照実装（``*_reference``）と並べて置き、テストで突き合わせます。
カーネルの中の ``cuda`` は ``numba.cuda`` で、最初にカーネルを動かすときに ``_elementwise_kernels``
が（GPU が無ければシミュレータとして）読み込んで、このモジュールのグローバル変数に入れます。
"""
import functools
import math

import numpy as np

from mini_dl.kernels.launch import _check_array, _same_device, blocks_for, load_numba_cuda

THREADS = 256  # 1 次元のカーネルの、1 ブロックのスレッド数（32 の倍数: ワープを余らせない）


def add_kernel(x, y, out):
    """1 スレッドが 1 要素を足します（``x``・``y``・``out`` は 1 次元）。"""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x  # 大域の通し番号（cuda.grid(1) と同じ）
    if i < out.size:  # 最後のブロックのはみ出したスレッドは何もしない
        out[i] = x[i] + y[i]


def bias_relu_kernel(x, b, out):
    """2 次元のグリッド: x 方向が列、y 方向が行です。``out[r, c] = max(x[r, c] + b[c], 0)``。"""
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x  # x 方向 → 列（隣のスレッドが隣の番地）
    row = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y  # y 方向 → 行
    if row < out.shape[0] and col < out.shape[1]:
        z = x[row, col] + b[col]
        out[row, col] = z if z > 0 else 0


def adam_kernel(param, grad, m, v, lr, one_minus_beta1, one_minus_beta2, eps, m_scale, v_scale):
    """Adam の更新を 1 要素ずつ、その場で行います（p・g・m・v を 1 回ずつ読み、p・m・v を 1 回ずつ書く）。"""
    i = cuda.grid(1)
    if i < param.size:
        g = grad[i]
        mi = m[i] + one_minus_beta1 * (g - m[i])
        vi = v[i] + one_minus_beta2 * (g * g - v[i])
        m[i] = mi
        v[i] = vi
        param[i] -= lr * (mi * m_scale) / (math.sqrt(vi * v_scale) + eps)


@functools.lru_cache(maxsize=None)
def _elementwise_kernels():
    """要素ごとのカーネルを ``cuda.jit`` でコンパイルして返します（初回だけ）。"""
    global cuda
    cuda = load_numba_cuda()
    return cuda.jit(add_kernel), cuda.jit(bias_relu_kernel), cuda.jit(adam_kernel)


def add(x, y):
    """要素ごとの足し算 ``x + y`` をカーネルで計算します（同じ形の float32 の配列どうし）。

    Args:
        x (numpy.ndarray | cupy.ndarray): float32 の配列。
        y (numpy.ndarray | cupy.ndarray): ``x`` と同じ形の float32 の配列。

    Returns:
        numpy.ndarray | cupy.ndarray: ``x + y``（入力と同じ装置、float32）。

    Raises:
        TypeError: float32 でないとき、NumPy と GPU の配列が混ざっているとき。
        ValueError: 形が違うとき。
    """
    _check_array("x", x), _check_array("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x と y は同じ形にしてください（受け取った形は {x.shape} と {y.shape}）。")
    xp = _same_device(x, y)
    out = xp.empty(x.shape, dtype=np.float32)
    kernel = _elementwise_kernels()[0]
    # 1 要素に 1 スレッド: THREADS スレッドのブロックを、全要素を覆う数だけ並べる
    kernel[blocks_for(x.size, THREADS), THREADS](x.reshape(-1), y.reshape(-1), out.reshape(-1))
    return out


def add_reference(x, y):
    """``add`` の NumPy の参照実装です。"""
    return x + y


def bias_relu(x, b, block=(32, 8)):
    r"""バイアスの足し算と ReLU を 1 つのカーネルに融合します: :math:`\max(x + b, 0)`。

    融合しなければ ``x + b`` を一度メモリに書いて読み直すので、読み書きが 2 倍になります。

    Args:
        x (numpy.ndarray | cupy.ndarray): float32 の行列。
        b (numpy.ndarray | cupy.ndarray): float32 のバイアス。
        block (tuple[int, int]): 1 ブロックのスレッドの数 ``(x 方向, y 方向)``。

    Returns:
        numpy.ndarray | cupy.ndarray: ``max(x + b, 0)``（入力と同じ装置、float32）。

    Shape:
        ``x``: (N, D)、``b``: (D,)、戻り値: (N, D)。

    Raises:
        TypeError: float32 でないとき、NumPy と GPU の配列が混ざっているとき。
        ValueError: 形が合わないとき。
    """
    _check_array("x", x, ndim=2), _check_array("b", b, ndim=1)
    if b.shape[0] != x.shape[1]:
        raise ValueError(f"b の長さは x の列の数 {x.shape[1]} にしてください（受け取った形は {b.shape}）。")
    xp = _same_device(x, b)
    out = xp.empty(x.shape, dtype=np.float32)
    kernel = _elementwise_kernels()[1]
    # グリッドの x 方向で列を、y 方向で行を覆う（x 方向が隣の番地なので、読み書きがまとまる）
    grid = (blocks_for(x.shape[1], block[0]), blocks_for(x.shape[0], block[1]))
    kernel[grid, block](x, b, out)
    return out


def bias_relu_reference(x, b):
    """``bias_relu`` の NumPy の参照実装です。"""
    return np.maximum(x + b, np.float32(0))


def adam_update(param, grad, m, v, *, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, t=1):
    r"""Adam の更新を 1 つのカーネルで、``param``・``m``・``v`` の上でその場で行います（fused Adam）。

    ``mini_dl.optimizers.Adam`` と同じ式です。

    .. math::

        m \leftarrow m + (1 - \beta_1)(g - m),\quad v \leftarrow v + (1 - \beta_2)(g^2 - v),\quad
        p \leftarrow p - \eta \frac{m / (1 - \beta_1^t)}{\sqrt{v / (1 - \beta_2^t)} + \epsilon}

    Args:
        param, grad, m, v (numpy.ndarray | cupy.ndarray): 同じ形の、C の順に連続した float32 の配列。
        lr, beta1, beta2, eps (float): Adam のハイパーパラメータ。
        t (int): 何回目の更新か（1 から）。

    Returns:
        None: ``param``・``m``・``v`` を書き換えます。

    Raises:
        TypeError: float32 でないとき、NumPy と GPU の配列が混ざっているとき。
        ValueError: 形が違うとき、``t`` が 1 未満のとき。
    """
    for name, a in [("param", param), ("grad", grad), ("m", m), ("v", v)]:
        _check_array(name, a)
        if a.shape != param.shape:
            raise ValueError(f"{name} の形は param と同じ {param.shape} にしてください（受け取った形は {a.shape}）。")
    if t < 1:
        raise ValueError(f"t は 1 以上にしてください（受け取ったのは {t}）。")
    _same_device(param, grad, m, v)
    kernel = _elementwise_kernels()[2]
    # 係数は Python の数（float64）で計算してから float32 で渡します。カーネルの中で 1 - 0.999 を float32 で
    # 計算すると桁落ちで 1.3e-5 ずれるからです。float32 で渡すと、カーネルの中の計算も float32 のままです
    f32 = np.float32
    kernel[blocks_for(param.size, THREADS), THREADS](
        param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), f32(lr), f32(1 - beta1), f32(1 - beta2),
        f32(eps), f32(1 / (1 - beta1 ** t)), f32(1 / (1 - beta2 ** t)))


def adam_update_reference(param, grad, m, v, *, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, t=1):
    """``adam_update`` の NumPy の参照実装です（配列の演算を並べた、融合しない版）。"""
    m += (1 - beta1) * (grad - m)
    v += (1 - beta2) * (grad * grad - v)
    param -= lr * (m * (1 / (1 - beta1 ** t))) / (np.sqrt(v * (1 / (1 - beta2 ** t))) + eps)
