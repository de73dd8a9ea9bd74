"""第11章: 重みの保存と読み込み（壊れたファイル・合わないファイル・最適化手法の状態）のテスト。"""
import numpy as np
import pytest

import mini_dl.functions as F
import mini_dl.layers as L
from mini_dl import optimizers, serialization
from mini_dl.models import MLP, Model, Sequential


def _model(seed=0):
    model = Sequential(L.Linear(5, seed=seed), L.BatchNorm(), F.relu, L.Linear(3, seed=seed + 1))
    model(np.ones((4, 2), dtype=np.float32))
    return model


def _snapshot(model):
    return {name: p.data.copy() for name, p in model.named_params()} | {
        name: b.copy() for name, b in model.named_buffers()}


def test_round_trip_with_buffers(tmp_path):
    a, b = _model(0), _model(10)
    a.save_weights(tmp_path / "w.npz")
    b.load_weights(tmp_path / "w.npz")
    for (name, x), (_, y) in zip(sorted(_snapshot(a).items()), sorted(_snapshot(b).items())):
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert all(p.dtype == np.float32 for p in b.params())
    with np.load(tmp_path / "w.npz", allow_pickle=False) as npz:
        assert set(npz.files) == {"l0.W", "l0.b", "l1.gamma", "l1.beta", "l1.running_mean", "l1.running_var",
                                  "l3.W", "l3.b"}


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.pop("l3.b"), "ファイルにないキー: l3.b"),
    (lambda d: d.update(extra=np.zeros(1)), "モデルにないキー: extra"),
    (lambda d: d.update({"l0.W": np.zeros((3, 5), np.float32)}), r"shape が違うキー: l0.W（モデル \(2, 5\)、ファイル \(3, 5\)）"),
])
def test_bad_files_raise_and_leave_the_model_untouched(tmp_path, corrupt, message):
    _model(0).save_weights(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as npz:
        arrays = dict(npz)
    corrupt(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    model = _model(10)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.load_weights(tmp_path / "bad.npz")
    for name, value in _snapshot(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_pickled_files_are_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", **{"l0.W": np.array([object()], dtype=object)})
    with pytest.raises(ValueError):
        _model().load_weights(tmp_path / "evil.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = _model(0)
    target = tmp_path / "w.npz"
    model.save_weights(target)
    original = target.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half")
        raise OSError("ディスクがいっぱい")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        _model(5).save_weights(target)
    assert target.read_bytes() == original  # 元のファイルは壊れない
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # 一時ファイルも残らない


def test_uninitialised_model_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="まだ初期化されていません"):
        MLP((3,)).save_weights(tmp_path / "w.npz")


def _train(model, opt, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.standard_normal((8, 2)).astype(np.float32)
        t = rng.integers(0, 3, size=8)
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    model = MLP((6, 3), seed=0)
    opt = optimizers.Adam(lr=0.01).setup(model)
    _train(model, opt, 5, seed=1)
    model.save_weights(tmp_path / "ckpt.npz", optimizer=opt)
    _train(model, opt, 5, seed=2)
    expected = _snapshot(model)

    other = MLP((6, 3), seed=99)
    other(np.zeros((1, 2), dtype=np.float32))
    opt2 = optimizers.Adam(lr=0.5).setup(other)
    other.load_weights(tmp_path / "ckpt.npz", optimizer=opt2)
    assert opt2.t == 5 and opt2.lr == 0.01
    _train(other, opt2, 5, seed=2)
    for name, value in _snapshot(other).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, err_msg=name)

    with pytest.raises(ValueError, match="最適化手法の状態がありません"):
        model.save_weights(tmp_path / "plain.npz")
        other.load_weights(tmp_path / "plain.npz", optimizer=opt2)


class _Tied(Model):
    """2 つの層が同じ重み W を共有するモデル（重みの共有、weight tying）。"""

    def __init__(self):
        super().__init__()
        self.enc = L.Linear(4, in_size=4, seed=0)
        self.dec = L.Linear(4, in_size=4, seed=1)
        self.dec.W = self.enc.W  # 同じ Parameter を 2 か所に代入する

    def forward(self, x):
        return self.dec(F.relu(self.enc(x)))


def test_tied_weights_are_stored_once_and_restored_shared(tmp_path):
    model = _Tied()
    opt = optimizers.Adam(lr=0.01).setup(model)
    _train_tied(model, opt)
    model.save_weights(tmp_path / "tied.npz", optimizer=opt)
    with np.load(tmp_path / "tied.npz", allow_pickle=False) as npz:
        files = set(npz.files)
    assert {k for k in files if not k.startswith("optimizer/")} == {"enc.W", "enc.b", "dec.b"}  # 共有の W は 1 回
    assert {k for k in files if k.startswith("optimizer/enc.W/")} and not any(k.startswith("optimizer/dec.W") for k in files)

    other = _Tied()
    other.enc.W.data = other.enc.W.data * 0 + 9  # 読み込む前は違う値
    opt2 = optimizers.Adam(lr=0.01).setup(other)
    other.load_weights(tmp_path / "tied.npz", optimizer=opt2)
    assert other.dec.W is other.enc.W, "読み込んだあとも、重みは共有されたまま"
    np.testing.assert_array_equal(other.enc.W.data, model.enc.W.data)
    np.testing.assert_array_equal(other.dec.W.data, model.enc.W.data)
    assert len(list(other.params())) == 3
    # 続きの学習も同じになる（共有の重みは 1 ステップに 1 回だけ動き、Adam の状態も 1 つ）
    _train_tied(model, opt)
    _train_tied(other, opt2)
    for (name, p), (_, q) in zip(model.named_params(), other.named_params()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def _train_tied(model, opt, steps=3):
    rng = np.random.default_rng(3)
    for _ in range(steps):
        x = rng.standard_normal((5, 4)).astype(np.float32)
        loss = F.mean_squared_error(model(x), x)
        model.cleargrads()
        loss.backward()
        opt.update()


def test_module_functions_are_what_layer_delegates_to(tmp_path):
    a, b = _model(0), _model(10)
    serialization.save_weights(a, tmp_path / "w.npz")
    b.load_weights(tmp_path / "w.npz")
    c = _model(20)
    serialization.load_weights(c, tmp_path / "w.npz")
    for name, value in _snapshot(a).items():
        np.testing.assert_array_equal(_snapshot(b)[name], value, err_msg=name)
        np.testing.assert_array_equal(_snapshot(c)[name], value, err_msg=name)
