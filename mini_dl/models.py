"""モデル（``mini_dl.models``）: 層を組み合わせた、学習の単位です。"""
import numpy as np

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import cuda, initializers
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


class ConvAutoencoder(Model):
    """畳み込みのオートエンコーダ: 画像を小さな潜在ベクトルに縮め（エンコーダ）、そこから画像に戻します（デコーダ）。

    エンコーダはストライド 2 の畳み込み 2 回で縦横を 1/4 にし、全結合で ``latent_size`` 次元にします。
    デコーダはその逆順で、全結合のあとにストライド 2 の転置畳み込み 2 回で縦横を 4 倍に戻し、
    シグモイドで 0〜1 の画素にします。転置畳み込みのカーネルは 4×4 で、ストライド 2 で割り切れるので、
    どの出力の画素にも同じ数の窓が重なります（市松模様のむらが出にくい形です）。

    Args:
        latent_size (int): 潜在ベクトルの次元。
        channels (tuple): 2 つの畳み込みの出力のチャンネル数。
        in_shape (tuple): 1 枚の画像の shape (C, H, W)。H と W は 4 の倍数にします。
        seed: 重みの初期値の乱数の種。

    Shape:
        x: (N, C, H, W) -> z: (N, latent_size) -> y: (N, C, H, W)
    """

    def __init__(self, latent_size=16, *, channels=(8, 16), in_shape=(1, 28, 28), seed=None):
        super().__init__()
        C, H, W = in_shape
        if H % 4 or W % 4:
            raise ValueError(f"ConvAutoencoder の画像の縦横は 4 の倍数にしてください（受け取った in_shape: {in_shape}）")
        c1, c2 = channels
        self.hidden_shape = (c2, H // 4, W // 4)  # エンコーダの畳み込みの出力 (C2, H/4, W/4)

        def s(i):
            return None if seed is None else seed + i

        self.conv1 = L.Conv2d(c1, 3, stride=2, pad=1, seed=s(0))  # (N, C, H, W) -> (N, C1, H/2, W/2)
        self.conv2 = L.Conv2d(c2, 3, stride=2, pad=1, seed=s(1))  # -> (N, C2, H/4, W/4)
        self.to_latent = L.Linear(latent_size, seed=s(2))  # (N, C2*H/4*W/4) -> (N, latent_size)
        self.from_latent = L.Linear(c2 * (H // 4) * (W // 4), seed=s(3))  # (N, latent_size) -> (N, C2*H/4*W/4)
        self.deconv1 = L.Deconv2d(c1, 4, stride=2, pad=1, seed=s(4))  # (N, C2, H/4, W/4) -> (N, C1, H/2, W/2)
        self.deconv2 = L.Deconv2d(C, 4, stride=2, pad=1, seed=s(5))  # -> (N, C, H, W)

    def encode(self, x):
        """画像 (N, C, H, W) を潜在ベクトル (N, latent_size) にします。"""
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.to_latent(F.reshape(h, (h.shape[0], -1)))  # (N, C2, H/4, W/4) -> (N, C2*H/4*W/4)

    def decode(self, z):
        """潜在ベクトル (N, latent_size) から画像 (N, C, H, W)（値は 0〜1）を作ります。"""
        h = F.relu(self.from_latent(z))
        h = F.reshape(h, (h.shape[0],) + self.hidden_shape)  # (N, C2*H/4*W/4) -> (N, C2, H/4, W/4)
        h = F.relu(self.deconv1(h))
        return F.sigmoid(self.deconv2(h))

    def forward(self, x):
        return self.decode(self.encode(x))


def _binary_cross_entropy_with_logits(logits, t):
    r"""画素ごとの 2 値の交差エントロピー :math:`\mathrm{softplus}(a) - t a` の、画素についての和（1 枚ごと）。

    :math:`\mathrm{softplus}(a) = \log(1 + e^{a}) = \max(a, 0) + \log(1 + e^{-|a|})` と書くと、
    :math:`a` が大きくてもあふれません（:math:`|a| = \max(a, 0) + \max(-a, 0)`）。

    Shape:
        logits, t: (N, D) -> (N,)
    """
    softplus = F.relu(logits) + F.log(1 + F.exp(-(F.relu(logits) + F.relu(-logits))))
    return F.sum(softplus - t * logits, axis=1)


class VAE(Model):
    r"""変分オートエンコーダ（VAE）: エンコーダが潜在変数の分布 :math:`q(z|x) = \mathcal{N}(\mu, \mathrm{diag}(\sigma^2))` を出し、
    そこから引いた :math:`z` をデコーダが画像に戻します。

    エンコーダとデコーダは、隠れ層 1 つの全結合です。エンコーダは平均 :math:`\mu` と対数分散
    :math:`\log \sigma^2` を出します（分散は正でなければならないので、どんな実数にもなる対数を出させます）。
    :math:`z = \mu + \sigma \odot \varepsilon`（:math:`\varepsilon \sim \mathcal{N}(0, I)`）と引けば、
    乱数 :math:`\varepsilon` は定数として扱えるので、:math:`\mu` と :math:`\sigma` に勾配が流れます
    （再パラメータ化、reparameterization trick）。:math:`\varepsilon` は層が持つ乱数生成器から引き、
    入力と同じ装置の上に置きます。推論中（``eval()``）の ``forward`` は、引かずに :math:`z = \mu` を使います。

    Args:
        latent_size (int): 潜在変数 :math:`z` の次元。
        hidden_size (int): エンコーダとデコーダの隠れ層の大きさ。
        out_size (int): 画像の画素数 :math:`D`（MNIST なら 784）。
        seed: 重みの初期値と :math:`\varepsilon` の乱数の種。

    Shape:
        x: (N, D)、値は 0〜1 -> mu, logvar, z: (N, latent_size) -> 画像: (N, D)
    """

    def __init__(self, latent_size=2, *, hidden_size=256, out_size=784, seed=None):
        super().__init__()

        def s(i):
            return None if seed is None else seed + i

        self.enc = L.Linear(hidden_size, seed=s(0))
        self.enc_mu = L.Linear(latent_size, seed=s(1))
        self.enc_logvar = L.Linear(latent_size, seed=s(2))
        self.dec = L.Linear(hidden_size, seed=s(3))
        self.dec_out = L.Linear(out_size, seed=s(4))
        self.rng = np.random.default_rng(s(5))

    def encode(self, x):
        """画像 (N, D) から、:math:`q(z|x)` の平均と対数分散（どちらも (N, latent_size)）を返します。"""
        h = F.relu(self.enc(x))
        return self.enc_mu(h), self.enc_logvar(h)

    def reparameterize(self, mu, logvar):
        r""":math:`z = \mu + e^{\log \sigma^2 / 2} \odot \varepsilon` を返します（:math:`\varepsilon \sim \mathcal{N}(0, I)`）。"""
        eps = self.rng.standard_normal(mu.shape).astype(mu.dtype)
        xp = cuda.get_array_module(mu)
        if xp is not np:  # 入力が GPU の上なら、乱数も GPU へ（明示的に 1 回だけ移す）
            eps = xp.asarray(eps)
        return mu + F.exp(0.5 * logvar) * eps

    def decode_logits(self, z):
        """潜在変数 (N, latent_size) から、画素ごとのロジット (N, D)（シグモイドの前）を返します。"""
        return self.dec_out(F.relu(self.dec(z)))

    def decode(self, z):
        """潜在変数 (N, latent_size) から画像 (N, D)（値は 0〜1）を作ります。"""
        return F.sigmoid(self.decode_logits(z))

    def forward(self, x):
        """画像を符号化して戻した画像 (N, D) を返します（学習中は :math:`z` を引き、推論中は :math:`z = \\mu`）。"""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z)

    def loss(self, x):
        r"""負の ELBO（1 枚あたりの平均）と、その 2 つの項を返します。

        .. math::

            -\mathrm{ELBO} = \underbrace{-\mathbb{E}_{q(z|x)}[\log p(x|z)]}_{\text{再構成誤差}}
            + \underbrace{\tfrac{1}{2} \textstyle\sum_j (\mu_j^2 + \sigma_j^2 - \log \sigma_j^2 - 1)}_{\mathrm{KL}(q(z|x) \,\|\, \mathcal{N}(0, I))}

        再構成誤差は、:math:`z` を 1 つ引いて、画素ごとの 2 値の交差エントロピーを画素について足したものです。

        Args:
            x: shape (N, D) の画像（値は 0〜1）。

        Returns:
            tuple: ``(loss, reconstruction, kl)``。どれも 1 枚あたりの平均のスカラーの ``Variable`` で、
            ``loss = reconstruction + kl`` です。
        """
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        reconstruction = F.mean(_binary_cross_entropy_with_logits(self.decode_logits(z), x))
        kl = F.mean(0.5 * F.sum(mu ** 2 + F.exp(logvar) - logvar - 1, axis=1))
        return reconstruction + kl, reconstruction, kl


class CNN(Model):
    """LeNet 風の畳み込みニューラルネット（第15章）: 「畳み込み → ReLU → 最大プーリング」を重ね、全結合で分類します。

    畳み込みはパディング ``kernel_size // 2`` で画像の大きさを保ち、2×2 の最大プーリングで縦横を半分にします。
    ReLU は単調に増えるので最大プーリングと順番を入れ替えられ、値も勾配も同じまま 4 分の 1 の大きさで計算できます。
    入力のチャンネル数と、全結合層の入力の大きさは、最初の入力で決まります。

    Args:
        channels: 畳み込み層ごとの出力のチャンネル数（既定は ``(16, 32)``）。
        out_size (int): 出力（クラス）の数。
        hidden (int): 最後の全結合層の前に入れる全結合層の大きさ（``None`` なら入れません）。
        kernel_size (int): 畳み込みのカーネルの大きさ。
        seed: 重みの初期値の乱数の種。

    Shape:
        x: (N, C, H, W) -> y: (N, out_size)
    """

    def __init__(self, channels=(16, 32), out_size=10, *, hidden=None, kernel_size=3, seed=None):
        super().__init__()
        self.convs = []
        for i, oc in enumerate(channels):
            conv = L.Conv2d(oc, kernel_size, pad=kernel_size // 2, seed=None if seed is None else seed + i)
            setattr(self, f"conv{i}", conv)
            self.convs.append(conv)
        n = len(channels)
        self.hidden = None
        if hidden is not None:
            self.hidden = L.Linear(hidden, initializer=initializers.he_normal, seed=None if seed is None else seed + n)
        self.fc = L.Linear(out_size, seed=None if seed is None else seed + n + 1)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(F.max_pooling(conv(x), 2))  # (N, C, H, W) -> (N, OC, H/2, W/2)。ReLU は後でも同じ（本文）
        x = F.reshape(x, (x.shape[0], -1))  # (N, OC, H', W') -> (N, OC*H'*W')
        if self.hidden is not None:
            x = F.relu(self.hidden(x))
        return self.fc(x)


class GPT(Model):
    r"""本書の小さな GPT: 文字の列から、次の文字の確率（ロジット）を出す Transformer（第18章）。

    トークンの埋め込みと位置の埋め込み（学習する）を足し、``TransformerBlock`` を ``num_layers`` 個通し、
    最後の層正規化と全結合で語彙の大きさのロジットにします。注意は因果マスクつきなので、
    位置 t の出力は位置 t までの入力だけで決まります。

    Args:
        vocab_size (int): 語彙の大きさ V。
        dim (int): トークンのベクトルの長さ D（キーワード専用。以下同じ）。
        num_heads (int): ヘッドの数。
        num_layers (int): ブロックの数。
        context (int): 一度に見られるトークンの数（位置の埋め込みの数）。
        num_kv_heads (int): キーと値のヘッドの数（``MultiHeadAttention`` を参照）。
        dropout (float): ブロックの中のドロップアウトの割合。
        seed: 初期値の乱数の種。

    Shape:
        ids: (B, T)（整数、T ≤ context） -> logits: (B, T, V)
    """

    def __init__(self, vocab_size, *, dim=64, num_heads=4, num_layers=2, context=64, num_kv_heads=None,
                 dropout=0.0, seed=None):
        super().__init__()
        seeds = np.random.default_rng(seed).integers(2**31, size=num_layers + 3)
        self.vocab_size, self.dim, self.context = vocab_size, dim, context
        self.tok_emb = L.Embedding(vocab_size, dim, seed=seeds[0])
        self.pos_emb = L.Embedding(context, dim, seed=seeds[1])
        self.blocks = L.LayerList([L.TransformerBlock(dim, num_heads, num_kv_heads=num_kv_heads, dropout=dropout,
                                                      seed=s) for s in seeds[2:-1]])
        self.ln_f = L.LayerNorm(dim)
        self.head = L.Linear(vocab_size, seed=seeds[-1])

    def forward(self, ids, caches=None):
        """ロジットを計算します。

        Args:
            ids: (B, T) の整数の配列。
            caches: 生成のときに、ブロックごとの ``KVCache`` のリストを渡します。これまでのトークンは
                キャッシュにあるので、``ids`` には新しいトークンだけを渡します（位置はキャッシュの長さから続けます）。

        Returns:
            Variable: (B, T, V) のロジット。
        """
        start = 0 if caches is None else len(caches[0])
        T = ids.shape[1]
        if start + T > self.context:
            raise ValueError(f"GPT に入れられるトークンは context={self.context} 個までです"
                             f"（受け取った数: キャッシュ {start} + 入力 {T}）")
        xp = cuda.get_array_module(ids)
        pos = xp.arange(start, start + T)  # (T,)
        x = self.tok_emb(ids) + self.pos_emb(pos)  # (B, T, D) + (T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, None, True, None if caches is None else caches[i])  # (x, mask, causal, cache)
        return self.head(self.ln_f(x))
