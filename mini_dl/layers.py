"""層（``mini_dl.layers``、``import mini_dl.layers as L`` と使います）。

層は、パラメータ（``Parameter``）と、ほかの層を属性として持つ入れ物です。
"""
import os
import tempfile

import numpy as np

import mini_dl.functions as F
from mini_dl import cuda, initializers
from mini_dl.core import Parameter


class Layer:
    """すべての層の基底クラスです。

    属性に代入した ``Parameter`` と ``Layer`` を、代入した順番に覚えます。
    ``params()`` はその順番でパラメータを返すので、何度呼んでも順番が変わりません
    （重みの保存や最適化手法の状態と、パラメータを確実に対応させるためです）。
    """

    training = True  # 学習中か（Model.train() / eval() が切り替えます）

    def __init__(self):
        self._params = []  # 代入した順番の属性名（Parameter と Layer）
        self._buffers = []  # 学習しないが保存する配列（バッチ正規化の移動平均など）の属性名

    def __setattr__(self, name, value):
        names = self.__dict__.setdefault("_params", [])
        if isinstance(value, (Parameter, Layer)) and name not in names:
            names.append(name)  # 初めて Parameter か Layer を代入した順番を覚える
        super().__setattr__(name, value)

    def __call__(self, *inputs):
        outputs = self.forward(*inputs)
        return outputs

    def forward(self, *inputs):
        """順伝播（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.forward が実装されていません")

    def params(self):
        """この層と、中の層のパラメータを、代入した順番に 1 つずつ返します（ジェネレーター）。"""
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj.params()
            elif isinstance(obj, Parameter):  # あとで None などに置き換えた属性は飛ばす
                yield obj

    def named_params(self, prefix=""):
        """``("l1.W", パラメータ)`` のような、名前とパラメータの組を順番に返します。"""
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj.named_params(prefix + name + ".")
            elif isinstance(obj, Parameter):
                yield prefix + name, obj

    def cleargrads(self):
        """すべてのパラメータの勾配を消します。"""
        for param in self.params():
            param.cleargrad()

    def register_buffer(self, name, array):
        """学習では更新しないが、重みと一緒に保存する配列 ``array`` を、属性 ``name`` として登録します。"""
        buffers = self.__dict__.setdefault("_buffers", [])
        if name not in buffers:
            buffers.append(name)
        object.__setattr__(self, name, array)

    def named_buffers(self, prefix=""):
        """``("bn.running_mean", 配列)`` のような、名前と配列の組を順番に返します。"""
        for name in self.__dict__.get("_buffers", ()):
            yield prefix + name, self.__dict__[name]
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj.named_buffers(prefix + name + ".")

    def _buffer_owners(self, prefix=""):
        """``(名前, 持ち主の層, 属性名)`` を順番に返します（読み込みと移動で、配列を置き換えるため）。"""
        for name in self.__dict__.get("_buffers", ()):
            yield prefix + name, self, name
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj._buffer_owners(prefix + name + ".")

    def to_cpu(self):
        """パラメータと保存用の配列を CPU（NumPy）に移します。自分自身を返します。"""
        return self._to(cuda.as_numpy)

    def to_gpu(self):
        """パラメータと保存用の配列を GPU（CuPy）に移します。自分自身を返します。"""
        return self._to(cuda.as_cupy)

    def _to(self, convert):
        for param in self.params():
            if param.data is not None:
                param.data = convert(param.data)
            if param.grad is not None:
                param.grad.data = convert(param.grad.data)
        for _, owner, attr in self._buffer_owners():
            object.__setattr__(owner, attr, convert(owner.__dict__[attr]))
        return self

    def save_weights(self, path, optimizer=None):
        """パラメータ（と保存用の配列、渡せば最適化手法の状態）を npz ファイルに保存します。

        一時ファイルに書いてから置き換えるので、途中で止まっても壊れたファイルは残りません。
        GPU 上のパラメータも、モデルを移さずに CPU の配列にして書きます。

        Args:
            path: 保存先（``.npz``）。
            optimizer: 一緒に状態を保存する最適化手法（省略可）。
        """
        arrays = {}
        for name, param in self.named_params():
            if param.data is None:
                raise ValueError(f"パラメータ {name} がまだ初期化されていません（一度入力を通してから保存してください）")
            arrays[name] = cuda.as_numpy(param.data)
        for name, buf in self.named_buffers():
            arrays[name] = cuda.as_numpy(buf)
        if optimizer is not None:
            arrays.update(_optimizer_arrays(optimizer))
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)  # 書き終えてから 1 回で置き換える（原子的な書き込み）
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load_weights(self, path, optimizer=None):
        """``save_weights`` で保存したファイルを読み込みます。

        足りないキー・余分なキー・shape の違うキーがあれば、それらの名前を挙げた ``ValueError`` を
        送出し、モデル（と最適化手法）は一切変えません。パラメータは、いまある場所（CPU か GPU）の
        まま値だけを置き換えます。

        Args:
            path: 読み込むファイル。
            optimizer: 一緒に状態を戻す最適化手法（省略可）。
        """
        with np.load(path, allow_pickle=False) as npz:
            stored = {key: npz[key] for key in npz.files}
        targets = dict(self.named_params())
        buffers = {name: (owner, attr) for name, owner, attr in self._buffer_owners()}
        expected = set(targets) | set(buffers)
        model_keys = {k for k in stored if not k.startswith(_OPT_PREFIX)}
        problems = []
        missing = sorted(expected - model_keys)
        unexpected = sorted(model_keys - expected)
        if missing:
            problems.append(f"ファイルにないキー: {', '.join(missing)}")
        if unexpected:
            problems.append(f"モデルにないキー: {', '.join(unexpected)}")
        for name in sorted(expected & model_keys):
            current = targets[name].data if name in targets else buffers[name][0].__dict__[buffers[name][1]]
            if current is not None and current.shape != stored[name].shape:
                problems.append(f"shape が違うキー: {name}（モデル {current.shape}、ファイル {stored[name].shape}）")
        if optimizer is not None and not any(k.startswith(_OPT_PREFIX) for k in stored):
            problems.append("ファイルに最適化手法の状態がありません")
        if problems:
            raise ValueError(f"{os.fspath(path)} を読み込めません（モデルは変更していません）:\n  " + "\n  ".join(problems))

        for name, param in targets.items():
            param.data = _like(stored[name], param.data)
        for name, (owner, attr) in buffers.items():
            object.__setattr__(owner, attr, _like(stored[name], owner.__dict__[attr]))
        if optimizer is not None:
            _load_optimizer(optimizer, stored, self)


_OPT_PREFIX = "optimizer/"


def _like(array, current):
    """読み込んだ ``array`` を、いまの配列 ``current`` と同じ場所（CPU か GPU）・dtype にします。"""
    if current is None:
        return array
    xp = cuda.get_array_module(current)
    return xp.asarray(array, dtype=current.dtype)


def _optimizer_arrays(optimizer):
    """最適化手法の状態を ``{"optimizer/名前/キー": 配列}`` の辞書にします。"""
    arrays = {f"{_OPT_PREFIX}t": np.array(optimizer.t), f"{_OPT_PREFIX}lr": np.array(optimizer.lr)}
    for name, state in optimizer.state.items():
        for key, value in state.items():
            arrays[f"{_OPT_PREFIX}{name}/{key}"] = cuda.as_numpy(value)
    return arrays


def _load_optimizer(optimizer, stored, model):
    """``_optimizer_arrays`` の形の配列から、最適化手法の状態を戻します。"""
    params = dict(model.named_params())
    optimizer.t = int(stored[f"{_OPT_PREFIX}t"])
    optimizer.lr = float(stored[f"{_OPT_PREFIX}lr"])
    state = {}
    for key, value in stored.items():
        if not key.startswith(_OPT_PREFIX) or key.count("/") < 2:
            continue
        name, slot = key[len(_OPT_PREFIX):].rsplit("/", 1)
        state.setdefault(name, {})[slot] = _like(value, params[name].data if name in params else None)
    optimizer.state = state


class Linear(Layer):
    r"""全結合層 :math:`y = x W + b`。

    重み :math:`W` は ``initializer`` で初期化します（既定は平均 0・標準偏差 :math:`\sqrt{1/D}` の
    正規分布。ReLU には ``initializers.he_normal`` が向いています）。``in_size`` を省くと、
    最初に入力が来たときに、その shape から入力の大きさ :math:`D` を決めて初期化します。

    Args:
        out_size (int): 出力の大きさ :math:`H`。
        nobias (bool): ``True`` ならバイアスを使いません。
        dtype: パラメータの dtype（既定は float32）。
        in_size (int): 入力の大きさ :math:`D`（省略可）。
        initializer: ``(shape, rng, dtype)`` から初期値の配列を作る関数。
        seed: 初期値の乱数の種（``None`` なら毎回ちがう値）。

    Shape:
        x: (N, D) -> y: (N, H)、W: (D, H)、b: (H,)
    """

    def __init__(self, out_size, nobias=False, dtype=np.float32, in_size=None,
                 initializer=initializers.lecun_normal, seed=None):
        super().__init__()
        self.in_size = in_size
        self.out_size = out_size
        self.dtype = dtype
        self.initializer = initializer
        self.rng = np.random.default_rng(seed)
        self.W = Parameter(None, name="W")
        if in_size is not None:
            self._init_W(np)
        self.b = None if nobias else Parameter(np.zeros(out_size, dtype=dtype), name="b")

    def _init_W(self, xp):
        W = self.initializer((self.in_size, self.out_size), self.rng, self.dtype)
        self.W.data = W if xp is np else xp.asarray(W)

    def forward(self, x):
        if self.W.data is None:  # 最初の入力から D を決めて、W を作る
            self.in_size = x.shape[-1]
            self._init_W(cuda.get_array_module(x))
        return F.linear(x, self.W, self.b)


class Dropout(Layer):
    """ドロップアウト層: 学習中（``training``）だけ、割合 ``ratio`` の要素を 0 にします。

    Args:
        ratio (float): 0 にする割合。
        seed: マスクの乱数の種（``None`` なら毎回ちがう）。
    """

    def __init__(self, ratio=0.5, seed=None):
        super().__init__()
        self.ratio = ratio
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        return F.dropout(x, self.ratio, training=self.training, rng=self.rng)


class BatchNorm(Layer):
    """バッチ正規化層。チャンネル数 C は最初の入力の shape から決めます。

    学習中（``training``）はミニバッチの統計で正規化して移動平均を更新し、推論中は移動平均を使います。
    移動平均 ``running_mean``・``running_var`` は、重みと一緒に保存されます。

    Shape:
        x: (N, C) または (N, C, H, W) -> y: x と同じ
    """

    def __init__(self, momentum=0.9, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.dtype = dtype
        self.gamma = Parameter(None, name="gamma")
        self.beta = Parameter(None, name="beta")
        self.register_buffer("running_mean", None)
        self.register_buffer("running_var", None)

    def forward(self, x):
        if self.gamma.data is None:
            xp = cuda.get_array_module(x)
            C = x.shape[1]
            self.gamma.data = xp.ones(C, dtype=self.dtype)
            self.beta.data = xp.zeros(C, dtype=self.dtype)
            self.register_buffer("running_mean", xp.zeros(C, dtype=self.dtype))
            self.register_buffer("running_var", xp.ones(C, dtype=self.dtype))
        return F.batch_norm(x, self.gamma, self.beta, self.running_mean, self.running_var,
                            training=self.training, momentum=self.momentum, eps=self.eps)
