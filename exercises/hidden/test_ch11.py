"""第11章の隠しテスト（分類とデータ）。

第11章の定義はすべて mini_dl パッケージに入っているので、練習のノートブックもテストもパッケージの
Variable・F.softmax_cross_entropy・DataLoader・MLP などを使います。
よくある間違い（log(softmax) であふれる、ε/(C-1) で配る、行と列の取り違え、テストデータの統計を使う、
float64 への昇格、半端なミニバッチの平均、cleargrads の忘れ）は、テストの中で同じ間違いをした答えを作って見比べ、
当てはまればそのことをヒントで伝えます。
"""
import functools

import numpy as np

import mini_dl.functions as F
import mini_dl.layers as L
from grader import pick_hint
from mini_dl import DataLoader, Variable, gradient_check, optimizers
from mini_dl.datasets import Dataset
from mini_dl.models import Sequential


# この章では、nan どうしも「同じ間違い」とみなします
_pick_hint = functools.partial(pick_hint, equal_nan=True)

F32_HINT = ("float32 の入力には float32 を返します。np.full(..., eps / C) や np.zeros((N, C)) は既定で float64 なので、"
            "dtype=x.dtype を指定しないと、NumPy 2 の規則で損失が float64 に昇格します。")


def _head(a, n=3):
    return np.round(np.ravel(np.asarray(a, dtype=np.float64))[:n], 3).tolist()


def _reraise(exc):
    raise exc


# --- 練習 11-1: ラベルスムージング ----------------------------------------------------------------

def _log_softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _smooth_targets(t, C, eps, others=None):
    N = len(t)
    q = np.full((N, C), eps / C if others is None else others, dtype=np.float64)
    q[np.arange(N), t] = (1 - eps) + (eps / C if others is None else 0.0)
    return q


def _ls_ref(x, t, eps):
    """正しい値（float64）と、その勾配。"""
    N, C = x.shape
    q = _smooth_targets(t, C, eps)
    log_p = _log_softmax64(x)
    loss = -(q * log_p).sum() / N
    grad = (np.exp(log_p) - q) / N
    return loss, grad


def _ls_mistakes(x, t, eps):
    N, C = x.shape
    log_p = _log_softmax64(x)
    q = _smooth_targets(t, C, eps)
    q_other = _smooth_targets(t, C, eps, others=eps / (C - 1))  # 正解以外にだけ ε/(C-1) を配る
    q_nocorrect = q.copy()
    q_nocorrect[np.arange(N), t] = 1 - eps  # 正解のクラスに ε/C を足し忘れる
    return {
        "正解のクラスにも ε/C を足します（正解のクラスの q は 1 - ε + ε/C、ほかのクラスは ε/C）。"
        "ε/(C-1) を正解以外に配る定義とは違います。": -(q_other * log_p).sum() / N,
        "正解のクラスの q は 1 - ε ではなく 1 - ε + ε/C です（ε/C は全クラスに足します）。": -(q_nocorrect * log_p).sum() / N,
        "平均はデータの数 N で割ります（N × C 個の要素の平均ではありません）。": -(q * log_p).sum() / (N * C),
        "和をとったあと、データの数 N で割り忘れていませんか。": -(q * log_p).sum(),
        "符号が逆です。損失は -Σ q log p（正の数）です。": (q * log_p).sum() / N,
    }


def _random_case(rng, scale=2.0):
    N, C = int(rng.integers(1, 7)), int(rng.integers(2, 8))
    x = (rng.standard_normal((N, C)) * scale).astype(np.float32)
    t = rng.integers(0, C, size=N)
    eps = float(np.round(rng.uniform(0.05, 0.3), 3))
    return x, t, eps


def _loss_variable(ex, out, inputs):
    if not isinstance(out, Variable):
        ex.fail("損失は Variable で返してください。", inputs=inputs, expected="0 次元の Variable", actual=out,
                hint="F.log_softmax・F.sum と演算子（* - /）で計算すれば、結果も Variable になり、逆伝播できます。")
    return out


