"""モデル（``mini_dl.models``）: 層を組み合わせた、学習の単位です。"""
import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import initializers
from mini_dl.layers.base import Layer


class Model(Layer):
    """モデルの基底クラスです。

    中身は ``Layer`` と同じで、「層を組み合わせた学習の単位」であることを名前で示します
    （PyTorch ではどちらも ``nn.Module`` です）。学習モードと推論モードの切り替え ``train()``・``eval()``
    は、すべての ``Layer`` にあり、入れ子になった層まで切り替えます。
    """


class Sequential(Model):
    """層（や関数）を順番に適用するモデルです。

    Args:
        *layers: ``Layer`` か、``Variable`` を受け取って ``Variable`` を返す関数（``F.relu`` など）。
    """

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)
        for i, layer in enumerate(layers):
            if isinstance(layer, Layer):
                setattr(self, f"l{i}", layer)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class MLP(Model):
    """多層パーセプトロン: 全結合層と活性化関数を交互に重ねたモデルです。

    Args:
        sizes: 各層の出力の大きさ（例: ``(100, 10)`` なら 100 → 10 の 2 層）。入力の大きさは最初の入力で決まります。
        activation: 層の間の活性化関数（既定は ``F.sigmoid``）。最後の層の後には使いません。
        initializer: 重みの初期値を作る関数（``mini_dl.initializers`` のどれか）。
        seed: 重みの初期値の乱数の種。

    Shape:
        x: (N, D) -> y: (N, sizes[-1])
    """

    def __init__(self, sizes, *, activation=F.sigmoid, initializer=initializers.lecun_normal, seed=None):
        super().__init__()
        self.activation = activation
        self.layers = []
        for i, size in enumerate(sizes):
            layer = L.Linear(size, initializer=initializer, seed=None if seed is None else seed + i)
            setattr(self, f"l{i}", layer)
            self.layers.append(layer)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)
