r"""最適化手法（``mini_dl.optimizers``）。

使い方は ``opt = optimizers.Adam(lr=0.001).setup(model)`` として、``loss.backward()`` のあとに
``opt.update()`` を呼びます。更新は ``param.data`` をその場で書き換え、float32 のパラメータは
float32 のまま更新します（ハイパーパラメータは Python の数なので、NumPy 2 の規則で dtype を変えません）。

勾配の配列 ``param.grad.data`` には、最適化手法もフックも **決して書き込みません**。逆伝播では、1 つの
勾配が複数のパラメータに共有されたり（``b1 + b2`` の ``Add`` は同じ勾配を両方に渡します）、書き込めない
ビュー（``F.sum`` の逆伝播の ``broadcast_to``）だったりするからです。勾配を変えるフックは、新しい配列を
作って ``param.grad = Variable(新しい配列)`` と入れ直します。

PyTorch との対応: ``SGD``・``MomentumSGD``（``momentum``・``nesterov``）・``AdaGrad``・``RMSprop``・``Adam``・
``AdamW`` は ``torch.optim`` の同名の手法（``MomentumSGD`` は ``torch.optim.SGD(momentum=...)``）と同じ式です。
``WeightDecay`` は ``torch.optim.SGD(weight_decay=...)`` などの L2 の項、``ClipGrad`` は
``torch.nn.utils.clip_grad_norm_`` にあたります。
"""
import math
import numbers

from mini_dl import cuda
from mini_dl.core import Variable
from mini_dl.layers import Layer


class Optimizer:
    """最適化手法の基底クラスです。

    ``setup(target)`` で対象（``Layer`` か ``Model``）を覚え、``update()`` で勾配のある
    パラメータを 1 つずつ ``update_one`` で更新します。更新の前に、``add_hook`` で足した
    フック（重み減衰や勾配のクリップ）を、すべてのパラメータについて呼びます。

    パラメータごとの状態（モーメンタムなど）は、パラメータの名前（``named_params`` の名前）を
    キーにした辞書 ``state`` に入れます。名前で対応させるので、保存と復元ができます。
    """

    def __init__(self, lr):
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise TypeError(
                f"{type(self).__name__} の最初の引数 lr には学習率（数）を渡してください"
                f"（受け取ったのは {type(lr).__name__}）。PyTorch の torch.optim.Adam(model.parameters()) のように"
                f"パラメータを渡すのではなく、モデルは setup に渡します: {type(self).__name__}(lr=...).setup(model)")
        self.lr = lr
        self.target = None
        self.hooks = []
        self.state = {}  # パラメータの名前 -> {状態の名前: 配列}
        self.t = 0  # update の回数

    def setup(self, target):
        """更新する対象を覚えます。自分自身を返すので ``Adam().setup(model)`` と書けます。

        Args:
            target (Layer): 更新する層かモデル（``mini_dl.layers.Layer`` のインスタンス）。

        Raises:
            TypeError: ``target`` が ``Layer`` ではないとき（パラメータのリストや ``model.params()``、
                ``Variable``、関数など）。
        """
        if not isinstance(target, Layer):
            raise TypeError(
                f"setup には層かモデル（mini_dl.layers.Layer のインスタンス）を渡してください"
                f"（受け取ったのは {type(target).__name__}）。パラメータのリストや model.params() ではなく、"
                f"モデルそのものを {type(self).__name__}(...).setup(model) のように渡します。")
        self.target = target
        return self

    def add_hook(self, hook):
        """``hook(params)`` を、更新の前に呼ぶように登録します。自分自身を返します。

        フックは勾配の配列に書き込まず、変えるときは ``param.grad = Variable(新しい配列)`` と入れ直します
        （勾配は複数のパラメータに共有されていることも、書き込めないビューのこともあるからです）。
        """
        self.hooks.append(hook)
        return self

    def update(self):
        """勾配のあるすべてのパラメータを 1 回更新します。"""
        named = [(name, p) for name, p in self.target.named_params() if p.grad is not None]
        for hook in self.hooks:
            hook([p for _, p in named])
        self.t += 1
        for name, param in named:
            self.update_one(param, self.state.setdefault(name, {}))

    def update_one(self, param, state):
        """パラメータ 1 つを更新します（サブクラスで実装）。``state`` はこのパラメータの状態の辞書です。"""
        raise NotImplementedError(f"{type(self).__name__}.update_one が実装されていません")


def _zeros_like(state, key, param):
    """``state[key]`` がなければ、``param`` と同じ shape・dtype・配列モジュールの 0 で作って返します。

    学習の途中で ``model.to_gpu()``（``to_cpu()``）したときは、CPU で作った状態もパラメータについて移します。
    """
    xp = cuda.get_array_module(param.data)
    if key not in state:
        state[key] = xp.zeros_like(param.data)
    elif cuda.get_array_module(state[key]) is not xp:
        state[key] = cuda.as_cupy(state[key]) if xp is cuda.cupy else cuda.as_numpy(state[key])
    return state[key]


