"""小さな GPT のための道具（第18章）: 文字の語彙・日本語のコーパス・サンプリング・KV キャッシュでの生成。

既定のコーパスは、この本の章のノートブック（``book/*.ipynb``）のマークダウンのセルです。リポジトリに
いつもあるので、ダウンロードは要りません。もっと大きなコーパスには、青空文庫のテキスト（ルビつきの zip）を
``download_aozora`` で取ってきて ``aozora_text`` で読みます。
"""
import io
import pathlib
import re
import zipfile
from collections import Counter

import numpy as np

from mini_dl import cuda, datasets
from mini_dl.core import no_grad
from mini_dl.layers.attention import KVCache


class CharTokenizer:
    """文字を 1 つのトークンとする語彙です。

    出てくる回数の多い順に ``max_size`` 個までの文字に ID をつけます。語彙にない文字は、
    すべて ID 0 の「不明」（``unk``）にします。

    Args:
        text (str): 語彙を作るテキスト。
        max_size (int): 語彙の大きさの上限（不明の文字を含めて。``None`` ならすべての文字）。
        unk (str): 不明の文字を表示するときの文字。
    """

    def __init__(self, text, max_size=None, unk="□"):
        counts = Counter(text)
        chars = sorted(counts, key=lambda c: (-counts[c], c))  # 多い順（同じ回数なら文字の順）で決まった順番
        if max_size is not None:
            chars = chars[:max_size - 1]
        self.unk = unk
        self.chars = [unk] + [c for c in chars if c != unk]
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        """テキストを ID の配列（int64）にします。"""
        return np.array([self.index.get(c, 0) for c in text], dtype=np.int64)

    def decode(self, ids):
        """ID の並び（配列かリスト）をテキストに戻します。"""
        return "".join(self.chars[int(i)] for i in cuda.as_numpy(np.asarray(ids) if isinstance(ids, list) else ids))


def book_corpus(book_dir=None, exclude=()):
    """この本の章のノートブックのマークダウンを、1 つのテキストにつないで返します。

    コード（```` ``` ```` のブロックと `` ` `` で囲んだ部分）・数式（``$``）・HTML のタグ・URL・表・見出しと箇条書きの記号は
    除きます。ノートブックはファイル名の順に読みます。

    Args:
        book_dir: ノートブックのあるフォルダ（既定はリポジトリの ``book/``）。
        exclude: 読まないノートブックのファイル名の一部（例: ``("ch18",)``）。

    Returns:
        str: コーパスのテキスト。

    Raises:
        FileNotFoundError: ノートブックが 1 つも見つからないとき。
    """
    parts = [_clean_markdown(cell) for cell in datasets.book_markdown(book_dir, exclude)]
    if not parts:
        raise FileNotFoundError(f"{book_dir or 'book/'} に章のノートブック（ch*.ipynb）が見つかりません")
    return "\n".join(p for p in parts if p)


def _clean_markdown(text):
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # コードのブロック
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)  # 別行の数式
    text = re.sub(r"\$[^$\n]*\$", "", text)  # 文の中の数式
    text = re.sub(r"`[^`\n]*`", "", text)  # 文の中のコード
    text = re.sub(r"<[^>]+>", "", text)  # HTML のタグ
    text = re.sub(r"https?://\S+", "", text)  # URL
    text = re.sub(r"^\s*(#+|[-*]|\d+\.|\|.*)\s*", "", text, flags=re.M)  # 見出し・箇条書きの記号と表
    text = text.replace("**", "")
    return re.sub(r"\n{2,}", "\n", text).strip()


