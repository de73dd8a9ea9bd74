"""正規化の関数（第11章）: バッチ正規化。"""
from mini_dl import cuda
from mini_dl.core import Config, Function, Variable
from mini_dl.functions.tensor import mean, reshape, sum


class BatchNorm(Function):
    r"""バッチ正規化: ミニバッチの平均と分散で正規化し、:math:`\gamma \hat{x} + \beta` を返します。

    学習中（``running_mean`` などを渡して ``training=True``）は、ミニバッチの統計で正規化し、
    推論用の移動平均 ``running_mean``・``running_var`` をその場で更新します。推論中は移動平均を使います。

    移動平均の ``momentum`` は DeZero・Chainer と同じく「古い値を残す割合」
    （:math:`\text{running} \leftarrow m \cdot \text{running} + (1 - m) \cdot \text{batch}`）で、
    PyTorch の ``momentum``（新しい値の割合）とは逆です。mini_dl の ``momentum=0.9`` が PyTorch の
    ``momentum=0.1``（既定値）にあたります。

    逆伝播は、ふつう（1 階の微分）は保存した :math:`\hat{x}` を使って配列で速く計算し、
    ``backward(create_graph=True)`` のときだけ、同じ式を ``Variable`` の計算で組み立てます。
    そのため 2 階微分（:math:`x`・:math:`\gamma`・:math:`\beta` のどれについても）ができます。

    Shape:
        x: (N, C) または (N, C, H, W)。gamma・beta・running_mean・running_var: (C,)
    """

    def __init__(self, running_mean, running_var, training, momentum, eps):
        self.running_mean = running_mean
        self.running_var = running_var
        self.training = training
        self.momentum = momentum
        self.eps = eps

    def forward(self, x, gamma, beta):
        xp = cuda.get_array_module(x)
        axes = (0,) if x.ndim == 2 else (0, 2, 3)  # 平均をとる軸: (N,) か (N, H, W)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)  # (C,) をブロードキャストする形
        if self.training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            n = x.size // gamma.size
            m = self.momentum
            self.running_mean *= m
            self.running_mean += (1 - m) * mean
            self.running_var *= m
            self.running_var += (1 - m) * var * (n / (n - 1 if n > 1 else 1))  # 不偏分散で移動平均をとる
        else:
            mean, var = self.running_mean.copy(), self.running_var  # 移動平均はあとで書き換わるので写しを持つ
        self.inv_std = 1 / xp.sqrt(var + x.dtype.type(self.eps))
        self.x_hat = (x - mean.reshape(shape)) * self.inv_std.reshape(shape)
        self.mean, self.axes, self.shape = mean, axes, shape
        return gamma.reshape(shape) * self.x_hat + beta.reshape(shape)

    def backward(self, gy):
        if Config.enable_backprop:  # create_graph=True: Variable の計算で組み立てて、2 階微分できるようにする
            return self._backward_graph(gy)
        gamma = self.inputs[1].data
        g = gy.data
        axes, shape, x_hat = self.axes, self.shape, self.x_hat
        gbeta = g.sum(axis=axes)
        ggamma = (g * x_hat).sum(axis=axes)
        if self.training:
            n = g.size // gamma.size
            gx = (g - (gbeta.reshape(shape) + x_hat * ggamma.reshape(shape)) / x_hat.dtype.type(n))
        else:
            gx = g
        gx = gx * (gamma * self.inv_std).reshape(shape)
        return Variable(gx), Variable(ggamma), Variable(gbeta)

    def _backward_graph(self, gy):
        """``backward`` と同じ式を、x・gamma・gy の ``Variable`` の計算で組み立てます（2 階微分用）。"""
        x, gamma = self.inputs[:2]
        axes, shape = self.axes, self.shape
        if self.training:  # 平均と分散も x の関数として微分する
            xc = x - mean(x, axis=axes, keepdims=True)
            inv_std = (mean(xc * xc, axis=axes, keepdims=True) + self.eps) ** -0.5  # (1, C) か (1, C, 1, 1)
            x_hat = xc * inv_std
            g = (gy - mean(gy, axis=axes, keepdims=True)
                 - x_hat * mean(gy * x_hat, axis=axes, keepdims=True))
        else:  # 推論中: 移動平均は定数
            inv_std = self.inv_std.reshape(shape)
            x_hat = (x - self.mean.reshape(shape)) * inv_std
            g = gy
        gx = g * reshape(gamma, shape) * inv_std
        return gx, sum(gy * x_hat, axis=axes), sum(gy, axis=axes)


def batch_norm(x, gamma, beta, running_mean, running_var, training=True, momentum=0.9, eps=1e-5):
    r"""バッチ正規化（``BatchNorm`` 関数の短縮形）。

    Args:
        x: 入力（(N, C) または (N, C, H, W)）。
        gamma, beta: (C,) のスケールとシフト（学習するパラメータ）。
        running_mean, running_var: (C,) の移動平均の配列。学習中（``training=True``）はその場で更新されます。
        training (bool): ``True`` ならミニバッチの統計で、``False`` なら移動平均で正規化します。
        momentum (float): 移動平均で **古い値を残す割合**
            （:math:`\text{running} \leftarrow m \cdot \text{running} + (1 - m) \cdot \text{batch}`）。
            DeZero・Chainer と同じ向きで、PyTorch の ``momentum``（新しい値の割合）とは逆です。
            既定の 0.9 が、PyTorch の既定値 ``momentum=0.1`` にあたります。
        eps (float): 分散に足す小さな数（0 での割り算を防ぎます）。

    Returns:
        Variable: ``x`` と同じ shape・dtype の出力。
    """
    return BatchNorm(running_mean, running_var, training, momentum, eps)(x, gamma, beta)