class SGD(Optimizer):
    r"""確率的勾配降下法 :math:`W \leftarrow W - \eta \nabla W`。"""

    def __init__(self, lr=0.01):
        super().__init__(lr)

    def update_one(self, param, state):
        param.data -= self.lr * param.grad.data


class MomentumSGD(Optimizer):
    r"""モーメンタム付き SGD: :math:`v \leftarrow \mu v + g,\ W \leftarrow W - \eta v`。

    ``nesterov=True`` なら Nesterov のモーメンタム :math:`W \leftarrow W - \eta (g + \mu v)` にします。

    PyTorch との対応: ``torch.optim.SGD(lr, momentum=μ, nesterov=...)``（``dampening=0``）と同じ式です
    （PyTorch の ``momentum`` の既定は 0 なので、PyTorch では明示します）。DeZero・Chainer の
    :math:`v \leftarrow \mu v - \eta g,\ W \leftarrow W + v` は、学習率が一定なら同じ更新ですが、
    学習率を途中で変える（スケジューラ）と、DeZero の形では古い学習率が速度に残ります。
    """

    def __init__(self, lr=0.01, momentum=0.9, nesterov=False):
        super().__init__(lr)
        self.momentum = momentum
        self.nesterov = nesterov

    def update_one(self, param, state):
        g = param.grad.data
        v = _zeros_like(state, "v", param)
        v *= self.momentum
        v += g
        if self.nesterov:
            param.data -= self.lr * (g + self.momentum * v)
        else:
            param.data -= self.lr * v


class AdaGrad(Optimizer):
    r"""AdaGrad: :math:`h \leftarrow h + g^2,\ W \leftarrow W - \eta\, g / (\sqrt{h} + \epsilon)`。"""

    def __init__(self, lr=0.01, eps=1e-8):
        super().__init__(lr)
        self.eps = eps

    def update_one(self, param, state):
        xp = cuda.get_array_module(param.data)
        g = param.grad.data
        h = _zeros_like(state, "h", param)
        h += g * g
        param.data -= self.lr * g / (xp.sqrt(h) + self.eps)


class RMSprop(Optimizer):
    r"""RMSprop: :math:`h \leftarrow \alpha h + (1 - \alpha) g^2,\ W \leftarrow W - \eta\, g / (\sqrt{h} + \epsilon)`。"""

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8):
        super().__init__(lr)
        self.alpha = alpha
        self.eps = eps

    def update_one(self, param, state):
        xp = cuda.get_array_module(param.data)
        g = param.grad.data
        h = _zeros_like(state, "h", param)
        h *= self.alpha
        h += (1 - self.alpha) * g * g
        param.data -= self.lr * g / (xp.sqrt(h) + self.eps)


class Adam(Optimizer):
    r"""Adam（Kingma & Ba, 2015）。

    .. math::

        m \leftarrow \beta_1 m + (1 - \beta_1) g,\quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2,\quad
        W \leftarrow W - \eta \frac{\hat m}{\sqrt{\hat v} + \epsilon}

    :math:`\hat m = m / (1 - \beta_1^t)`、:math:`\hat v = v / (1 - \beta_2^t)` は、最初のうち 0 に
    偏る :math:`m, v` の補正です。
    """

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps

    def update_one(self, param, state):
        xp = cuda.get_array_module(param.data)
        g = param.grad.data
        m = _zeros_like(state, "m", param)
        v = _zeros_like(state, "v", param)
        m += (1 - self.beta1) * (g - m)
        v += (1 - self.beta2) * (g * g - v)
        m_hat_scale = 1 / (1 - self.beta1 ** self.t)  # Python の数（math の計算）なので dtype を変えない
        v_hat_scale = 1 / (1 - self.beta2 ** self.t)
        param.data -= self.lr * (m * m_hat_scale) / (xp.sqrt(v * v_hat_scale) + self.eps)


