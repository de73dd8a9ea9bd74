"""Transformer の層（第18章）: ``LayerNorm``・``Embedding``・``MultiHeadAttention``・``TransformerBlock``。"""
import numpy as np

import mini_dl.functions as F
from mini_dl import cuda
from mini_dl.core import Parameter, Variable
from mini_dl.layers.base import Layer
from mini_dl.layers.basic import Linear


class LayerNorm(Layer):
    r"""層正規化の層: 最後の軸で正規化し、:math:`\gamma \hat{x} + \beta` を返します（``F.layer_norm``）。

    :math:`\gamma` は 1、:math:`\beta` は 0 で始めます。大きさ D を省くと、最初の入力の最後の軸から決めます
    （パラメータは入力と同じ装置に作ります）。

    Args:
        size (int): 最後の軸の長さ D（省略可）。
        eps (float): 分散に足す小さな数。キーワード専用です。
        dtype: パラメータの dtype（既定は float32）。

    Shape:
        x: (..., D) -> y: x と同じ
    """

    def __init__(self, size=None, *, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.eps = eps
        self.dtype = dtype
        self.gamma = Parameter(None, name="gamma")
        self.beta = Parameter(None, name="beta")
        if size is not None:
            self._init_params(size)

    def _init_params(self, size):
        self.gamma.data = np.ones(size, dtype=self.dtype)
        self.beta.data = np.zeros(size, dtype=self.dtype)

    def forward(self, x):
        if self.gamma.data is None:
            self._init_params(x.shape[-1])
        self._follow_device(x)  # 入力が GPU の上なら、パラメータも GPU へ
        return F.layer_norm(x, self.gamma, self.beta, eps=self.eps)


class Embedding(Layer):
    r"""埋め込みの層: 整数の ID を、長さ ``dim`` のベクトルに置き換えます（``F.embedding``）。

    重み :math:`W`（``(vocab_size, dim)``）は、平均 0・標準偏差 ``std`` の正規分布で初期化します
    （既定の 0.02 は GPT-2 と同じです。PyTorch の ``nn.Embedding`` は標準偏差 1）。
    最初の入力が GPU にあれば、重みを GPU へ移します。

    Args:
        vocab_size (int): 語彙の大きさ V。
        dim (int): ベクトルの長さ D。
        std (float): 初期値の標準偏差。キーワード専用です。
        dtype: 重みの dtype（既定は float32）。
        seed: 初期値の乱数の種。

    Shape:
        ids: (...)（整数） -> y: (..., D)
    """

    def __init__(self, vocab_size, dim, *, std=0.02, dtype=np.float32, seed=None):
        super().__init__()
        self.vocab_size = vocab_size
        self.dim = dim
        W = np.random.default_rng(seed).normal(0.0, std, size=(vocab_size, dim)).astype(dtype)
        self.W = Parameter(W, name="W")

    def forward(self, ids):
        self._follow_device(ids)
        return F.embedding(ids, self.W)


class KVCache:
    """KV キャッシュ: 1 つの注意の層が、これまでのトークンについて計算したキーと値を覚えておく入れ物です。

    生成（推論）のときだけ使うので、``Variable`` ではなく配列を持ちます。
    ``k``・``v`` の shape は (B, Hkv, T, Dh)（T はこれまでのトークン数）です。
    """

    def __init__(self):
        self.k = None
        self.v = None

    def __len__(self):
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k, v):
        """新しいトークンのキーと値（(B, Hkv, t, Dh) の配列）を後ろにつなぎ、全体を返します。"""
        if self.k is None:
            self.k, self.v = k, v
        else:
            xp = cuda.get_array_module(k)
            self.k = xp.concatenate([self.k, k], axis=-2)
            self.v = xp.concatenate([self.v, v], axis=-2)
        return self.k, self.v

    def nbytes(self):
        """キャッシュが使っているバイト数。"""
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