def test_ex11_1_label_smoothing_values(exercise, rng):
    ex = exercise("11-1", "cross_entropy_with_label_smoothing")
    for _ in range(6):
        x, t, eps = _random_case(rng)
        inputs = f"x: shape {x.shape} の float32（先頭 {_head(x)}）、t={t.tolist()}、eps={eps}"
        loss = _loss_variable(ex, ex(Variable(x.copy()), t.copy(), eps), inputs)
        expected, _ = _ls_ref(x, t, eps)
        ex.check_close(loss.data, np.float32(expected), rtol=1e-4, atol=1e-5, inputs=inputs,
                       hint=_pick_hint(loss.data, _ls_mistakes(x, t, eps),
                                       "q = (1 - ε)·one-hot + ε/C を作り、L = -Σ q · log_softmax(x) / N を計算します。"))
        ex.check_close(loss.data, np.float32(expected), rtol=1e-4, atol=1e-5, check_dtype=True, inputs=inputs,
                       hint=F32_HINT)


def test_ex11_1_label_smoothing_eps0_matches_softmax_cross_entropy(exercise, rng):
    ex = exercise("11-1", "cross_entropy_with_label_smoothing")
    x, t, _ = _random_case(rng)
    inputs = f"x: shape {x.shape} の float32（先頭 {_head(x)}）、t={t.tolist()}、eps=0"
    loss = _loss_variable(ex, ex(Variable(x), t, 0.0), inputs)
    ex.check_close(loss.data, F.softmax_cross_entropy(Variable(x), t).data, rtol=1e-5, atol=1e-6, inputs=inputs,
                   hint="eps=0 なら q は one-hot なので、F.softmax_cross_entropy(x, t) と同じ値になります。")


def test_ex11_1_label_smoothing_is_stable_for_huge_logits(exercise, rng):
    ex = exercise("11-1", "cross_entropy_with_label_smoothing")
    for _ in range(3):
        x, t, eps = _random_case(rng, scale=1.0)
        x = (x * np.float32(rng.uniform(300, 1000))).astype(np.float32)
        inputs = f"大きなロジット x: shape {x.shape}（先頭 {_head(x)}）、t={t.tolist()}、eps={eps}"
        xv = Variable(x.copy())
        with np.errstate(all="ignore"):
            loss = _loss_variable(ex, ex(xv, t.copy(), eps), inputs)
        expected, grad = _ls_ref(x, t, eps)
        hint = ("log(softmax(x)) と 2 段で計算すると、小さな確率が 0 になって log 0 = -inf になります。"
                "最大値を引いて計算する F.log_softmax(x) を使います（本文 11.1 節）。")
        if np.all(np.isfinite(loss.data)):
            hint = _pick_hint(loss.data, _ls_mistakes(x, t, eps), hint, atol=1e-3)
        else:
            ex.fail("大きなロジットで損失が inf か nan になりました。", inputs=inputs, expected=expected,
                    actual=loss.data, hint=hint)
        ex.check_close(loss.data, np.float32(expected), rtol=1e-4, atol=1e-3, inputs=inputs, hint=hint)
        with np.errstate(all="ignore"):
            ex.run(loss.backward)
        if xv.grad is None:
            ex.fail("x.grad が None のままです（勾配が流れていません）。", inputs=inputs, expected="勾配", actual=None,
                    hint=".data を取り出して NumPy で計算すると、計算グラフが途切れます。F.log_softmax と F.sum で書きます。")
        ex.check_close(xv.grad.data, grad, rtol=1e-4, atol=1e-5, inputs=inputs, hint=hint)