class AdamW(Adam):
    r"""AdamW（Loshchilov & Hutter, 2019）: 重み減衰を勾配に混ぜず、更新とは別に :math:`W \leftarrow W - \eta \lambda W` とします。

    PyTorch との対応: 減衰に学習率 :math:`\eta` を掛ける ``W -= lr * weight_decay * W`` は、PyTorch の
    ``torch.optim.AdamW``（既定 ``weight_decay=0.01``）と同じです。論文と Chainer の ``AdamW`` は
    :math:`\lambda` に学習率 :math:`\alpha` を掛けず、スケジュールの倍率 :math:`\eta_t` だけを掛けるので、
    その :math:`\lambda` はここでは ``weight_decay = λ / lr`` にあたります。PyTorch の
    ``Adam(weight_decay=...)`` は分離しない L2（``Adam`` + ``WeightDecay`` フック）です。
    """

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(lr, beta1, beta2, eps)
        self.weight_decay = weight_decay

    def update_one(self, param, state):
        param.data -= self.lr * self.weight_decay * param.data  # 分離した重み減衰（decoupled weight decay）
        super().update_one(param, state)


# --- フック --------------------------------------------------------------------------------

class WeightDecay:
    r"""L2 正則化: 勾配に :math:`\lambda W` を足します（``opt.add_hook(WeightDecay(1e-4))``）。

    PyTorch との対応: ``torch.optim.SGD(weight_decay=λ)``（や ``Adam(weight_decay=λ)``）が勾配に足す
    :math:`\lambda W` と同じです。足した勾配は新しい配列にして ``param.grad`` に入れ直します
    （元の勾配の配列は、ほかのパラメータと共有されていたり、書き込めなかったりするので変えません）。
    """

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, params):
        for param in params:
            param.grad = Variable(param.grad.data + self.rate * param.data)  # 書き込まず、入れ直す


class ClipGrad:
    r"""勾配のクリップ: すべての勾配をまとめたノルム :math:`\|g\|` が ``max_norm`` を超えたら、
    :math:`\|g\| = ` ``max_norm`` になるように全体を縮めます（向きは変えません）。

    PyTorch との対応: ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` と同じです。ノルムは
    パラメータごとに 1 回ずつ数えた勾配の 2 乗の和の平方根で、倍率は ``max_norm / (‖g‖ + 1e-6)``、
    呼ぶとクリップ前のノルムを返します。縮めた勾配は新しい配列にして ``param.grad`` に入れ直すので、
    2 つのパラメータが 1 つの勾配を共有していても、2 回縮めることはありません。
    """

    def __init__(self, max_norm):
        self.max_norm = max_norm

    def __call__(self, params):
        total = math.sqrt(sum(float((p.grad.data * p.grad.data).sum()) for p in params))
        rate = self.max_norm / (total + 1e-6)  # Python の数なので、float32 の勾配は float32 のまま
        if rate < 1:
            for param in params:
                param.grad = Variable(param.grad.data * rate)  # 書き込まず、入れ直す
        return total


# --- 学習率のスケジュール --------------------------------------------------------------------

class LRScheduler:
    """学習率のスケジューラの基底クラスです。``step()`` を呼ぶたびに、最適化手法の ``lr`` を決め直します。

    Args:
        optimizer: 学習率を変える最適化手法。作ったときの ``lr`` を基準の学習率として覚えます。
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.step_count = 0

    def step(self):
        """1 ステップ（または 1 エポック）進め、新しい学習率を設定して返します。"""
        self.step_count += 1
        self.optimizer.lr = self.get_lr(self.step_count)
        return self.optimizer.lr

    def get_lr(self, step):
        """``step`` 回目のあとの学習率（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.get_lr が実装されていません")


class StepLR(LRScheduler):
    """``step_size`` ステップごとに学習率を ``gamma`` 倍にします。"""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size = step_size
        self.gamma = gamma

    def get_lr(self, step):
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineAnnealingLR(LRScheduler):
    r"""学習率を余弦（cosine）の形で ``T_max`` ステップかけて ``eta_min`` まで下げます。

    .. math:: \eta_t = \eta_{min} + \frac{1}{2}(\eta_0 - \eta_{min})\left(1 + \cos\frac{\pi t}{T_{max}}\right)
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        self.T_max = T_max
        self.eta_min = eta_min

    def get_lr(self, step):
        t = min(step, self.T_max)
        return self.eta_min + 0.5 * (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max))


class LinearWarmup(LRScheduler):
    """最初の ``warmup_steps`` ステップで学習率を 0 付近から基準の値まで直線的に上げ、
    その後は ``after``（別のスケジューラ。``None`` なら一定）に任せます。

    ``LinearWarmup`` は作った時点で ``optimizer.lr`` を小さくするので、``after`` は先に作って渡します
    （``LinearWarmup(opt, 10, after=CosineAnnealingLR(opt, T_max=90))``）。
    """

    def __init__(self, optimizer, warmup_steps, after=None):
        super().__init__(optimizer)
        self.warmup_steps = warmup_steps
        self.after = after
        optimizer.lr = self.base_lr / warmup_steps  # 最初の更新は小さな学習率で

    def get_lr(self, step):
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.after is None:
            return self.base_lr
        return self.after.get_lr(step - self.warmup_steps)
