"""第11章: データセット・ダウンロード（手元のサーバで試す）・DataLoader のテスト。"""
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from mini_dl import datasets
from mini_dl.datasets import MNIST, DataLoader, Dataset, Digits, Spiral


@pytest.mark.parametrize("cls, n_train, n_test, dim, classes", [
    (Spiral, 300, 300, 2, 3), (Digits, 1437, 360, 64, 10), (MNIST, 4000, 1000, 784, 10),
])
def test_embedded_datasets(cls, n_train, n_test, dim, classes):
    train, test = cls(), cls(train=False)
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.data.shape == (n_train, dim) and train.data.dtype == np.float32
    assert train.label.dtype == np.int64 and set(np.unique(train.label)) == set(range(classes))
    assert 0.0 <= train.data.min() and train.data.max() <= 1.0 + 1e-6 or cls is Spiral
    again = cls()
    np.testing.assert_array_equal(train.data, again.data)  # 決まった分け方


def test_mnist_subset_split_is_disjoint_and_balanced():
    train, test = MNIST(), MNIST(train=False)
    rows = {r.tobytes() for r in train.data}
    assert not any(r.tobytes() in rows for r in test.data[:200])
    assert np.bincount(train.label).min() >= 350
    assert MNIST(flatten=False).data.shape == (4000, 1, 28, 28)


def test_transforms_are_applied_to_whole_batches():
    calls = []

    def transform(x):
        calls.append(x.shape)
        return x * 2

    ds = Digits(transform=transform, target_transform=lambda t: t + 100)
    x, t = ds[np.arange(5)]
    assert calls == [(5, 64)] and (t >= 100).all()


# --- ダウンロード ---------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """tmp_path/www を配る、手元の HTTP サーバ（インターネットには繋ぎません）。"""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_verifies_caches_and_writes_atomically(server, tmp_path, monkeypatch):
    root, url = server
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "cache"))
    payload = b"mini_dl" * 1000
    (root / "f.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    path = datasets.download("f.bin", [url + "missing.bin", url + "f.bin"], sha, progress=False)
    assert path == tmp_path / "cache" / "f.bin" and path.read_bytes() == payload
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["f.bin"]  # 一時ファイルは残らない
    (root / "f.bin").unlink()
    assert datasets.download("f.bin", [url + "f.bin"], sha, progress=False) == path  # キャッシュを使う


def test_download_rejects_a_wrong_checksum(server, tmp_path, monkeypatch):
    root, url = server
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "cache"))
    (root / "f.bin").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="SHA-256 が合いません"):
        datasets.download("f.bin", [url + "f.bin"], "0" * 64, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_offline_fails_with_a_japanese_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "cache"))
    with pytest.raises(ConnectionError, match="ダウンロードできませんでした。インターネットに繋がっているか"):
        datasets.download("f.bin", ["http://127.0.0.1:9/f.bin"], "0" * 64, progress=False)


def _idx(array, magic):
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_full_mnist_reader_with_local_files(server, tmp_path, monkeypatch):
    root, url = server
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28))
    labels = rng.integers(0, 10, size=7)
    files = {"t10k-images-idx3-ubyte.gz": _idx(images, 2051), "t10k-labels-idx1-ubyte.gz": _idx(labels, 2049)}
    for name, blob in files.items():
        (root / name).write_bytes(blob)
        monkeypatch.setitem(datasets.MNIST_FILES, name, hashlib.sha256(blob).hexdigest())
    ds = MNIST(train=False, full=True, mirrors=[url])
    assert ds.data.shape == (7, 784) and ds.data.dtype == np.float32
    np.testing.assert_allclose(ds.data * 255, images.reshape(7, 784), atol=1e-3)
    np.testing.assert_array_equal(ds.label, labels)


# --- DataLoader -----------------------------------------------------------------------------

class Counting(Dataset):
    def __init__(self, n):
        self.n = n
        self.calls = 0
        super().__init__()

    def prepare(self):
        return np.arange(self.n, dtype=np.float32).reshape(-1, 1), np.arange(self.n)

    def __getitem__(self, index):
        self.calls += 1
        return super().__getitem__(index)


def test_dataloader_batches_shuffle_seed_and_drop_last():
    ds = Counting(10)
    loader = DataLoader(ds, batch_size=4, shuffle=False)
    batches = list(loader)
    assert len(loader) == 3 and [len(t) for _, t in batches] == [4, 4, 2]
    assert ds.calls == 3  # ミニバッチごとに 1 回だけ（1 件ずつのループはしない）
    assert len(DataLoader(ds, 4, drop_last=True)) == 2 and [len(t) for _, t in DataLoader(ds, 4, drop_last=True)] == [4, 4]

    def epochs(seed):
        loader = DataLoader(ds, 3, shuffle=True, seed=seed)
        return [np.concatenate([t for _, t in loader]) for _ in range(2)]
    a, b = epochs(0), epochs(0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # エポックごとに並べ替わる
    assert sorted(a[0]) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, 0)


def test_download_falls_back_to_the_next_mirror_after_a_bad_checksum(server, tmp_path, monkeypatch):
    root, url = server
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "cache"))
    (root / "bad.bin").write_bytes(b"bad")
    (root / "good.bin").write_bytes(b"good")
    path = datasets.download("x.bin", [url + "bad.bin", url + "good.bin"], hashlib.sha256(b"good").hexdigest(),
                             progress=False)
    assert path.read_bytes() == b"good"


def test_cifar10_reader_with_a_local_archive(server, tmp_path, monkeypatch):
    import io
    import tarfile

    root, url = server
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 32, 32))
    labels = rng.integers(0, 10, size=5)
    record = np.concatenate([labels[:, None], images.reshape(5, -1)], axis=1).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in [("test_batch.bin", record), ("data_batch_1.bin", record[:3073])]:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    name = datasets.CIFAR10_FILE[0]
    (root / name).write_bytes(buf.getvalue())
    monkeypatch.setattr(datasets, "CIFAR10_FILE", (name, hashlib.sha256(buf.getvalue()).hexdigest()))
    test = datasets.CIFAR10(train=False, mirrors=[url])
    assert test.data.shape == (5, 3, 32, 32) and test.data.dtype == np.float32 and test.label.dtype == np.int64
    np.testing.assert_allclose(test.data * 255, images, atol=1e-3)  # 赤・緑・青の順の (3, 32, 32)
    np.testing.assert_array_equal(test.label, labels)
    assert (tmp_path / "cache" / name).exists()  # キャッシュした
    with pytest.raises(ValueError, match="data_batch_2.bin"):  # 学習用の 5 つのファイルがそろっていない
        datasets.CIFAR10(train=True, mirrors=[url])
    monkeypatch.setenv("MINI_DL_DATA", str(tmp_path / "empty"))
    with pytest.raises(ConnectionError, match="ダウンロードできませんでした"):
        datasets.CIFAR10(train=False, mirrors=["http://127.0.0.1:9/"])
