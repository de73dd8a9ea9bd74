"""第9章の隠しテスト（線形回帰と MLP）。

練習のノートブックは mini_dl パッケージの Parameter・Layer・Model・関数を使うので、テストもパッケージを使います。
よくある間違い（パラメータの順番、float64 への昇格、cleargrad の忘れ、要素の数で割り忘れ・最初の軸の長さで割る、
Softplus のオーバーフロー）は、
テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import warnings

import numpy as np

import mini_dl.functions as F
from grader import ExerciseFailure, pick_hint
from mini_dl import Function, Variable
from mini_dl.layers import Layer
from mini_dl.models import Model
from mini_dl.utils import gradient_check

HINT_FLOAT32 = ("np.random の乱数や np.zeros は、dtype を指定しないと float64 です。"
                "`.astype(np.float32)` や `dtype=np.float32` で float32 にしてから Parameter に入れます。")


def _subclass(ex, base, how):
    if not (isinstance(ex.obj, type) and issubclass(ex.obj, base)):
        ex.fail(f"{ex.name} は {base.__name__} のサブクラスにしてください。", expected=f"{base.__name__} のサブクラス",
                actual=ex.obj, hint=how)
    return ex.obj


def _data(ex, value, inputs, what):
    """``Variable`` の中身の配列を取り出します（Variable でなければ不合格）。"""
    if not isinstance(value, Variable):
        ex.fail(f"{what}は Variable にしてください。", inputs=inputs, expected="Variable", actual=value,
                hint="Parameter（Variable のサブクラス）か、関数（F.linear など）が返した Variable を使います。")
    return value.data


def _named(ex, layer, inputs):
    pairs = ex.run(lambda: list(layer.named_params()))
    return [name for name, _ in pairs], dict(pairs)


def _randomize(layer, rng):
    """パラメータを乱数にします（バイアスが 0 のままだと、足し忘れを見逃すため）。"""
    for p in layer.params():
        p.data = rng.uniform(-1, 1, size=p.data.shape).astype(np.float32)


# --- 練習 9-1: TwoLayerNet ---------------------------------------------------------------------

def _two_layer_ref(x, W1, b1, W2, b2):
    x, W1, b1, W2, b2 = (np.asarray(a, dtype=np.float64) for a in (x, W1, b1, W2, b2))
    return np.tanh(x @ W1 + b1) @ W2 + b2


def test_ex9_1_params_in_order_with_shapes_dtype_and_init(exercise, rng):
    ex = exercise("9-1", "TwoLayerNet")
    cls = _subclass(ex, Model, "`class TwoLayerNet(Model):` と書き、`__init__` の最初で `super().__init__()` を呼びます。")
    for _ in range(3):
        I, H, O = (int(n) for n in rng.integers(1, 7, size=3))
        seed = int(rng.integers(0, 10_000))
        inputs = f"TwoLayerNet({I}, {H}, {O}, seed={seed})"
        model = ex.run(cls, I, H, O, seed=seed)
        names, params = _named(ex, model, inputs)
        if names != ["W1", "b1", "W2", "b2"]:
            if sorted(names) == sorted(["W1", "b1", "W2", "b2"]):
                hint = ("名前はそろっていますが、順番が違います。params() は代入した順番に返すので、"
                        "self.W1 → self.b1 → self.W2 → self.b2 の順に代入してください。")
            else:
                hint = ("4 つとも Parameter にして、self.W1・self.b1・self.W2・self.b2 という名前の属性に代入します"
                        "（Variable や配列のままだと、params() に集まりません）。")
            ex.fail("named_params() の名前と順番が違います。", inputs=inputs, expected=["W1", "b1", "W2", "b2"],
                    actual=names, hint=hint)
        shapes = {"W1": (I, H), "b1": (H,), "W2": (H, O), "b2": (O,)}
        for name, shape in shapes.items():
            p = params[name]
            if p.data is None or p.data.shape != shape:
                ex.fail(f"{name} の shape が違います。", inputs=inputs, expected=shape,
                        actual=None if p.data is None else p.data.shape,
                        hint="W1 は (in_size, hidden_size)、b1 は (hidden_size,)、W2 は (hidden_size, out_size)、b2 は (out_size,) です。")
            if p.data.dtype != np.float32:
                ex.fail(f"{name} の dtype が float32 ではありません。", inputs=inputs, expected="float32",
                        actual=str(p.data.dtype), hint=HINT_FLOAT32)
        r = np.random.default_rng(seed)
        W1 = (r.standard_normal((I, H)) * np.sqrt(1 / I)).astype(np.float32)
        W2 = (r.standard_normal((H, O)) * np.sqrt(1 / H)).astype(np.float32)
        ex.check_close(params["b1"].data, np.zeros(H, np.float32), inputs=inputs, hint="b1 は 0 で初期化します。")
        ex.check_close(params["b2"].data, np.zeros(O, np.float32), inputs=inputs, hint="b2 は 0 で初期化します。")
        r2 = np.random.default_rng(seed)
        W2_first = (r2.standard_normal((H, O)) * np.sqrt(1 / H)).astype(np.float32)
        hint_w = pick_hint(params["W1"].data, {
            "W1 が標準正規乱数のままです。√(1/in_size) を掛けます。": W1 / np.float32(np.sqrt(1 / I)),
            "W1 には √(1/hidden_size) ではなく √(1/in_size) を掛けます。": W1 / np.float32(np.sqrt(1 / I)) * np.sqrt(1 / H),
        }, "rng = np.random.default_rng(seed) を 1 つ作り、rng.standard_normal((in_size, hidden_size)) * √(1/in_size) で W1 を、"
           "続けて同じ rng で W2 を作ります（W1 を先に作ります）。")
        ex.check_close(params["W1"].data, W1, rtol=1e-5, atol=1e-6, inputs=inputs, hint=hint_w)
        if W2.shape == W2_first.shape and not np.allclose(params["W2"].data, W2) and np.allclose(params["W2"].data, W2_first):
            ex.fail("W2 の値が違います。", inputs=inputs, expected=W2, actual=params["W2"].data,
                    hint="W1 と W2 は同じ rng から、W1 → W2 の順に作ります（rng を作り直さないでください）。")
        ex.check_close(params["W2"].data, W2, rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint="W2 は、W1 を作った同じ rng の続きの標準正規乱数に √(1/hidden_size) を掛けたものです。")


def test_ex9_1_forward_values_and_gradients(exercise, rng):
    ex = exercise("9-1", "TwoLayerNet")
    cls = _subclass(ex, Model, "`class TwoLayerNet(Model):` と書きます。")
    for _ in range(3):
        I, H, O = (int(n) for n in rng.integers(1, 6, size=3))
        N = int(rng.integers(1, 6))
        model = ex.run(cls, I, H, O, seed=0)
        _randomize(model, rng)
        _, params = _named(ex, model, "")
        W1, b1, W2, b2 = (params[k].data for k in ("W1", "b1", "W2", "b2"))
        x = rng.uniform(-2, 2, size=(N, I)).astype(np.float32)
        inputs = f"TwoLayerNet({I}, {H}, {O})、パラメータを乱数にして x: shape {x.shape} の float32 を入力"
        y = ex.run(model, x)
        yd = _data(ex, y, inputs, "forward の戻り値")
        ref = _two_layer_ref(x, W1, b1, W2, b2)
        xd, W1d, b1d, W2d, b2d = (a.astype(np.float64) for a in (x, W1, b1, W2, b2))
        hint = pick_hint(yd, {
            "活性化関数が tanh ではなく sigmoid になっています。F.tanh を使います。":
                (1 / (1 + np.exp(-(xd @ W1d + b1d)))) @ W2d + b2d,
            "活性化関数を忘れています。1 層目の出力に F.tanh を適用してから 2 層目に入れます。": (xd @ W1d + b1d) @ W2d + b2d,
            "最後の層の後にも tanh を適用しています。活性化関数は層と層の間だけです。": np.tanh(ref),
            "バイアス b2 を足し忘れていませんか。": np.tanh(xd @ W1d + b1d) @ W2d,
            "バイアス b1 を足し忘れていませんか。": np.tanh(xd @ W1d) @ W2d + b2d,
        }, "y = tanh(x W1 + b1) W2 + b2 です。F.linear(x, self.W1, self.b1) のようにパラメータの属性を使います。")
        ex.check_close(yd, ref, rtol=1e-4, atol=1e-5, inputs=inputs, hint=hint)
        ex.check_close(yd, ref.astype(np.float32), rtol=1e-4, atol=1e-5, check_dtype=True, inputs=inputs,
                       hint="float32 の入力とパラメータなら、出力も float32 になるはずです。" + HINT_FLOAT32)
        # 逆伝播: L = Σ g ⊙ y
        g = rng.uniform(0.5, 1.5, size=ref.shape)
        model.cleargrads()
        ex.run(lambda: (y.__setattr__("grad", Variable(g.astype(np.float32))), y.backward()))
        h = np.tanh(xd @ W1d + b1d)
        dh = (g @ W2d.T) * (1 - h * h)
        grads = {"W1": xd.T @ dh, "b1": dh.sum(axis=0), "W2": h.T @ g, "b2": g.sum(axis=0)}
        for name, expected in grads.items():
            p = params[name]
            if p.grad is None:
                ex.fail(f"逆伝播の後、{name}.grad が None です。", inputs=inputs, expected=f"{name} の勾配", actual=None,
                        hint=f"forward の計算に self.{name} そのもの（Parameter）を使いますか。.data の配列を使うと、"
                             "計算グラフがパラメータにつながらず、勾配が届きません。")
            ex.check_close(p.grad.data, expected, rtol=1e-3, atol=1e-4, inputs=f"{inputs}、{name}.grad を確認",
                           hint="forward が y = tanh(x W1 + b1) W2 + b2 を mini_dl の関数で計算していれば、勾配は自動で正しくなります。")


# --- 練習 9-2: train_linear_regression ----------------------------------------------------------

def _regression_data(rng):
    N = int(rng.integers(40, 120))
    D = int(rng.integers(1, 4))
    x = rng.standard_normal((N, D)).astype(np.float32)
    w = rng.uniform(-3, 3, size=(D, 1))
    b = rng.uniform(-2, 2)
    y = (x @ w + b + 0.1 * rng.standard_normal((N, 1))).astype(np.float32)
    return x, y


def _train_ref(x, y, lr, steps, cleargrad=True):
    W = Variable(np.zeros((x.shape[1], 1), dtype=np.float32))
    b = Variable(np.zeros(1, dtype=np.float32))
    losses = []
    for _ in range(steps):
        loss = F.mean_squared_error(y, F.matmul(x, W) + b)
        if cleargrad:
            W.cleargrad()
            b.cleargrad()
        loss.backward()
        W.data -= lr * W.grad.data
        b.data -= lr * b.grad.data
        losses.append(float(loss.data))
    return W.data, b.data, losses


def _unpack_regression(ex, out, inputs):
    if not (isinstance(out, tuple) and len(out) == 3):
        ex.fail("(W, b, losses) の 3 つのタプルを返してください。", inputs=inputs, expected="(W, b, losses)", actual=out,
                hint="最後に `return W, b, losses` と書きます。")
    W, b, losses = out
    Wd = _data(ex, W, inputs, "W ")
    bd = _data(ex, b, inputs, "b ")
    if not isinstance(losses, list):
        ex.fail("losses はリストにしてください。", inputs=inputs, expected="list", actual=type(losses).__name__,
                hint="`losses = []` を作り、毎回 `losses.append(float(loss.data))` で足します。")
    return Wd, bd, losses


def test_ex9_2_converges_to_least_squares_in_float32(exercise, rng):
    ex = exercise("9-2", "train_linear_regression")
    for _ in range(2):
        x, y = _regression_data(rng)
        N, D = x.shape
        inputs = f"x: shape {x.shape}、y: shape {y.shape}（どちらも float32 の乱数）、lr=0.1、steps=400"
        Wd, bd, losses = _unpack_regression(ex, ex(x.copy(), y.copy(), 0.1, 400), inputs)
        if Wd.shape != (D, 1) or bd.shape != (1,):
            ex.fail("W と b の shape が違います。", inputs=inputs, expected=f"W {(D, 1)}、b (1,)",
                    actual=f"W {Wd.shape}、b {bd.shape}", hint="W は (D, 1)、b は (1,) の 0 から始めます（D = x.shape[1]）。")
        for name, arr in (("W", Wd), ("b", bd)):
            if arr.dtype != np.float32:
                ex.fail(f"学習後の {name} の dtype が float32 ではありません。", inputs=inputs, expected="float32",
                        actual=str(arr.dtype), hint=HINT_FLOAT32)
        A = np.hstack([x, np.ones((N, 1), np.float32)]).astype(np.float64)
        sol, *_ = np.linalg.lstsq(A, y.astype(np.float64), rcond=None)
        W_bad, b_bad, _ = _train_ref(x, y, 0.1, 400, cleargrad=False)
        hint = pick_hint(np.concatenate([Wd.ravel(), bd.ravel()]), {
            "毎回、逆伝播の前に W.cleargrad() と b.cleargrad() を呼んでいますか。呼ばないと勾配が前の回の分と足し合わされ、"
            "最小二乗解に収束しません。": np.concatenate([W_bad.ravel(), b_bad.ravel()]),
        }, "予測 x W + b → F.mean_squared_error → cleargrad → backward → W.data -= lr * W.grad.data（b も）を steps 回繰り返します。")
        ex.check_close(np.concatenate([Wd.ravel(), bd.ravel()]), sol.ravel(), rtol=1e-3, atol=2e-3,
                       inputs=inputs + "（W と b を 1 列に並べて、np.linalg.lstsq の最小二乗解と比べます）", hint=hint)


def test_ex9_2_records_each_loss_before_the_update(exercise, rng):
    ex = exercise("9-2", "train_linear_regression")
    x, y = _regression_data(rng)
    steps = int(rng.integers(5, 30))
    lr = float(rng.uniform(0.02, 0.1))
    inputs = f"x: shape {x.shape}、y: shape {y.shape}、lr={lr:.4f}、steps={steps}"
    _, _, losses = _unpack_regression(ex, ex(x.copy(), y.copy(), lr, steps), inputs)
    _, _, ref = _train_ref(x, y, lr, steps)
    if len(losses) != steps:
        ex.fail("losses の長さが steps と違います。", inputs=inputs, expected=steps, actual=len(losses),
                hint="1 回の繰り返しにつき 1 つ、更新前の損失を足します。")
    if not all(isinstance(v, float) for v in losses):
        ex.fail("losses の要素は Python の float にしてください。", inputs=inputs, expected="float",
                actual=sorted({type(v).__name__ for v in losses}), hint="`float(loss.data)` を足します（Variable のまま足さない）。")
    first = float(np.mean(y.astype(np.float64) ** 2))
    hint0 = pick_hint(losses[0], {
        "losses[0] が、1 回更新した後の損失になっています。更新の前に損失を記録します。": ref[1] if steps > 1 else np.nan,
        "平均ではなく和になっています。F.mean_squared_error を使います。": first * len(y),
    }, "W と b が 0 のとき、最初の損失は mean(y ** 2) です。W と b を 0 から始めていますか。")
    ex.check_close(losses[0], first, rtol=1e-4, inputs=inputs + "（losses[0] を確認）", hint=hint0)
    _, _, bad = _train_ref(x, y, lr, steps, cleargrad=False)
    hint = pick_hint(losses, {
        "毎回、逆伝播の前に W.cleargrad() と b.cleargrad() を呼んでいますか。勾配が足し合わされています。": bad,
    }, "各回の損失を、更新する前に `losses.append(float(loss.data))` で記録します。")
    ex.check_close(np.array(losses), np.array(ref), rtol=1e-4, atol=1e-6, inputs=inputs, hint=hint)


# --- 練習 9-3: HuberLoss -----------------------------------------------------------------------

def _huber_ref(x0, x1, delta):
    r = np.asarray(x0, np.float64) - np.asarray(x1, np.float64)
    a = np.abs(r)
    h = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    return h.sum() / r.size, np.clip(r, -delta, delta) / r.size, h, r  # すべての要素の平均（PyTorch の huber_loss と同じ）


def _huber_inputs(rng, dtype=np.float32, ndim=2):
    N = int(rng.integers(2, 8))
    shape = (N,) if ndim == 1 else (N, int(rng.integers(2, 5)))
    delta = float(np.round(rng.uniform(0.3, 2.0), 3))
    x1 = rng.uniform(-1, 1, size=shape)
    r = rng.uniform(-3 * delta, 3 * delta, size=shape)
    r = np.where(np.abs(np.abs(r) - delta) < 0.05, r * 1.3, r)  # |r| = δ の折れ目から離す
    r.flat[0] = 2.5 * delta  # 両方の場合が必ず入るように
    r.flat[-1] = 0.3 * delta
    return (x1 + r).astype(dtype), x1.astype(dtype), delta


def test_ex9_3_huber_forward_and_backward_float32(exercise, rng):
    ex = exercise("9-3", "huber_loss")
    _subclass(exercise("9-3", "HuberLoss"), Function, "`class HuberLoss(Function):` と書きます。")
    for ndim in (2, 1, 2):
        x0, x1, delta = _huber_inputs(rng, ndim=ndim)
        inputs = (f"x0, x1: shape {x0.shape} の float32 の乱数、delta={delta}"
                  f"（x0 - x1 の先頭: {np.round((x0 - x1).ravel()[:3].astype(np.float64), 3).tolist()}）")
        v0, v1 = Variable(x0.copy()), Variable(x1.copy())
        loss = ex(v0, v1, delta)
        ld = _data(ex, loss, inputs, "huber_loss の戻り値")
        ref, g_ref, h, r = _huber_ref(x0, x1, delta)
        n, rows = r.size, len(r)
        hint = pick_hint(ld, {
            "すべての要素の数 n（x0.size）で割るのを忘れていませんか。": ref * n,
            "割るのは最初の軸の長さ len(x0) ではなく、すべての要素の数 x0.size です（平均はすべての要素についてとります。"
            "mean_squared_error も PyTorch の F.huber_loss も同じ規則です）。": ref * n / rows,
            "|r| > δ のときは δ(|r| - δ/2) です。δ/2 を引き忘れていませんか。":
                np.where(np.abs(r) <= delta, 0.5 * r * r, delta * np.abs(r)).sum() / n,
            "|r| ≤ δ のときは r²/2 です。1/2 を掛け忘れていませんか。":
                np.where(np.abs(r) <= delta, r * r, delta * (np.abs(r) - 0.5 * delta)).sum() / n,
        }, "h(r) = r²/2（|r| ≤ δ）、δ(|r| - δ/2)（|r| > δ）を要素ごとに計算し、和をすべての要素の数 n = r.size で割ります。")
        ex.check_close(ld, ref, rtol=1e-5, atol=1e-6, inputs=inputs, hint=hint)
        ex.check_close(ld, np.float32(ref), rtol=1e-5, atol=1e-6, check_dtype=True, inputs=inputs,
                       hint="損失は 0 次元の float32 の配列にします。n で割るときは r.dtype.type(r.size) のように float32 にそろえます。")
        ex.run(loss.backward)
        for v, sign, name in ((v0, 1, "x0"), (v1, -1, "x1")):
            if v.grad is None:
                ex.fail(f"逆伝播の後、{name}.grad が None です。", inputs=inputs, expected="勾配", actual=None,
                        hint="backward は (x0 の勾配, x1 の勾配) の 2 つを返します。")
            hint = pick_hint(v.grad.data, {
                "勾配もすべての要素の数 n（r.size）で割ります。": sign * g_ref * n,
                "勾配は最初の軸の長さ len(r) ではなく、すべての要素の数 r.size で割ります。": sign * g_ref * n / rows,
                f"{name} の勾配の符号が逆です。∂L/∂x0 = clip(r)/n、∂L/∂x1 = -clip(r)/n です。": -sign * g_ref,
                "勾配を δ で切り詰めていません（|r| > δ では ±δ/n）。": sign * r / n,
            }, "∂L/∂x0 = gy × clip(x0 - x1, -δ, δ) / n、∂L/∂x1 = -∂L/∂x0 です（n = r.size）。")
            ex.check_close(v.grad.data, sign * g_ref, rtol=1e-5, atol=1e-6, inputs=f"{inputs}、{name}.grad を確認", hint=hint)
            ex.check_close(v.grad.data, (sign * g_ref).astype(np.float32), rtol=1e-5, atol=1e-6, check_dtype=True,
                           inputs=f"{inputs}、{name}.grad を確認", hint="勾配も float32 のままにします。")


def test_ex9_3_huber_passes_gradient_check(exercise, rng):
    ex = exercise("9-3", "huber_loss")
    x0, x1, delta = _huber_inputs(rng, np.float64, ndim=int(rng.integers(1, 3)))
    inputs = f"x0, x1: shape {x0.shape} の float64 の乱数、delta={delta}"
    try:
        gradient_check(lambda a, b: ex.run(ex.obj, a, b, delta), x0, x1)
    except ExerciseFailure:
        raise
    except AssertionError as e:
        ex.fail("逆伝播が数値微分と合いません。", inputs=inputs, show_values=False,
                hint=f"{e}\n  ∂L/∂x0 = gy × clip(x0 - x1, -δ, δ) / n、∂L/∂x1 = -∂L/∂x0 です（n = r.size）。")


def test_ex9_3_huber_rejects_different_shapes(exercise, rng):
    ex = exercise("9-3", "huber_loss")
    N = int(rng.integers(2, 9))
    a = Variable(rng.standard_normal((N, 1)).astype(np.float32))
    b = rng.standard_normal(N).astype(np.float32)
    ex.check_raises(ValueError, ex.obj, a, b, inputs=f"x0: shape {(N, 1)}、x1: shape {(N,)}",
                    hint="shape の違う入力はブロードキャストで (N, N) になり、間違った損失を黙って返します。"
                         "x0.shape != x1.shape なら ValueError を送出します。")


# --- 練習 9-4: Softplus ------------------------------------------------------------------------

def _softplus_inputs(rng):
    body = rng.uniform(-30, 30, size=int(rng.integers(4, 10)))
    big = rng.uniform(90, 5000, size=4) * np.array([1, -1, 1, -1])
    x = np.concatenate([body, big, [0.0]])
    rng.shuffle(x)
    return x.astype(np.float32)


def test_ex9_4_softplus_is_stable_and_float32(exercise, rng):
    ex = exercise("9-4", "softplus")
    _subclass(exercise("9-4", "Softplus"), Function, "`class Softplus(Function):` と書きます。")
    for _ in range(3):
        x = _softplus_inputs(rng)
        inputs = f"x: {np.round(x.astype(np.float64), 2).tolist()}（float32）"
        xv = Variable(x.copy())
        ref = np.logaddexp(0, x.astype(np.float64))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = ex(xv)
            yd = _data(ex, y, inputs, "softplus の戻り値")
        runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        if runtime or not np.all(np.isfinite(yd)):
            ex.fail(f"順伝播で警告か inf・nan が出ました（{runtime[0].message if runtime else '値に inf か nan'}）。",
                    inputs=inputs, expected=ref.astype(np.float32), actual=yd,
                    hint="log(1 + exp(x)) は、x が大きいと exp(x) があふれます（log1p(exp(x)) でも同じです）。"
                         "max(x, 0) + log1p(exp(-|x|)) と計算します。")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y.grad = Variable(np.ones_like(yd))
            ex.run(y.backward)
        runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        if runtime:
            ex.fail(f"逆伝播で警告が出ました（{runtime[0].message}）。", inputs=inputs,
                    expected="警告なし", actual=str(runtime[0].message),
                    hint="σ(x) = 1 / (1 + exp(-x)) は、x が大きな負の数だと exp(-x) があふれます。"
                         "本文の F.sigmoid（tanh で計算する安全な版）を使って gy * F.sigmoid(x) を返します。")
        ex.check_close(yd, ref, rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint="y = max(x, 0) + log1p(exp(-|x|)) です。")
        ex.check_close(yd, ref.astype(np.float32), rtol=1e-5, atol=1e-6, check_dtype=True, inputs=inputs,
                       hint="float32 の入力には float32 を返します。np.float64 の値を混ぜていませんか。")
        if xv.grad is None:
            ex.fail("逆伝播の後、x.grad が None です。", inputs=inputs, expected="勾配", actual=None,
                    hint="backward は gy × sigmoid(x) を返します。")
        gref = 0.5 * np.tanh(0.5 * x.astype(np.float64)) + 0.5
        gd = xv.grad.data
        if not np.all(np.isfinite(gd)):
            ex.fail("勾配に inf か nan があります。", inputs=inputs, expected=gref, actual=gd,
                    hint="1 / (1 + exp(-x)) は、x が大きな負の数だと exp(-x) があふれます。F.sigmoid(x) を使います。")
        ex.check_close(gd, gref, rtol=1e-5, atol=1e-6, inputs=inputs + "、x.grad を確認",
                       hint="Softplus の微分は sigmoid(x) です。gy を掛けるのを忘れずに。")
        ex.check_close(gd, gref.astype(np.float32), rtol=1e-5, atol=1e-6, check_dtype=True,
                       inputs=inputs + "、x.grad を確認", hint="勾配も float32 のままにします。")


def test_ex9_4_softplus_passes_gradient_check(exercise, rng):
    ex = exercise("9-4", "softplus")
    x = rng.uniform(-6, 6, size=(2, int(rng.integers(2, 5))))
    try:
        gradient_check(lambda v: ex.run(ex.obj, v), x)
    except ExerciseFailure:
        raise
    except AssertionError as e:
        ex.fail("逆伝播が数値微分と合いません。", inputs=f"x: shape {x.shape} の float64 の乱数", show_values=False,
                hint=f"{e}\n  backward は gy × sigmoid(x) を返します（x は self.inputs[0]）。")


# --- 練習 9-5: Affine --------------------------------------------------------------------------

def test_ex9_5_affine_params_and_forward(exercise, rng):
    ex = exercise("9-5", "Affine")
    cls = _subclass(ex, Layer, "`class Affine(Layer):` と書き、`__init__` の最初で `super().__init__()` を呼びます。")
    for nobias in (False, True, False):
        I, O = (int(n) for n in rng.integers(1, 7, size=2))
        seed = int(rng.integers(0, 10_000))
        inputs = f"Affine({I}, {O}, nobias={nobias}, seed={seed})"
        layer = ex.run(cls, I, O, nobias=nobias, seed=seed)
        names, params = _named(ex, layer, inputs)
        expected_names = ["W"] if nobias else ["W", "b"]
        if names != expected_names:
            hint = ("nobias=True のときは self.b = None にします（Parameter(None) を代入すると params() に入ってしまいます）。"
                    if nobias else "self.W → self.b の順に、どちらも Parameter を代入します。")
            ex.fail("named_params() の名前と順番が違います。", inputs=inputs, expected=expected_names, actual=names, hint=hint)
        if nobias and getattr(layer, "b", "なし") is not None:
            ex.fail("nobias=True なのに self.b が None ではありません。", inputs=inputs, expected=None,
                    actual=getattr(layer, "b", "属性 b がありません"), hint="`self.b = None` にします。")
        W = params["W"].data
        if W is None or W.shape != (I, O) or W.dtype != np.float32:
            ex.fail("W の shape か dtype が違います。", inputs=inputs, expected=f"{(I, O)} float32",
                    actual=None if W is None else f"{W.shape} {W.dtype}", hint="W は (in_size, out_size) の float32 です。" + HINT_FLOAT32)
        W_ref = (np.random.default_rng(seed).standard_normal((I, O)) * np.sqrt(1 / I)).astype(np.float32)
        ex.check_close(W, W_ref, rtol=1e-5, atol=1e-6, inputs=inputs,
                       hint="W = np.random.default_rng(seed).standard_normal((in_size, out_size)) × √(1/in_size) を float32 にします。")
        if not nobias:
            b = params["b"].data
            ex.check_close(b, np.zeros(O, np.float32), check_dtype=True, inputs=inputs,
                           hint="b は shape (out_size,) の float32 の 0 です。")
        _randomize(layer, rng)
        x = rng.uniform(-2, 2, size=(int(rng.integers(1, 5)), I)).astype(np.float32)
        xv = Variable(x)
        y = ex.run(layer, xv)
        yd = _data(ex, y, inputs + f"、x: shape {x.shape}", "forward の戻り値")
        ref = x.astype(np.float64) @ params["W"].data.astype(np.float64)
        if not nobias:
            ref = ref + params["b"].data
        ex.check_close(yd, ref, rtol=1e-5, atol=1e-5, inputs=inputs + f"、x: shape {x.shape}",
                       hint="F.linear(x, self.W, self.b) を返します（nobias=True なら self.b は None）。")
        ex.check_close(yd, ref.astype(np.float32), rtol=1e-5, atol=1e-5, check_dtype=True,
                       inputs=inputs + f"、x: shape {x.shape}", hint="出力も float32 にします。")
        layer.cleargrads()
        y.grad = Variable(np.ones_like(yd))
        ex.run(y.backward)
        for p in layer.params():
            if p.grad is None:
                ex.fail("逆伝播の後、パラメータの勾配が None です。", inputs=inputs, expected="勾配", actual=None,
                        hint="forward では self.W と self.b（Parameter）をそのまま使います。.data を使うと勾配が届きません。")