def test_ex11_1_label_smoothing_gradient(exercise, rng):
    ex = exercise("11-1", "cross_entropy_with_label_smoothing")
    for _ in range(3):
        x, t, eps = _random_case(rng)
        inputs = f"x: shape {x.shape} の float32（先頭 {_head(x)}）、t={t.tolist()}、eps={eps}"
        xv = Variable(x.copy())
        loss = _loss_variable(ex, ex(xv, t.copy(), eps), inputs)
        ex.run(loss.backward)
        if xv.grad is None:
            ex.fail("x.grad が None のままです（勾配が流れていません）。", inputs=inputs, expected="勾配", actual=None,
                    hint=".data を取り出して NumPy で計算すると、計算グラフが途切れます。F.log_softmax と F.sum で書きます。")
        _, grad = _ls_ref(x, t, eps)
        ex.check_close(xv.grad.data, grad, rtol=1e-4, atol=1e-6, inputs=inputs,
                       hint=_pick_hint(loss.data, _ls_mistakes(x, t, eps),
                                       "勾配は (softmax(x) - q) / N になるはずです。q を Variable の計算の外（定数の配列）で作っていますか。"))
        ex.check_close(xv.grad.data, grad.astype(np.float32), rtol=1e-4, atol=1e-6, check_dtype=True,
                       inputs=inputs, hint=F32_HINT)
        x64 = rng.standard_normal(x.shape)
        try:
            gradient_check(lambda v: ex.obj(v, t, eps), x64)
        except AssertionError as e:
            if not str(e).startswith("gradient_check:"):
                ex.run(_reraise, e)
            ex.fail("gradient_check に通りません。\n  " + str(e).replace("\n", "\n  "), inputs=inputs,
                    show_values=False, hint="既存の関数の組み合わせなら、逆伝播は自動的に正しくなるはずです。")
        except Exception as e:
            ex.run(_reraise, e)


class _NoEye(Exception):
    pass


def _no_eye(*args, **kwargs):
    raise _NoEye("np.eye・np.identity は使わないでください（C が語彙の数ほど大きいと、C×C の巨大な配列になります）")


def test_ex11_1_label_smoothing_with_a_large_vocabulary_without_eye(exercise, rng, monkeypatch):
    ex = exercise("11-1", "cross_entropy_with_label_smoothing")
    N, C = 3, 50_000  # GPT の語彙くらいのクラスの数: eye(C) なら float32 でも 10 GB
    x = (rng.standard_normal((N, C)) * 2).astype(np.float32)
    t = rng.integers(0, C, size=N)
    eps = 0.1
    inputs = f"x: shape {x.shape} の float32（クラスの数 C = {C}）、t={t.tolist()}、eps={eps}"
    monkeypatch.setattr(np, "eye", _no_eye)
    monkeypatch.setattr(np, "identity", _no_eye)
    xv = Variable(x.copy())
    try:
        loss = _loss_variable(ex, ex.obj(xv, t.copy(), eps), inputs)
    except _NoEye:
        ex.fail("np.eye(C) で one-hot を作っています。", inputs=inputs, show_values=False,
                hint="C が大きいと eye(C) は C×C の巨大な配列です。(N, C) の配列を作り、q[np.arange(N), t] に "
                     "1 - ε を足して作ります（本文 11.2 節の SoftmaxCrossEntropy.backward と同じ考え方）。")
    except Exception as e:
        ex.run(_reraise, e)
    expected, grad = _ls_ref(x, t, eps)
    ex.check_close(loss.data, np.float32(expected), rtol=1e-4, atol=1e-5, check_dtype=True, inputs=inputs,
                   hint=F32_HINT)
    ex.run(loss.backward)
    ex.check_close(xv.grad.data, grad, rtol=1e-4, atol=1e-7, inputs=inputs)


# --- 練習 11-2: 混同行列 --------------------------------------------------------------------------

class _Watched(np.ndarray):
    """1 要素ずつ取り出されたら数える配列（ループで数えていないかを調べます）。"""

    touched = [0]

    def __iter__(self):
        _Watched.touched[0] += 1000  # for で回す・zip する・list() にするのはデータについてのループ
        return super().__iter__()

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            _Watched.touched[0] += 1
        return super().__getitem__(index)

    def tolist(self):
        _Watched.touched[0] += 1000
        return super().tolist()

    def item(self, *args):
        _Watched.touched[0] += 1
        return super().item(*args)


def _cm_ref(y, t, C):
    cm = np.zeros((C, C), dtype=np.int64)
    for a, b in zip(np.asarray(t).tolist(), np.asarray(y).tolist()):
        cm[a, b] += 1
    return cm


def _show_cm(cm):
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.size <= 25:
        return cm
    return (f"shape {cm.shape}、dtype {cm.dtype}、0 行目 {np.asarray(cm[0]).tolist()}、"
            f"0 列目 {np.asarray(cm[:, 0]).tolist()}、対角の和 {np.trace(cm)}、合計 {cm.sum()}")