class MultiHeadAttention(Layer):
    r"""マルチヘッド注意: 入力を H 個のヘッドのクエリ・キー・値に写し、ヘッドごとに注意をとって、まとめて写します。

    .. math::

        \mathrm{head}_h = \mathrm{Attention}(X W^Q_h, X W^K_h, X W^V_h), \qquad
        Y = [\mathrm{head}_1, \dots, \mathrm{head}_H]\,W^O

    ``num_kv_heads`` を H より小さくすると、いくつかのクエリのヘッドが同じキーと値を使います
    （1 ならマルチクエリ注意 MQA、1 < Hkv < H ならグループ化クエリ注意 GQA）。キーと値の数が減るので、
    KV キャッシュが H / Hkv 分の 1 になります。

    Args:
        dim (int): 入力と出力の長さ D（``num_heads`` で割り切れる数）。
        num_heads (int): ヘッドの数 H。
        num_kv_heads (int): キーと値のヘッドの数 Hkv（H の約数。省略すると H）。キーワード専用です。
        nobias (bool): ``True`` なら写像にバイアスを使いません。
        seed: 初期値の乱数の種。

    Shape:
        x: (B, T, D) -> y: (B, T, D)

    Raises:
        ValueError: ``dim`` が ``num_heads`` で、または ``num_heads`` が ``num_kv_heads`` で割り切れないとき。
    """

    def __init__(self, dim, num_heads, *, num_kv_heads=None, nobias=False, seed=None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads or num_heads % num_kv_heads:
            raise ValueError("MultiHeadAttention の dim は num_heads で、num_heads は num_kv_heads で割り切れるようにします"
                             f"（受け取った値: dim={dim}、num_heads={num_heads}、num_kv_heads={num_kv_heads}）")
        self.dim, self.num_heads, self.num_kv_heads = dim, num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        rng = np.random.default_rng(seed)
        seeds = rng.integers(2**31, size=4)
        kv_dim = num_kv_heads * self.head_dim
        # 重みは最初の入力と同じ装置に作る（Linear の in_size を省く）
        self.q_proj = Linear(dim, nobias=nobias, seed=seeds[0])
        self.k_proj = Linear(kv_dim, nobias=nobias, seed=seeds[1])
        self.v_proj = Linear(kv_dim, nobias=nobias, seed=seeds[2])
        self.out_proj = Linear(dim, nobias=nobias, seed=seeds[3])

    def _heads(self, x, n):
        B, T = x.shape[:2]
        return F.transpose(F.reshape(x, (B, T, n, self.head_dim)), (0, 2, 1, 3))  # (B, T, n*Dh) -> (B, n, T, Dh)

    def _repeat_kv(self, x):
        """(B, Hkv, T, Dh) のキーか値を、グループの数だけ繰り返して (B, H, T, Dh) にします。"""
        g = self.num_heads // self.num_kv_heads
        if g == 1:
            return x
        B, Hkv, T, Dh = x.shape
        x = F.broadcast_to(F.reshape(x, (B, Hkv, 1, T, Dh)), (B, Hkv, g, T, Dh))
        return F.reshape(x, (B, Hkv * g, T, Dh))

    def forward(self, x, mask=None, causal=False, cache=None):
        """注意を計算します。

        Args:
            x: (B, T, D) の入力。
            mask: (B, 1, T, Tk) などにブロードキャストできる真偽値の配列（``True`` の場所を見ます）。
            causal (bool): 因果マスクを使うなら ``True``。
            cache (KVCache): 生成のときに渡すと、これまでのキーと値に今回の分をつないで注意をとります。

        Returns:
            Variable: (B, T, D) の出力。
        """
        B, T, D = x.shape
        q = self._heads(self.q_proj(x), self.num_heads)  # (B, H, T, Dh)
        k = self._heads(self.k_proj(x), self.num_kv_heads)  # (B, Hkv, T, Dh)
        v = self._heads(self.v_proj(x), self.num_kv_heads)
        if cache is not None:
            k_all, v_all = cache.append(k.data, v.data)  # (B, Hkv, Tk, Dh)（生成のときは微分しない）
            k, v = Variable(k_all), Variable(v_all)
        y = F.scaled_dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), mask=mask, causal=causal)
        y = F.reshape(F.transpose(y, (0, 2, 1, 3)), (B, T, D))  # (B, H, T, Dh) -> (B, T, H, Dh) -> (B, T, D)
        return self.out_proj(y)


class TransformerBlock(Layer):
    r"""Transformer のブロック（GPT-2 と同じ、正規化を先に置く Pre-LN の形）。

    .. math::

        h = x + \mathrm{MHA}(\mathrm{LN}_1(x)), \qquad y = h + W_2\,\mathrm{GELU}(W_1\,\mathrm{LN}_2(h))

    どちらの部分も残差接続（入力をそのまま足す）なので、勾配が入力まで直接流れます。

    Args:
        dim (int): トークンのベクトルの長さ D。
        num_heads (int): ヘッドの数。
        mlp_ratio (int): MLP の中間の大きさが D の何倍か（既定は 4）。キーワード専用です。
        num_kv_heads (int): キーと値のヘッドの数（``MultiHeadAttention`` を参照）。
        dropout (float): 注意と MLP の出力にかけるドロップアウトの割合。
        seed: 初期値の乱数の種。

    Shape:
        x: (B, T, D) -> y: (B, T, D)
    """

    def __init__(self, dim, num_heads, *, mlp_ratio=4, num_kv_heads=None, dropout=0.0, seed=None):
        super().__init__()
        seeds = np.random.default_rng(seed).integers(2**31, size=4)
        self.ln1 = LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, num_kv_heads=num_kv_heads, seed=seeds[0])
        self.ln2 = LayerNorm(dim)
        self.fc1 = Linear(mlp_ratio * dim, seed=seeds[1])
        self.fc2 = Linear(dim, seed=seeds[2])
        self.dropout = dropout
        self.rng = np.random.default_rng(seeds[3])

    def forward(self, x, mask=None, causal=True, cache=None):
        h = self.attn(self.ln1(x), mask, causal, cache)  # Layer.__call__ は位置引数だけを渡す
        x = x + F.dropout(h, self.dropout, training=self.training, rng=self.rng)
        h = self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x + F.dropout(h, self.dropout, training=self.training, rng=self.rng)
