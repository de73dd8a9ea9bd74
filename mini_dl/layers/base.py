"""層の基底クラス ``Layer`` と、層をリストで持つ ``LayerList``（第9章・第11章）。"""
import numpy as np

from mini_dl import cuda, serialization
from mini_dl.core import Parameter, Variable


class Layer:
    """すべての層の基底クラスです。

    属性に代入した ``Parameter`` と ``Layer`` を、代入した順番に覚えます。
    ``params()`` はその順番でパラメータを返すので、何度呼んでも順番が変わりません
    （重みの保存や最適化手法の状態と、パラメータを確実に対応させるためです）。
    同じパラメータや同じ層を 2 か所に代入した（重みを共有した）ときも、パラメータは 1 回だけ返します。

    ``train()`` と ``eval()`` は、自分と中のすべての層の ``training`` を切り替えます
    （PyTorch の ``Module.train()``・``Module.eval()`` と同じです）。
    """

    training = True  # 学習中か（train() / eval() が切り替えます）

    def __init__(self):
        self._params = []  # 代入した順番の属性名（Parameter と Layer）
        self._buffers = []  # 学習しないが保存する配列（バッチ正規化の移動平均など）の属性名

    def __setattr__(self, name, value):
        names = self.__dict__.setdefault("_params", [])
        if isinstance(value, (Parameter, Layer)) and name not in names:
            names.append(name)  # 初めて Parameter か Layer を代入した順番を覚える
        super().__setattr__(name, value)

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)  # block(x, causal=True) のようなキーワード引数も forward へ渡す

    def forward(self, *inputs):
        """順伝播（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.forward が実装されていません")

    def params(self):
        """この層と、中の層のパラメータを、代入した順番に 1 つずつ返します（ジェネレータ）。

        共有しているパラメータは、最初に見つけた 1 回だけ返します。
        """
        for _, param in self.named_params():
            yield param

    def named_params(self, prefix=""):
        """``("l1.W", パラメータ)`` のような、名前とパラメータの組を順番に返します（共有は最初の名前で 1 回）。"""
        seen = set()
        for name, param in self._all_params(prefix):
            if id(param) not in seen:
                seen.add(id(param))
                yield name, param

    def _all_params(self, prefix):
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj._all_params(prefix + name + ".")
            elif isinstance(obj, Parameter):  # あとで None などに置き換えた属性は飛ばす
                yield prefix + name, obj

    def iter_layers(self):
        """自分と、中のすべての層（入れ子も）を 1 回ずつ返します。"""
        seen = set()
        stack = [self]
        while stack:
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            yield layer
            children = [layer.__dict__[n] for n in layer._params if isinstance(layer.__dict__[n], Layer)]
            stack.extend(reversed(children))

    def train(self, mode=True):
        """学習モードにします（``mode=False`` なら推論モード）。中のすべての層も切り替え、自分自身を返します。"""
        for layer in self.iter_layers():
            layer.training = mode
        return self

    def eval(self):
        """推論モードにします（``train(False)`` と同じ）。自分自身を返します。"""
        return self.train(False)

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
        for name, owner, attr in self._buffer_owners(prefix):
            yield name, owner.__dict__[attr]

    def _buffer_owners(self, prefix="", seen=None):
        """``(名前, 持ち主の層, 属性名)`` を順番に返します（読み込みと移動で、配列を置き換えるため）。"""
        seen = set() if seen is None else seen
        if id(self) in seen:
            return
        seen.add(id(self))
        for name in self.__dict__.get("_buffers", ()):
            yield prefix + name, self, name
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj._buffer_owners(prefix + name + ".", seen)

    def to_cpu(self):
        """パラメータと保存用の配列を CPU（NumPy）に移します。自分自身を返します。"""
        return self._to(cuda.as_numpy)

    def to_gpu(self):
        """パラメータと保存用の配列を GPU（CuPy）に移します。自分自身を返します。"""
        return self._to(cuda.as_cupy)

    def _follow_device(self, x):
        """入力 ``x`` が GPU の上にあり、この層のパラメータがまだ CPU の上なら、層を GPU へ移します。

        パラメータはいつも CPU（NumPy）の上で作ります。入力の形から大きさを決める層（``Linear`` など）を
        GPU の入力で初めて呼んだときは、作ったばかりのパラメータを、ここで入力と同じ装置へそろえます。
        """
        data = x.data if isinstance(x, Variable) else x
        if cuda.get_array_module(data) is not np and any(isinstance(p.data, np.ndarray) for p in self.params()):
            self.to_gpu()

    def _to(self, convert):
        for param in self.params():
            if param.data is not None:
                param.data = convert(param.data)
            if param.grad is not None:
                param.grad.data = convert(param.grad.data)
        for _, owner, attr in self._buffer_owners():
            if owner.__dict__[attr] is not None:
                object.__setattr__(owner, attr, convert(owner.__dict__[attr]))
        return self

    def save_weights(self, path, optimizer=None):
        """パラメータ（と保存用の配列、渡せば最適化手法の状態）を npz ファイルに保存します。

        中身は ``mini_dl.serialization.save_weights`` です（一時ファイルに書いてから置き換えるので、
        途中で止まっても壊れたファイルは残りません）。

        Args:
            path: 保存先（``.npz``）。
            optimizer: 一緒に状態を保存する最適化手法（省略可）。
        """
        serialization.save_weights(self, path, optimizer)

    def load_weights(self, path, optimizer=None):
        """``save_weights`` で保存したファイルを読み込みます（``mini_dl.serialization.load_weights``）。

        足りないキー・余分なキー・shape の違うキーがあれば、それらの名前を挙げた ``ValueError`` を
        送出し、モデル（と最適化手法）は一切変えません。

        Args:
            path: 読み込むファイル。
            optimizer: 一緒に状態を戻す最適化手法（省略可）。
        """
        serialization.load_weights(self, path, optimizer)


class LayerList(Layer):
    """層をリストで持つための層です（PyTorch の ``nn.ModuleList`` にあたります）。

    ただの Python のリスト（``self.blocks = [L.Linear(10), ...]``）に入れた層は、``Layer`` から
    見えないので、そのパラメータは ``params()`` にも保存にも最適化にも含まれません。
    ``LayerList`` に入れると、``0``・``1``・… という名前の属性として登録されます
    （保存のキーは ``blocks.0.W`` のようになります）。

    Args:
        layers: 最初に入れておく層の並び（省略可）。
    """

    def __init__(self, layers=()):
        super().__init__()
        self._items = []
        for layer in layers:
            self.append(layer)

    def append(self, layer):
        """層を 1 つ末尾に加えます。

        Raises:
            TypeError: ``layer`` が ``Layer`` でないとき。
        """
        if not isinstance(layer, Layer):
            raise TypeError(f"LayerList に入れられるのは Layer だけです（受け取った型: {type(layer).__name__}）")
        setattr(self, str(len(self._items)), layer)
        self._items.append(layer)

    def __getitem__(self, index):
        return self._items[index]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def forward(self, *inputs):
        raise TypeError("LayerList は層を入れておくだけの入れ物なので、呼び出せません（中の層を順に呼んでください）")