def _check_cm(ex, out, y, t, C, inputs):
    expected = _cm_ref(y, t, C)
    got = np.asarray(out) if out is not None else out
    if not isinstance(out, np.ndarray):
        ex.fail("NumPy の配列を返してください。", inputs=inputs, expected=expected, actual=out,
                hint="np.bincount(...) や np.zeros((C, C), dtype=np.int64) と np.add.at で作った配列を返します。")
    if got.shape != expected.shape:
        ex.fail(f"shape が違います（期待 {expected.shape}、実際 {got.shape}）。", inputs=inputs,
                expected=_show_cm(expected), actual=_show_cm(got),
                hint="データに現れないクラスがあっても、shape は (num_classes, num_classes) です。"
                     "np.bincount なら minlength=num_classes * num_classes を指定します。")
    if not np.array_equal(got, expected):
        hint = "cm[i, j] は「正解が i で予測が j」の件数です。"
        if np.array_equal(got, expected.T):
            hint = "行と列が逆です。行が正解 t、列が予測 y です（cm[t, y] に数えます）。"
        elif np.array_equal(got, np.minimum(expected, 1)):
            hint = ("同じ (正解, 予測) の組が何回あっても 1 しか数えられていません。cm[t, y] += 1 はまとめて代入するので、"
                    "重なりが足されません（本文 第8章の落とし穴）。np.add.at か np.bincount を使います。")
        ex.fail("答えが違います。", inputs=inputs, expected=_show_cm(expected), actual=_show_cm(got), hint=hint)
    if not np.issubdtype(got.dtype, np.integer) or got.dtype != np.int64:
        ex.fail(f"dtype は int64 にします（実際 {got.dtype}）。", inputs=inputs, expected=_show_cm(expected),
                actual=_show_cm(got),
                hint="件数は整数です。np.histogram2d は float64 を返すので、使うなら .astype(np.int64) が要ります。")


def test_ex11_2_confusion_matrix_values(exercise, rng):
    ex = exercise("11-2", "confusion_matrix")
    for _ in range(6):
        C = int(rng.integers(2, 9))
        N = int(rng.integers(1, 40))
        t = rng.integers(0, C, size=N)
        y = np.where(rng.random(N) < 0.6, t, rng.integers(0, C, size=N))
        inputs = f"y={y.tolist()}, t={t.tolist()}, num_classes={C}"
        _check_cm(ex, ex(y.copy(), t.copy(), C), y, t, C, inputs)


def test_ex11_2_confusion_matrix_missing_classes_and_int32(exercise, rng):
    ex = exercise("11-2", "confusion_matrix")
    C = int(rng.integers(6, 11))
    N = 12
    t = rng.integers(0, 3, size=N).astype(np.int32)  # 0〜2 しか現れない
    y = rng.integers(0, 3, size=N).astype(np.int32)
    inputs = f"y={y.tolist()}（int32）, t={t.tolist()}（int32）, num_classes={C}（3 以上のクラスは現れない）"
    _check_cm(ex, ex(y.copy(), t.copy(), C), y, t, C, inputs)


def test_ex11_2_confusion_matrix_has_no_loop_over_data(exercise, rng):
    ex = exercise("11-2", "confusion_matrix")
    C = 10
    N = 20_000
    t = rng.integers(0, C, size=N)
    y = np.where(rng.random(N) < 0.8, t, rng.integers(0, C, size=N))
    _Watched.touched[0] = 0
    out = ex(y.copy().view(_Watched), t.copy().view(_Watched), C)
    touched = _Watched.touched[0]
    inputs = f"N={N} 件（クラス {C}）"
    if touched > 4 * C:
        ex.fail("データを 1 件ずつ取り出すループで数えています。", inputs=inputs,
                expected="配列の計算（ループはクラスの数まで）", actual=f"要素を 1 つずつ取り出した回数の目安 {touched}",
                hint="t * num_classes + y で (正解, 予測) の組を 1 つの番号にして np.bincount で数えるか、"
                     "np.add.at(cm, (t, y), 1) を使います。")
    _check_cm(ex, None if out is None else np.asarray(out), np.asarray(y), np.asarray(t), C, inputs)


# --- 練習 11-3: 標準化 ----------------------------------------------------------------------------

def _norm_ref(train, x):
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)


