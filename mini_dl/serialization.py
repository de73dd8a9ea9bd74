"""重みの保存と読み込み（第11章）。``Layer.save_weights``・``Layer.load_weights`` の中身です。

形式は NumPy の npz です。キーはパラメータの名前（``l0.W`` など）、最適化手法の状態は
``optimizer/`` で始まるキーに入れます。読み込みは ``allow_pickle=False`` なので、ファイルから
任意のコードが実行されることはありません。
"""
import os
import tempfile

import numpy as np

from mini_dl import cuda


def save_weights(layer, path, optimizer=None):
    """層 ``layer`` のパラメータ（と保存用の配列、渡せば最適化手法の状態）を npz ファイルに保存します。

    一時ファイルに書いてから置き換えるので、途中で止まっても壊れたファイルは残りません。
    GPU 上のパラメータも、モデルを移さずに CPU の配列にして書きます。

    Args:
        layer (Layer): 保存する層（モデル）。
        path: 保存先（``.npz``）。
        optimizer: 一緒に状態を保存する最適化手法（省略可）。

    共有しているパラメータ（同じ ``Parameter`` を 2 か所に代入した重み）は、``named_params`` の
    最初の名前で 1 回だけ保存します。

    Raises:
        ValueError: まだ初期化されていない（``data`` が ``None`` の）パラメータがあるとき。
    """
    arrays = {}
    for name, param in layer.named_params():
        if param.data is None:
            raise ValueError(f"パラメータ {name} がまだ初期化されていません（一度入力を通してから保存してください）")
        arrays[name] = cuda.as_numpy(param.data)
    for name, buf in layer.named_buffers():
        arrays[name] = cuda.as_numpy(buf)
    if optimizer is not None:
        arrays.update(_optimizer_arrays(optimizer))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # 書き終えてから 1 回で置き換える（原子的な書き込み）
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_weights(layer, path, optimizer=None):
    """``save_weights`` で保存したファイルを、層 ``layer`` に読み込みます。

    足りないキー・余分なキー・shape の違うキーがあれば、それらの名前を挙げた ``ValueError`` を
    送出し、モデル（と最適化手法）は一切変えません。パラメータは、いまある場所（CPU か GPU）の
    まま値だけを置き換えます。

    Args:
        layer (Layer): 読み込む先の層（モデル）。
        path: 読み込むファイル。
        optimizer: 一緒に状態を戻す最適化手法（省略可）。

    Raises:
        ValueError: キーが足りない・余分・shape が違うとき、``optimizer`` を渡したのにファイルに
            その状態がないとき、ファイルが pickle を必要とするとき。
    """
    with np.load(path, allow_pickle=False) as npz:
        stored = {key: npz[key] for key in npz.files}
    targets = dict(layer.named_params())
    buffers = {name: (owner, attr) for name, owner, attr in layer._buffer_owners()}
    expected = set(targets) | set(buffers)
    model_keys = {k for k in stored if not k.startswith(_OPT_PREFIX)}
    problems = []
    missing = sorted(expected - model_keys)
    unexpected = sorted(model_keys - expected)
    if missing:
        problems.append(f"ファイルにないキー: {', '.join(missing)}")
    if unexpected:
        problems.append(f"モデルにないキー: {', '.join(unexpected)}")
    for name in sorted(expected & model_keys):
        current = targets[name].data if name in targets else buffers[name][0].__dict__[buffers[name][1]]
        if current is not None and current.shape != stored[name].shape:
            problems.append(f"shape が違うキー: {name}（モデル {current.shape}、ファイル {stored[name].shape}）")
    if optimizer is not None and not any(k.startswith(_OPT_PREFIX) for k in stored):
        problems.append("ファイルに最適化手法の状態がありません")
    if problems:
        raise ValueError(f"{os.fspath(path)} を読み込めません（モデルは変更していません）:\n  " + "\n  ".join(problems))

    for name, param in targets.items():
        param.data = _like(stored[name], param.data)
    for name, (owner, attr) in buffers.items():
        object.__setattr__(owner, attr, _like(stored[name], owner.__dict__[attr]))
    if optimizer is not None:
        _load_optimizer(optimizer, stored, layer)


_OPT_PREFIX = "optimizer/"


def _like(array, current):
    """読み込んだ ``array`` を、いまの配列 ``current`` と同じ場所（CPU か GPU）・dtype にします。"""
    if current is None:
        return array
    xp = cuda.get_array_module(current)
    return xp.asarray(array, dtype=current.dtype)


def _optimizer_arrays(optimizer):
    """最適化手法の状態を ``{"optimizer/名前/キー": 配列}`` の辞書にします。"""
    arrays = {f"{_OPT_PREFIX}t": np.array(optimizer.t), f"{_OPT_PREFIX}lr": np.array(optimizer.lr)}
    for name, state in optimizer.state.items():
        for key, value in state.items():
            arrays[f"{_OPT_PREFIX}{name}/{key}"] = cuda.as_numpy(value)
    return arrays


def _load_optimizer(optimizer, stored, model):
    """``_optimizer_arrays`` の形の配列から、最適化手法の状態を戻します。"""
    params = dict(model.named_params())
    optimizer.t = int(stored[f"{_OPT_PREFIX}t"])
    optimizer.lr = float(stored[f"{_OPT_PREFIX}lr"])
    state = {}
    for key, value in stored.items():
        if not key.startswith(_OPT_PREFIX) or key.count("/") < 2:
            continue
        name, slot = key[len(_OPT_PREFIX):].rsplit("/", 1)
        state.setdefault(name, {})[slot] = _like(value, params[name].data if name in params else None)
    optimizer.state = state
