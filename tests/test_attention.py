"""第18章: 埋め込み・層正規化・GELU・スケール付き内積注意・MultiHeadAttention・GPT・KV キャッシュのテスト。

順伝播は、NumPy（float64）でこのファイルに書いた独立な参照と比べます。勾配は中心差分（``gradient_check``、
float64）と比べます。2 階微分は tests/test_second_order.py の表にあります。
"""
import math

import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import Variable, cuda, gpt, gradient_check, models, no_grad, optimizers


def _rand(shape, seed, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


# --- 独立な参照（NumPy、float64） --------------------------------------------------------------

def _ref_layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _ref_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _ref_attention(q, k, v, mask=None, causal=False):
    """ループで書いた注意: クエリごとに、見てよいキーだけのソフトマックスで値を平均します。"""
    *batch, Lq, D = q.shape
    Lk = k.shape[-2]
    qf, kf, vf = q.reshape(-1, Lq, D), k.reshape(-1, Lk, D), v.reshape(-1, Lk, v.shape[-1])
    m = np.ones((Lq, Lk), bool) if mask is None else mask
    m = np.broadcast_to(m, tuple(batch) + (Lq, Lk)).reshape(-1, Lq, Lk)
    out = np.zeros((qf.shape[0], Lq, v.shape[-1]))
    for n in range(qf.shape[0]):
        for i in range(Lq):
            keys = [j for j in range(Lk) if m[n, i, j] and (not causal or j <= i + Lk - Lq)]
            s = np.array([qf[n, i] @ kf[n, j] for j in keys]) / math.sqrt(D)
            w = np.exp(s - s.max())
            w /= w.sum()
            out[n, i] = sum(wj * vf[n, j] for wj, j in zip(w, keys))
    return out.reshape(tuple(batch) + (Lq, v.shape[-1]))


# --- 順伝播を参照と比べる --------------------------------------------------------------------------

def test_embedding_matches_indexing_and_accumulates_gradients(xp):
    W = _rand((7, 3), 0)
    ids = np.array([[1, 4, 1], [6, 0, 1]])
    y = F.embedding(xp.asarray(ids), Variable(xp.asarray(W)))
    np.testing.assert_allclose(cuda.as_numpy(y.data), W[ids])
    Wv = Variable(xp.asarray(W))
    F.sum(F.embedding(xp.asarray(ids), Wv)).backward()
    expected = np.zeros_like(W)
    for i in ids.ravel():
        expected[i] += 1  # ID 1 は 3 回出てくるので、勾配も 3
    np.testing.assert_allclose(cuda.as_numpy(Wv.grad.data), expected)


def test_embedding_rejects_bad_ids():
    W = Variable(np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError, match="整数"):
        F.embedding(np.array([0.0, 1.0]), W)
    with pytest.raises(IndexError, match="0 以上 5 未満"):
        F.embedding(np.array([0, 5]), W)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 6), (5,)])
def test_layer_norm_matches_reference(xp, shape):
    x, g, b = _rand(shape, 1), _rand(shape[-1:], 2, 0.5, 1.5), _rand(shape[-1:], 3)
    y = F.layer_norm(xp.asarray(x), xp.asarray(g), xp.asarray(b))
    np.testing.assert_allclose(cuda.as_numpy(y.data), _ref_layer_norm(x, g, b), rtol=1e-10, atol=1e-12)
    y2 = F.layer_norm_simple(xp.asarray(x), xp.asarray(g), xp.asarray(b))
    np.testing.assert_allclose(cuda.as_numpy(y2.data), _ref_layer_norm(x, g, b), rtol=1e-10, atol=1e-12)


def test_layer_norm_rejects_wrong_gamma():
    with pytest.raises(ValueError, match="gamma"):
        F.layer_norm(np.zeros((2, 4), np.float32), np.ones(3, np.float32), np.zeros(3, np.float32))


def test_gelu_matches_reference_and_known_values(xp):
    x = np.linspace(-4, 4, 17)
    np.testing.assert_allclose(cuda.as_numpy(F.gelu(xp.asarray(x)).data), _ref_gelu(x), rtol=1e-12)
    np.testing.assert_allclose(cuda.as_numpy(F.gelu_simple(xp.asarray(x)).data), _ref_gelu(x), rtol=1e-12)
    # GELU(1) = 0.8412（tanh の近似。正確な GELU は 0.8413）、GELU(0) = 0
    assert abs(float(cuda.as_numpy(F.gelu(xp.asarray(np.array([1.0]))).data)[0]) - 0.841192) < 1e-5


CASES = [  # (q の shape, k の長さ, マスクの shape か None, causal)
    ((2, 5, 4), 5, None, False),
    ((2, 5, 4), 5, None, True),
    ((2, 3, 4, 4), 6, (2, 1, 1, 6), False),  # パディング: バッチごとに隠すキー
    ((2, 3, 4, 4), 6, (2, 1, 1, 6), True),  # パディングと因果（右下にそろえる）
    ((1, 2, 6), 6, (2, 6), False),  # クエリごとのマスク
    ((3, 1, 4), 5, None, True),  # KV キャッシュ: 新しいクエリ 1 個がすべてのキーを見る
]