def _make_data(rng, dtype):
    N, D = int(rng.integers(5, 30)), int(rng.integers(2, 7))
    if dtype == np.uint8:
        train = rng.integers(0, 256, size=(N, D)).astype(np.uint8)
        test = rng.integers(0, 256, size=(int(rng.integers(1, 6)), D)).astype(np.uint8)
        train[:, 0] = 7  # どのデータでも同じ値の特徴（標準偏差 0）
    else:
        scale = rng.uniform(0.5, 5, size=D)
        train = (rng.standard_normal((N, D)) * scale + rng.uniform(-3, 3, size=D)).astype(np.float32)
        test = (rng.standard_normal((int(rng.integers(1, 6)), D)) * scale * 2 + 10).astype(np.float32)
        train[:, -1] = np.float32(1.5)
    return train, test


def _transform(ex, train, inputs):
    f = ex(train)
    if not callable(f):
        ex.fail("関数（transform）を返してください。", inputs=inputs, expected="transform(x) を計算する関数",
                actual=f, hint="make_normalizer の中で def transform(x): ... を定義し、return transform と書きます。")
    return f


def _norm_hints(train, x):
    with np.errstate(all="ignore"):  # 間違いの答え（0 で割るものも）を作るので、警告は出さない
        return _norm_mistakes(train, x)


def _norm_mistakes(train, x):
    xf = np.asarray(x, dtype=np.float64)
    batch_std = xf.std(axis=0)
    train64 = np.asarray(train, dtype=np.float64)
    std = train64.std(axis=0)
    return {
        "平均と標準偏差は、transform に渡されたミニバッチではなく、make_normalizer に渡された学習データから計算します"
        "（テストデータの統計を使うと、テストの情報が漏れます）。":
            (xf - xf.mean(axis=0)) / np.where(batch_std == 0, 1.0, batch_std),
        "標準偏差が 0 の特徴は、σ = 1 として割ります（0 で割ると inf や nan になります）。":
            (xf - train64.mean(axis=0)) / std,
        "平均を引いたあと、標準偏差で割り忘れていませんか。": xf - train64.mean(axis=0),
        "標準偏差は axis=0（特徴ごと）に計算します。": (xf - train64.mean(axis=0)) / (train64.std() or 1.0),
    }


def test_ex11_3_normalizer_uses_training_statistics(exercise, rng):
    ex = exercise("11-3", "make_normalizer")
    for dtype in [np.float32, np.float32, np.uint8]:
        train, test = _make_data(rng, dtype)
        inputs = (f"train_data: shape {train.shape} の {np.dtype(dtype).name}（先頭 {_head(train)}）、"
                  f"x: shape {test.shape}（先頭 {_head(test)}）")
        f = _transform(ex, train.copy(), inputs)
        with np.errstate(all="ignore"):
            out = ex.run(f, test.copy())
        expected = _norm_ref(train, test)
        ex.check_close(out, expected, rtol=1e-4, atol=1e-4, inputs=inputs,
                       hint=_pick_hint(out, _norm_hints(train, test),
                                       "(x - μ) / σ を、学習データの特徴ごと（axis=0）の μ・σ で計算します。"))
        ex.check_close(out, expected, rtol=1e-4, atol=1e-4, check_dtype=True, inputs=inputs,
                       hint="戻り値はいつも float32 にします。uint8 の x から float64 の平均を引くと float64 になります。"
                            "μ・σ を float32 にしておくか、最後に .astype(np.float32) します。")


def test_ex11_3_normalizer_single_sample_and_training_data(exercise, rng):
    ex = exercise("11-3", "make_normalizer")
    train, _ = _make_data(rng, np.float32)
    inputs = f"train_data: shape {train.shape}、x: 学習データの 1 件（shape (1, {train.shape[1]})）と学習データ全体"
    f = _transform(ex, train.copy(), inputs)
    with np.errstate(all="ignore"):
        one = ex.run(f, train[:1].copy())
    ex.check_close(one, _norm_ref(train, train[:1]), rtol=1e-4, atol=1e-4, inputs=inputs,
                   hint=_pick_hint(one, _norm_hints(train, train[:1]),
                                   "1 件だけのミニバッチでも、学習データの μ・σ で変換します。"))
    with np.errstate(all="ignore"):
        whole = ex.run(f, train.copy())
    ex.check_close(np.asarray(whole, dtype=np.float64).mean(axis=0), np.zeros(train.shape[1]), atol=1e-4,
                   inputs=inputs, hint="学習データ全体を変換すると、特徴ごとの平均は 0 になるはずです。")