def aozora_text(path):
    """青空文庫のテキスト（``.txt`` か、それを含む ``.zip``、Shift_JIS）を読み、本文だけの文字列にします。

    ルビ（《かな》と区切りの ｜）、入力者の注（［＃…］）、最初の記号の説明（-------- で囲まれた部分）と、
    最後の「底本：」から後ろを除きます。

    Args:
        path: ファイルのパス。

    Returns:
        str: 本文。
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if path.suffix == ".zip":
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            name = next(n for n in z.namelist() if n.endswith(".txt"))
            raw = z.read(name)
    text = raw.decode("shift_jis", errors="replace").replace("\r\n", "\n")
    text = re.sub(r"\n-{10,}\n.*?\n-{10,}\n", "\n", text, count=1, flags=re.S)  # 記号の説明
    text = text.split("\n底本：")[0]
    text = re.sub(r"《[^》]*》", "", text)  # ルビ
    text = re.sub(r"［＃[^］]*］", "", text)  # 入力者の注
    return text.replace("｜", "").strip()


def download_aozora(name, url, sha256, progress=True):
    """青空文庫の zip を ``mini_dl.datasets.download`` で取ってきて（SHA-256 を確かめ、キャッシュします）、本文を返します。

    Args:
        name (str): キャッシュに保存するファイル名（例: ``"wagahaiwa_nekodearu.zip"``）。
        url (str): 青空文庫の zip の URL（作品のページの「ファイルのダウンロード」にあります）。
        sha256 (str): zip の SHA-256（一度ダウンロードして ``datasets.sha256_of`` で求めた値を書きます）。
        progress (bool): 進み具合を表示するなら ``True``。

    Returns:
        str: 本文（``aozora_text`` を参照）。
    """
    return aozora_text(datasets.download(name, [url], sha256, progress=progress))


def unigram_loss(train_ids, valid_ids, vocab_size):
    """ユニグラム（文字の出てくる割合だけ）のモデルの、検証データでの 1 文字あたりの損失（nats）を返します。

    学習データの文字の割合を確率とし、一度も出てこない文字には 1 回ぶんの数を足します（ラプラス平滑化）。
    """
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1
    p = counts / counts.sum()
    return float(-np.log(p[np.asarray(valid_ids)]).mean())


def sample_next(logits, temperature=1.0, top_k=None, rng=None):
    """最後の位置のロジット（(B, V) の配列）から、次のトークンを 1 つずつ引きます。

    Args:
        logits: (B, V) のロジット（NumPy か CuPy の配列）。
        temperature (float): 温度。小さいほど確率の高いトークンに偏ります。0 なら最大のものを選びます（貪欲法）。
        top_k (int): 確率の高い ``top_k`` 個の中だけから引きます（``None`` ならすべて）。
        rng: ``numpy.random.Generator``。

    Returns:
        ndarray: (B,) の int64 の ID（CPU の配列）。
    """
    logits = cuda.as_numpy(logits).astype(np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1)
    rng = np.random.default_rng() if rng is None else rng
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]  # 上から top_k 番目の値
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((z.shape[0], 1))
    return np.minimum((p.cumsum(axis=-1) < u).sum(axis=-1), z.shape[-1] - 1)


def generate(model, ids, n, temperature=1.0, top_k=None, use_cache=True, seed=0):
    """GPT で ``n`` 個のトークンを 1 つずつ生成し、入力の後ろにつないで返します。

    ``use_cache=True`` なら KV キャッシュを使い、新しいトークン 1 個ぶんだけを計算します。``False`` なら
    毎回、見える範囲（最後の ``context`` 個）の全体を計算し直します。どちらも同じ結果になります。
    キャッシュが ``context`` 個でいっぱいになったら、最後の ``context`` 個で作り直します
    （計算し直しと同じ位置の番号と同じ入力になります）。

    Args:
        model: ``models.GPT``。
        ids: (B, T0) の整数の配列（プロンプト）。モデルと同じ装置に置きます。
        n (int): 生成するトークンの数。
        temperature, top_k: ``sample_next`` を参照。
        use_cache (bool): KV キャッシュを使うなら ``True``。
        seed: サンプリングの乱数の種。

    Returns:
        ndarray: (B, T0 + n) の ID（ids と同じ装置の配列）。
    """
    xp = cuda.get_array_module(ids)
    rng = np.random.default_rng(seed)
    C = model.context
    out = ids
    was_training = model.training
    model.eval()
    with no_grad():
        caches, new = None, ids[:, -C:]
        for _ in range(n):
            if use_cache:
                if caches is None or len(caches[0]) + new.shape[1] > C:
                    caches = [KVCache() for _ in model.blocks]  # 作り直す: 最後の C 個をもう一度入れる
                    new = out[:, -C:]
                logits = model(new, caches)
            else:
                logits = model(out[:, -C:])
            nxt = xp.asarray(sample_next(logits.data[:, -1], temperature, top_k, rng))[:, None]  # (B, 1)
            out = xp.concatenate([out, nxt.astype(out.dtype)], axis=1)
            new = nxt.astype(out.dtype)
    model.train(was_training)
    return out
