r"""混合精度とメモリの節約（第14章）: ``GradScaler``・マスタの重み・float32 の島・勾配チェックポイント。

- ``GradScaler``: 損失を大きな数 :math:`S` 倍してから逆伝播し（float16 で小さな勾配が 0 に消えるのを防ぐ）、
  更新の前に勾配を :math:`1/S` 倍に戻します。勾配に inf・NaN があればその更新を飛ばし、:math:`S` を小さくします
  （動的な損失のスケーリング）。名前と既定値は PyTorch の ``torch.amp.GradScaler`` と同じです。
- ``cast_model``・``MasterWeights``: モデルのパラメータを float16 で持ち、最適化手法は float32 の控え
  （マスタの重み）を更新します。小さな更新が float16 の丸めで消えるのを防ぎます。
- ``float32_island``: ソフトマックス・損失・ノルムのように、float16 ではあふれたり精度が足りなかったりする計算だけを
  float32 で行います。
- ``checkpoint``: 順伝播では途中の値を残さず、逆伝播のときに計算し直します（勾配チェックポイント）。

bfloat16 を使うときだけ ``ml_dtypes`` を import します（``cast_model(model, "bfloat16")`` など）。
"""
import numpy as np

from mini_dl import cuda
from mini_dl.core import Config, Function, Parameter, Variable, backward, no_grad, using_config
from mini_dl.functions import astype
from mini_dl.layers import Layer


def _as_dtype(dtype):
    """``"bfloat16"`` なら ``ml_dtypes`` の bfloat16 を、それ以外は ``np.dtype(dtype)`` を返します。"""
    if isinstance(dtype, str) and dtype == "bfloat16":
        import ml_dtypes  # bfloat16 を使うときだけ import する

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