def test_ex11_3_normalizer_computes_statistics_once(exercise, rng):
    ex = exercise("11-3", "make_normalizer")
    train, test = _make_data(rng, np.float32)
    original = train.copy()
    inputs = f"train_data: shape {train.shape}。make_normalizer のあとで train_data を書き換えてから transform(x) を呼ぶ"
    f = _transform(ex, train, inputs)
    train *= np.float32(3)
    train += np.float32(100)
    with np.errstate(all="ignore"):
        out = ex.run(f, test.copy())
    ex.check_close(out, _norm_ref(original, test), rtol=1e-4, atol=1e-4, inputs=inputs,
                   hint=_pick_hint(out, _norm_hints(original, test), "μ と σ は make_normalizer の中で 1 回だけ計算して覚えておきます。transform のたびに train_data から"
                        "計算し直すと、あとで書き換えられたデータの統計になってしまいます。"))


# --- 練習 11-4: 1 エポックの学習 -----------------------------------------------------------------

class _Tiny(Dataset):
    def __init__(self, x, t):
        self._x, self._t = x, t
        super().__init__(train=True)

    def prepare(self):
        return self._x, self._t


def _tiny_problem(rng):
    N, D, C = int(rng.integers(9, 24)), int(rng.integers(2, 6)), 3
    batch = int(rng.integers(3, 6))
    if N % batch == 0:
        N += 1  # 最後のミニバッチを半端にする
    x = rng.standard_normal((N, D)).astype(np.float32)
    t = rng.integers(0, C, size=N)
    return x, t, batch


def _make_model(seed, dropout):
    layers = [L.Linear(8, seed=seed), F.relu]
    if dropout:
        layers.append(L.Dropout(0.3, seed=seed))
    layers.append(L.Linear(3, seed=seed + 1))
    return Sequential(*layers)


def _reference_epoch(model, loader, optimizer, weighted=True, clear=True, acc_after=False):
    model.train()
    total_loss = total_acc = 0.0
    count = batches = 0
    for x, t in loader:
        y = model(x)
        loss = F.softmax_cross_entropy(y, t)
        if clear:
            model.cleargrads()
        loss.backward()
        optimizer.update()
        if acc_after:
            with_no_grad = model(x)
            acc = F.accuracy(with_no_grad, t)
        else:
            acc = F.accuracy(y, t)
        w = len(t) if weighted else 1
        total_loss += float(loss.data) * w
        total_acc += float(acc.data) * w
        count += len(t)
        batches += 1
    n = count if weighted else batches
    return total_loss / n, total_acc / n


def _epoch_hint(out, ds, batch, seed, make_opt, dropout, default):
    """よくある間違いをした 1 エポックの結果と比べて、当てはまるヒントを返します。"""
    def variant(**kwargs):
        model = _make_model(seed, dropout)
        return _reference_epoch(model, DataLoader(ds, batch, shuffle=False), make_opt().setup(model), **kwargs)

    try:
        got = np.asarray(out, dtype=np.float64)
    except Exception:
        return default
    if got.shape != (2,):
        return default
    candidates = [
        (variant(weighted=False), "ミニバッチの平均をそのまま平均しています。最後のミニバッチは件数が少ないので、"
                                  "各ミニバッチの値に件数 len(t) を掛けて足し、全件数で割ります。"),
        (variant(clear=False), "各ミニバッチで、逆伝播の前に model.cleargrads() を呼びます。忘れると、前のミニバッチの勾配が"
                               "足し込まれて、2 つ目以降のミニバッチの更新がずれます。"),
    ]
    for value, hint in candidates:
        if np.allclose(got, value, rtol=1e-6, atol=1e-7):
            return hint
    after = variant(acc_after=True)
    if not dropout and np.isclose(got[1], after[1]) and np.isclose(got[0], after[0]):
        return "正解率は、更新の前の順伝播の出力 y（損失と同じ y）から求めます。更新のあとでもう一度順伝播していませんか。"
    return default