def _case(shape, Lk, mask_shape, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=shape)
    k = rng.normal(size=shape[:-2] + (Lk, shape[-1]))
    v = rng.normal(size=shape[:-2] + (Lk, 3))
    mask = None
    if mask_shape is not None:
        mask = rng.random(mask_shape) < 0.7
        mask[..., -1] = True  # どの行も、少なくとも 1 つのキーを見る（因果でも最後のキーは見える）
    return q, k, v, mask


@pytest.mark.parametrize("shape, Lk, mask_shape, causal", CASES)
def test_attention_matches_loop_reference(xp, shape, Lk, mask_shape, causal):
    q, k, v, mask = _case(shape, Lk, mask_shape, 4)
    ref = _ref_attention(q, k, v, mask, causal)
    m = None if mask is None else xp.asarray(mask)
    for f in (F.scaled_dot_product_attention, F.scaled_dot_product_attention_simple):
        y = f(xp.asarray(q), xp.asarray(k), xp.asarray(v), mask=m, causal=causal)
        np.testing.assert_allclose(cuda.as_numpy(y.data), ref, rtol=1e-10, atol=1e-12, err_msg=f.__name__)


def test_attention_rejects_bad_mask_and_shapes():
    q = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="bool"):
        F.scaled_dot_product_attention(q, q, q, mask=np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        F.scaled_dot_product_attention(q, np.zeros((2, 3, 5), np.float32), q)


# --- 勾配（1 階。2 階は test_second_order.py） ----------------------------------------------------

@pytest.mark.parametrize("shape, Lk, mask_shape, causal", CASES[:5])
def test_attention_gradients(xp, shape, Lk, mask_shape, causal):
    q, k, v, mask = _case(shape, Lk, mask_shape, 5)
    m = None if mask is None else xp.asarray(mask)
    for f in (F.scaled_dot_product_attention, F.scaled_dot_product_attention_simple):
        gradient_check(lambda a, b, c: f(a, b, c, mask=m, causal=causal), *(xp.asarray(a) for a in (q, k, v)))


def test_fused_and_simple_agree_on_gradients():
    q, k, v, mask = _case((2, 2, 5, 4), 5, (2, 1, 1, 5), 6)
    grads = []
    for f in (F.scaled_dot_product_attention, F.scaled_dot_product_attention_simple):
        xs = [Variable(a.copy()) for a in (q, k, v)]
        F.sum(f(*xs, mask=mask, causal=True) ** 2).backward()
        grads.append([x.grad.data for x in xs])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_layer_norm_gelu_embedding_gradients(xp):
    gradient_check(F.layer_norm, *(xp.asarray(a) for a in (_rand((3, 5), 7), _rand((5,), 8), _rand((5,), 9))))
    gradient_check(F.gelu, xp.asarray(_rand((3, 5), 10, -3, 3)))
    ids = xp.asarray(np.array([[0, 3, 3], [2, 0, 1]]))
    gradient_check(lambda W: F.embedding(ids, W), xp.asarray(_rand((4, 3), 11)))


# --- float32 と層 --------------------------------------------------------------------------------

def test_float32_end_to_end(xp):
    x = xp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32))
    block = L.TransformerBlock(8, 2, seed=0)
    y = block(Variable(x))
    assert y.dtype == np.float32
    F.sum(y).backward()
    for p in block.params():
        assert p.data.dtype == np.float32 and p.grad.data.dtype == np.float32, p.name
        assert cuda.get_array_module(p.data) is xp  # パラメータは入力と同じ装置にある


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_multi_head_attention_shapes_and_causality(xp, heads, kv_heads):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 8)).astype(np.float32)
    mha = L.MultiHeadAttention(8, heads, num_kv_heads=kv_heads, seed=0)
    y = cuda.as_numpy(mha(xp.asarray(x), None, True).data)
    assert y.shape == (2, 6, 8) and y.dtype == np.float32
    x2 = x.copy()
    x2[:, 4:] += 1.0  # 未来（位置 4 以降）を変えても、位置 0〜3 の出力は変わらない
    y2 = cuda.as_numpy(mha(xp.asarray(x2), None, True).data)
    np.testing.assert_allclose(y2[:, :4], y[:, :4], rtol=1e-5, atol=1e-6)
    assert np.abs(y2[:, 4:] - y[:, 4:]).max() > 1e-3
    n_kv = 2 * 8 * (8 // heads * kv_heads) + 2 * (8 // heads * kv_heads)
    assert sum(p.size for p in mha.params()) == 2 * (8 * 8 + 8) + n_kv


def test_multi_head_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="num_heads"):
        L.MultiHeadAttention(10, 4)