class GradScaler:
    r"""動的な損失のスケーリング（PyTorch の ``torch.amp.GradScaler`` と同じ名前と既定値）。

    1 ステップは次のとおりです。

    .. code-block:: python

        scaler.scale(loss).backward()  # 損失を S 倍して逆伝播（勾配も S 倍）
        scaler.step(optimizer)         # 勾配を 1/S 倍に戻し、inf・NaN がなければ更新
        scaler.update()                # あふれたら S を backoff_factor 倍、growth_interval 回続けて無事なら growth_factor 倍

    スケール :math:`S` は Python の数としてホストに置きます（勾配の確認で、どのみち GPU との同期が起きるため）。

    Args:
        init_scale (float): 最初のスケール :math:`S`（既定は :math:`2^{16}`）。
        growth_factor (float): ``growth_interval`` 回続けて更新できたときに :math:`S` に掛ける数（1 より大きい）。
        backoff_factor (float): 勾配に inf・NaN があったときに :math:`S` に掛ける数（0 と 1 の間）。
        growth_interval (int): :math:`S` を大きくするまでに続けて更新できた回数。
        enabled (bool): ``False`` なら何もしません（``scale`` はそのまま返し、``step`` はいつも更新します）。

    Raises:
        ValueError: 引数が上の範囲にないとき。
    """

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, enabled=True):
        if not init_scale > 0:
            raise ValueError(f"init_scale は正の数にしてください（受け取った値: {init_scale}）")
        if not growth_factor > 1:
            raise ValueError(f"growth_factor は 1 より大きくしてください（受け取った値: {growth_factor}）")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"backoff_factor は 0 と 1 の間にしてください（受け取った値: {backoff_factor}）")
        if int(growth_interval) != growth_interval or growth_interval < 1:
            raise ValueError(f"growth_interval は 1 以上の整数にしてください（受け取った値: {growth_interval}）")
        self._scale = float(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0  # 続けて更新できた回数
        self._enabled = bool(enabled)
        self._per_optimizer = {}  # id(optimizer) -> {"unscaled": bool, "found_inf": bool, "stepped": bool}

    def is_enabled(self):
        """スケーリングが有効なら ``True`` を返します。"""
        return self._enabled

    def get_scale(self):
        """いまのスケール :math:`S` を Python の ``float`` で返します（無効なら 1.0）。"""
        return self._scale if self._enabled else 1.0

    def scale(self, loss):
        """損失 ``loss`` を :math:`S` 倍した ``Variable`` を返します（dtype は ``loss`` と同じ）。

        float16 の損失に :math:`2^{16}` を掛けると inf になります（float16 の最大値は 65504）。損失は
        ``float32_island`` で float32 のまま計算し、float16 になるのは勾配だけにします。

        Args:
            loss (Variable): 損失（ふつうは 0 次元）。

        Returns:
            Variable: ``loss * S``。無効なら ``loss`` そのもの。
        """
        if not self._enabled:
            return loss
        xp = cuda.get_array_module(loss)
        return loss * xp.asarray(self._scale, dtype=loss.dtype)

    def _state(self, optimizer):
        return self._per_optimizer.setdefault(id(optimizer), {"unscaled": False, "found_inf": False, "stepped": False})

    def unscale_(self, optimizer):
        """``optimizer`` が更新するパラメータの勾配を :math:`1/S` 倍に戻し、inf・NaN があるかを調べます。

        勾配のクリップ（``ClipGrad``）を本当の大きさの勾配に掛けたいときに、``step`` の前に呼びます
        （PyTorch と同じ名前です）。勾配の配列には書き込まず、``param.grad = Variable(新しい配列)`` と入れ直します。

        Raises:
            RuntimeError: 前の ``update()`` のあと、同じ ``optimizer`` に 2 回呼んだとき
                （勾配が :math:`1/S^2` 倍になってしまうため）。
            ValueError: float16 などの 16 ビットの勾配があるとき。:math:`1/S` 倍すると小さな勾配が 0 に消えるので、
                PyTorch と同じく断ります。``MasterWeights`` で float32 の控えに勾配を移してから呼びます。
        """
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["unscaled"]:
            raise RuntimeError("unscale_ はこの optimizer にもう呼ばれています（update() のあとに、1 回だけ呼べます）")
        inv_scale = 1.0 / self._scale
        finite = []  # パラメータごとの「すべて有限か」（GPU ならデバイスの上の 0 次元の配列）
        xp = None
        for param in optimizer.target.params():
            if param.grad is None:
                continue
            g = param.grad.data
            if g.dtype.itemsize < 4:
                raise ValueError(
                    f"{g.dtype} の勾配は 1/S 倍に戻せません（小さな勾配が 0 に消えます）。"
                    "MasterWeights の pull_grads() で float32 の控えに勾配を移し、控えを更新する最適化手法を渡してください")
            xp = cuda.get_array_module(g)
            g = g * xp.asarray(inv_scale, dtype=g.dtype)  # 新しい配列（勾配の配列には書き込まない）
            finite.append(xp.isfinite(g).all())
            param.grad = Variable(g)
        # ホストに取り出すのは最後の 1 回だけ（GPU との同期を 1 回で済ませる）
        state["found_inf"] = bool(finite) and not bool(xp.stack(finite).all())
        state["unscaled"] = True

    def step(self, optimizer):
        """勾配を :math:`1/S` 倍に戻し、すべて有限なら ``optimizer.update()`` を呼びます。

        1 つでも inf・NaN があれば、更新を飛ばします（パラメータも最適化手法の状態も変わりません）。

        Returns:
            bool: 更新したら ``True``、飛ばしたら ``False``（PyTorch は ``optimizer.step()`` の戻り値か ``None``）。
        """
        if not self._enabled:
            optimizer.update()
            return True
        state = self._state(optimizer)
        if state["stepped"]:
            raise RuntimeError("step はこの optimizer にもう呼ばれています（update() のあとに、1 回だけ呼べます）")
        if not state["unscaled"]:
            self.unscale_(optimizer)
        state["stepped"] = True
        if state["found_inf"]:
            return False
        optimizer.update()
        return True

    def update(self, new_scale=None):
        """ステップの結果でスケール :math:`S` を変えます。

        ``step`` で inf・NaN が見つかっていれば :math:`S \\leftarrow S \\times` ``backoff_factor`` とし、数え直します。
        見つかっていなければ数を 1 増やし、``growth_interval`` に達したら :math:`S \\leftarrow S \\times` ``growth_factor`` とします。

        Args:
            new_scale (float): 渡すと、上の規則の代わりにこの値をスケールにします。

        Raises:
            RuntimeError: この前の ``update()`` のあと、``unscale_`` も ``step`` も呼ばれていないとき。
        """
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = float(new_scale)
        else:
            if not self._per_optimizer:
                raise RuntimeError("update() の前に step(optimizer) を呼んでください（inf・NaN を調べた記録がありません）")
            if any(state["found_inf"] for state in self._per_optimizer.values()):
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    self._scale *= self._growth_factor
                    self._growth_tracker = 0
        self._per_optimizer = {}

    def state_dict(self):
        """スケールと設定を辞書で返します（``load_state_dict`` で戻せます）。"""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict):
        """``state_dict()`` の辞書から、スケールと設定を戻します。"""
        if not state_dict:
            return
        self._scale = float(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])