def _run_both(ex, rng, dropout=False, opt="SGD"):
    x, t, batch = _tiny_problem(rng)
    seed = int(rng.integers(0, 1000))
    make_opt = (lambda: optimizers.SGD(lr=0.5)) if opt == "SGD" else (lambda: optimizers.Adam(lr=0.05))
    mine, ref = _make_model(seed, dropout), _make_model(seed, dropout)
    ds = _Tiny(x, t)
    mine_opt, ref_opt = make_opt().setup(mine), make_opt().setup(ref)
    inputs = (f"{len(x)} 件・{x.shape[1]} 次元・3 クラスのデータ、DataLoader(batch_size={batch}, shuffle=False)"
              f"（最後のミニバッチは {len(x) % batch} 件）、{opt}"
              + ("、L.Dropout を含むモデル（eval() の状態で渡す）" if dropout else ""))
    if dropout:
        mine.eval()
        ref.eval()
    out = ex(mine, DataLoader(ds, batch, shuffle=False), mine_opt)
    expected = _reference_epoch(ref, DataLoader(ds, batch, shuffle=False), ref_opt)
    return out, expected, mine, ref, ds, batch, seed, make_opt, inputs


def _check_tuple(ex, out, expected, inputs):
    if not (isinstance(out, tuple) and len(out) == 2):
        ex.fail("(平均の損失, 正解率) の 2 つのタプルを返してください。", inputs=inputs, expected=expected, actual=out,
                hint="最後に return total_loss / count, total_acc / count のように返します。")
    for v, what in zip(out, ["平均の損失", "正解率"]):
        if isinstance(v, Variable) or not isinstance(v, float):
            ex.fail(f"{what} は Python の float で返してください（実際の型: {type(v).__name__}）。", inputs=inputs,
                    expected=expected, actual=out,
                    hint="float(loss.data) のように、Variable や NumPy の配列から Python の数に直して足し合わせます。")


def test_ex11_4_train_one_epoch_values(exercise, rng):
    ex = exercise("11-4", "train_one_epoch")
    for _ in range(3):
        out, expected, mine, ref, ds, batch, seed, make_opt, inputs = _run_both(ex, rng)
        _check_tuple(ex, out, expected, inputs)
        hint = _epoch_hint(out, ds, batch, seed, make_opt, False,
                           "各ミニバッチで、更新の前の順伝播の出力から損失と正解率を求め、件数で重み付けして平均します。")
        ex.check_close(np.array(out), np.array(expected), rtol=1e-5, atol=1e-6, inputs=inputs, hint=hint)


def test_ex11_4_train_one_epoch_updates_model_like_reference(exercise, rng):
    ex = exercise("11-4", "train_one_epoch")
    for opt in ["SGD", "Adam"]:
        out, expected, mine, ref, *_rest, inputs = _run_both(ex, rng, opt=opt)
        for (name, p), q in zip(mine.named_params(), ref.params()):
            if p.data is None or p.data.dtype != np.float32:
                ex.fail(f"パラメータ {name} が float32 のままではありません。", inputs=inputs, expected="float32",
                        actual=None if p.data is None else p.data.dtype, hint="学習で dtype は変わらないはずです。")
            ex.check_close(p.data, q.data, rtol=1e-4, atol=1e-6, inputs=f"{inputs}、1 エポック後のパラメータ {name}",
                           hint="各ミニバッチで model.cleargrads() → loss.backward() → optimizer.update() の順に呼びます。"
                                "cleargrads を忘れると、前のミニバッチの勾配が足し込まれます。"
                                "また、ミニバッチごとに 1 回だけ更新します。")


def test_ex11_4_train_one_epoch_switches_to_train_mode(exercise, rng):
    ex = exercise("11-4", "train_one_epoch")
    out, expected, mine, ref, ds, batch, seed, make_opt, inputs = _run_both(ex, rng, dropout=True)
    if not mine.training or not all(layer.training for layer in mine.layers if hasattr(layer, "training")):
        ex.fail("モデルが学習モードになっていません。", inputs=inputs, expected="model.training == True",
                actual=f"model.training == {mine.training}",
                hint="はじめに model.train() を呼び、ドロップアウトなどを学習中の動きにします。")
    _check_tuple(ex, out, expected, inputs)
    ex.check_close(np.array(out), np.array(expected), rtol=1e-5, atol=1e-6, inputs=inputs,
                   hint=_epoch_hint(out, ds, batch, seed, make_opt, True,
                                    "順伝播はミニバッチごとに 1 回だけ行い、その出力から損失と正解率を求めます"
                                    "（ドロップアウトは呼ぶたびに違うユニットを消すので、2 回呼ぶと値が変わります）。"))