def test_kv_cache_generation_equals_recomputation(xp):
    model = models.GPT(11, dim=16, num_heads=2, num_layers=2, context=8, num_kv_heads=1, seed=0)
    prompt = xp.asarray(np.array([[1, 2, 3], [4, 5, 6]]))
    kw = dict(temperature=0.9, top_k=5, seed=3)
    a = gpt.generate(model, prompt, 12, use_cache=True, **kw)  # 12 > context - 3: キャッシュの作り直しも通る
    b = gpt.generate(model, prompt, 12, use_cache=False, **kw)
    assert a.shape == (2, 15)
    np.testing.assert_array_equal(cuda.as_numpy(a), cuda.as_numpy(b))
    caches = [L.KVCache() for _ in model.blocks]  # ロジットも同じ
    ids = cuda.as_numpy(a)[:, :8]
    with no_grad():
        full = model(xp.asarray(ids)).data
        step = [model(xp.asarray(ids[:, t:t + 1]), caches).data for t in range(8)]
    np.testing.assert_allclose(cuda.as_numpy(xp.concatenate(step, axis=1)), cuda.as_numpy(full), rtol=1e-4, atol=1e-5)


def test_sampling_temperature_and_top_k():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    draws = np.array([gpt.sample_next(logits, 1.0, None, rng)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    top2 = {int(gpt.sample_next(logits, 1.0, 2, rng)[0]) for _ in range(300)}
    assert top2 == {0, 1}
    assert int(gpt.sample_next(logits, 0, None, rng)[0]) == 0  # 温度 0: いちばん確率の高いもの


def test_tokenizer_and_corpora(tmp_path):
    tok = gpt.CharTokenizer("あいあいう", max_size=3)
    assert tok.chars == ["□", "あ", "い"]
    assert tok.decode(tok.encode("あうい")) == "あ□い"
    text = gpt.book_corpus()
    assert len(text) > 10000 and "です" in text and "```" not in text
    # 青空文庫の形式（ローカルのデータで）: ルビ・注・記号の説明・底本を除く
    body = ("吾輩は猫である\n夏目漱石\n\n-------------------------------------------------------\n"
            "【テキスト中に現れる記号について】\n《》：ルビ\n-------------------------------------------------------\n"
            "　吾輩《わがはい》は猫である。｜名前《なまえ》はまだ無い。［＃「無い」に傍点］\n\n底本：「夏目漱石全集」\n")
    path = tmp_path / "neko.txt"
    path.write_bytes(body.replace("\n", "\r\n").encode("shift_jis"))
    out = gpt.aozora_text(path)
    assert "吾輩は猫である。名前はまだ無い。" in out
    assert "《" not in out and "［＃" not in out and "底本" not in out and "記号" not in out


def test_download_aozora_with_local_data(tmp_path, monkeypatch):
    """青空文庫のダウンローダを、ローカルの zip（file:// の URL）で確かめます: SHA-256 の確認・キャッシュ・本文の取り出し。"""
    import zipfile

    from mini_dl import datasets

    body = "作品名\n作者\n\n　本文《ほんぶん》です。\n\n底本：「全集」\n"
    src = tmp_path / "work.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("work.txt", body.replace("\n", "\r\n").encode("shift_jis"))
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "cache"))
    sha = datasets.sha256_of(src)
    text = gpt.download_aozora("work.zip", src.as_uri(), sha, progress=False)
    assert "本文です。" in text and "底本" not in text and "ほんぶん" not in text
    assert (tmp_path / "cache" / "work.zip").exists()
    src.unlink()  # キャッシュにあれば、もう取りに行かない
    assert gpt.download_aozora("work.zip", src.as_uri(), sha, progress=False) == text
    with pytest.raises((ValueError, ConnectionError)):
        gpt.download_aozora("other.zip", (tmp_path / "missing.zip").as_uri(), sha, progress=False)


def test_one_block_attention_model_learns_text_below_unigram():
    """公開 API だけで 1 ブロックの注意のモデルを文字の列で学習し、ユニグラムよりずっと低い損失にします。"""
    text = gpt.book_corpus()[:60000]
    tok = gpt.CharTokenizer(text, max_size=200)
    ids = tok.encode(text)
    n = int(len(ids) * 0.9)
    train, valid = ids[:n], ids[n:]
    baseline = gpt.unigram_loss(train, valid, len(tok))
    model = models.GPT(len(tok), dim=32, num_heads=2, num_layers=1, context=16, seed=0)
    opt = optimizers.Adam(lr=1e-2).setup(model)
    rng = np.random.default_rng(0)
    T, B = 16, 32
    for _ in range(150):
        ix = rng.integers(0, len(train) - T - 1, B)
        x = np.stack([train[i:i + T] for i in ix])
        t = np.stack([train[i + 1:i + T + 1] for i in ix])
        loss = F.softmax_cross_entropy(F.reshape(model(x), (-1, len(tok))), t.reshape(-1))
        model.cleargrads()
        loss.backward()
        opt.update()
    ix = np.arange(0, len(valid) - T - 1, T)[:300]
    with no_grad():
        x = np.stack([valid[i:i + T] for i in ix])
        t = np.stack([valid[i + 1:i + T + 1] for i in ix])
        val = float(F.softmax_cross_entropy(F.reshape(model(x), (-1, len(tok))), t.reshape(-1)).data)
    assert val < baseline - 0.8, f"検証の損失 {val:.3f} がユニグラム {baseline:.3f} より十分に低くありません"