def cast_model(model, dtype):
    """``model`` のすべてのパラメータを ``dtype`` に変えます（その場で）。``model`` を返します。

    Args:
        model (Layer): 層かモデル。パラメータはすべて作られている（最初の入力を通したか ``in_size`` を指定した）こと。
        dtype: ``np.float16``・``np.float32``・``"bfloat16"`` など。

    Raises:
        ValueError: まだ作られていないパラメータ（``data`` が ``None``）があるとき。
    """
    dtype = _as_dtype(dtype)
    for name, param in model.named_params():
        if param.data is None:
            raise ValueError(f"パラメータ {name} がまだ作られていません。先に 1 回入力を通すか、in_size を指定してください")
        param.data = param.data.astype(dtype)
        param.grad = None
    return model


class MasterWeights(Layer):
    """float16 などで持つモデルのパラメータの、float32 の控え（マスタの重み）です。

    作ると、``model`` のパラメータを ``dtype`` に変え、元の float32 の値を控えとして持ちます。最適化手法は控えを
    更新するように ``opt = Adam().setup(master)`` とします（パラメータの名前は ``model`` と同じです）。1 ステップは

    .. code-block:: python

        master.cleargrads()             # モデルと控えの勾配を消す
        scaler.scale(loss).backward()   # float16 の勾配
        master.pull_grads()             # 控えの勾配 = float32 に直したモデルの勾配
        scaler.step(opt)                # float32 で 1/S 倍に戻し、控えを更新
        scaler.update()
        master.push_weights()           # 控えを丸めてモデルに書き戻す

    です。更新 :math:`\\eta g` が float16 の間隔（ulp）の半分より小さくても、float32 の控えには積み重なります。

    GPU で学習するときは、``MasterWeights`` を作る前にモデルを ``to_gpu()`` します（控えはモデルと同じ装置に作ります）。

    Args:
        model (Layer): パラメータがすべて作られたモデル。
        dtype: モデルに持たせる dtype（既定は ``np.float16``。``"bfloat16"`` も使えます）。

    Raises:
        ValueError: まだ作られていないパラメータ（``data`` が ``None``）があるとき。
    """

    def __init__(self, model, dtype=np.float16):
        super().__init__()
        object.__setattr__(self, "model", model)  # Layer として登録しない（モデルの float16 のパラメータは集めない）
        self._pairs = []  # (名前, モデルのパラメータ, float32 の控え)
        for name, param in model.named_params():
            if param.data is None:
                raise ValueError(f"パラメータ {name} がまだ作られていません。先に 1 回入力を通すか、in_size を指定してください")
            xp = cuda.get_array_module(param.data)
            master = Parameter(xp.array(param.data, dtype=np.float32), name=param.name)  # float32 のコピー
            self._pairs.append((name, param, master))
        cast_model(model, dtype)

    def _all_params(self, prefix):
        for name, _, master in self._pairs:
            yield prefix + name, master

    def forward(self, *inputs):
        """モデルの順伝播（``master(x)`` は ``master.model(x)`` と同じです）。"""
        return self.model(*inputs)

    def cleargrads(self):
        """モデルのパラメータと控えの、両方の勾配を消します。"""
        self.model.cleargrads()
        super().cleargrads()

    def pull_grads(self):
        """モデルの勾配を float32 に直して、控えの勾配にします（新しい配列）。"""
        for _, param, master in self._pairs:
            master.grad = None if param.grad is None else Variable(param.grad.data.astype(np.float32))

    def push_weights(self):
        """控えの値をモデルの dtype に丸めて、モデルのパラメータに書き戻します。"""
        for _, param, master in self._pairs:
            param.data = master.data.astype(param.data.dtype)