# --- 練習 11-5: top-k 正解率 ----------------------------------------------------------------------

def _topk_ref(y, t, k):
    rank = (y > y[np.arange(len(t)), t][:, None]).sum(axis=1)  # 正解より大きいスコアの数
    return float((rank < k).mean())


def test_ex11_5_top_k_accuracy(exercise, rng):
    ex = exercise("11-5", "top_k_accuracy")
    for _ in range(6):
        N, C = int(rng.integers(1, 30)), int(rng.integers(2, 12))
        k = int(rng.integers(1, C + 1))
        y = rng.permutation(N * C).reshape(N, C).astype(np.float32) / np.float32(N * C)  # 同じスコアはない
        t = rng.integers(0, C, size=N)
        inputs = f"y: shape {y.shape}（先頭 {_head(y)}）、t={t.tolist()[:8]}{' …' if N > 8 else ''}、k={k}"
        got = ex(y.copy(), t.copy(), k)
        if isinstance(got, Variable) or not isinstance(got, float):
            ex.fail(f"Python の float で返してください（実際の型: {type(got).__name__}）。", inputs=inputs,
                    expected=_topk_ref(y, t, k), actual=got, hint="最後に float(...) で Python の数にします。")
        hint = _pick_hint(got, {
            "np.argsort は小さい順に並べます。スコアの大きい k 個は argsort(...)[:, -k:] か argsort(-y)[:, :k] です。":
                _topk_ref(-y, t, k),
        }, "各データで、スコアの大きい k 個のクラスに正解 t が入っているかを調べ、その割合を返します。")
        ex.check_close(got, _topk_ref(y, t, k), rtol=1e-6, atol=1e-9, inputs=inputs, hint=hint)


def test_ex11_5_top_k_accuracy_has_no_loop_over_the_data(exercise, rng):
    ex = exercise("11-5", "top_k_accuracy")
    N, C, k = 2000, 5, 2
    y = rng.permutation(N * C).reshape(N, C).astype(np.float32)
    t = rng.integers(0, C, size=N)
    inputs = f"y: shape {y.shape}、t: shape {t.shape}、k={k}"
    got, lines = ex.traced(ex.obj, y.copy(), t.copy(), k)
    if lines > N // 2:
        ex.fail(f"データについての Python のループがあるようです（N={N} で、関数の中の行が {lines} 回実行されました）。",
                inputs=inputs, show_values=False,
                hint="for 文や内包表記で 1 データずつ調べず、配列全体で計算します: 上位 k 個のクラス top（shape (N, k)）を "
                     "np.argsort か np.argpartition で求め、(top == t.reshape(-1, 1)).any(axis=1) の平均を取ります。")
    ex.check_close(got, _topk_ref(y, t, k), rtol=1e-6, atol=1e-9, inputs=inputs)


def test_ex11_5_top_k_accuracy_edges_and_variable(exercise, rng):
    ex = exercise("11-5", "top_k_accuracy")
    N, C = int(rng.integers(5, 20)), int(rng.integers(3, 8))
    y = rng.permutation(N * C).reshape(N, C).astype(np.float32)
    t = rng.integers(0, C, size=N)
    inputs = f"y: shape {y.shape} の Variable、t: shape {t.shape}"
    ex.check_close(ex(Variable(y), t, 1), float(F.accuracy(y, t).data), rtol=1e-6, inputs=f"{inputs}、k=1",
                   hint="y が Variable なら y.data を取り出します。k=1 なら F.accuracy(y, t) と同じ値です。")
    ex.check_close(ex(Variable(y), t, C), 1.0, inputs=f"{inputs}、k=C={C}",
                   hint="k がクラスの数と同じなら、どのデータも当たりなので 1.0 です。")