def float32_island(fn, *xs, **kwargs):
    """``fn(*xs, **kwargs)`` を float32 で計算します（float16・bfloat16 の中の「float32 の島」）。

    4 バイトより小さい浮動小数点数の入力だけを ``astype`` で float32 に直して渡し、結果は float32 のまま返します
    （整数のラベルなどはそのまま渡します）。逆伝播では、勾配は元の dtype に戻って流れます。

    例: ``loss = float32_island(F.softmax_cross_entropy, model(x16), t)``
    """
    args = []
    for x in xs:
        dtype = getattr(x, "dtype", None)
        if dtype is not None and dtype.kind not in "iub" and dtype.itemsize < 4:
            x = astype(x, np.float32)
        args.append(x)
    return fn(*args, **kwargs)


class Checkpoint(Function):
    """勾配チェックポイント: 順伝播では ``fn`` の途中の値を残さず、逆伝播のときに計算し直す関数です。

    ``checkpoint(fn, *xs)`` から使います。逆伝播では、入力を切り離した ``Variable`` にして ``fn`` を計算グラフ付きで
    計算し直し、``mini_dl.backward(出力, 出力の勾配)`` で ``fn`` の中を逆伝播します。``fn`` の中で使うパラメータ
    （層の重み）の勾配は、このときに足されます。
    """

    def __init__(self, fn):
        self.fn = fn

    def forward(self, *xs):
        with no_grad():  # 途中の値を残さない
            ys = self.fn(*[Variable(x) for x in xs])
        if isinstance(ys, (tuple, list)):
            return tuple(y.data for y in ys)
        return ys.data

    def backward(self, *gys):
        if Config.enable_backprop:
            raise NotImplementedError("checkpoint は create_graph=True の逆伝播（高階微分）には使えません")
        xs = [Variable(x.data) for x in self.inputs]  # 入力を切り離して、fn の中だけの計算グラフにする
        with using_config("enable_backprop", True):
            ys = self.fn(*xs)  # 計算し直す（今度は計算グラフを作る）
        ys = list(ys) if isinstance(ys, (tuple, list)) else [ys]
        backward(ys, list(gys))  # fn の中を逆伝播（パラメータの勾配もここで足される）
        return tuple(x.grad for x in xs)


def checkpoint(fn, *xs):
    """``fn(*xs)`` を、途中の値を残さずに計算します（勾配チェックポイント、PyTorch の ``torch.utils.checkpoint``）。

    出力と勾配は ``fn(*xs)`` をそのまま計算したときと同じです。覚えておくのは入力と出力だけで、``fn`` の中の
    途中の値は逆伝播のときに計算し直します（順伝播を 2 回する代わりに、メモリを減らします）。

    Args:
        fn: ``Variable`` を受け取って ``Variable``（かそのタプル）を返す関数。パラメータ以外の ``Variable`` は、
            閉じ込めずに ``xs`` として渡します。ドロップアウトのように乱数を使う処理は、計算し直すと違う乱数に
            なるので入れません。
        *xs: ``fn`` の入力（``Variable`` か配列）。

    Returns:
        Variable: ``fn(*xs)`` と同じ値（出力が複数ならリスト）。

    Raises:
        NotImplementedError: ``create_graph=True`` で逆伝播したとき。
    """
    if not Config.enable_backprop:
        return fn(*xs)  # 計算グラフを作らないなら、そのまま計算すれば良い
    return Checkpoint(fn)(*xs)
