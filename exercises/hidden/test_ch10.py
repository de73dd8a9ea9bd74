"""第10章の隠しテスト（最適化手法・スケジューラ・フック・学習率・初期値）。

練習のノートブックは mini_dl パッケージの Optimizer などを使うので、テストもパッケージを使います。
よくある間違い（古い m で c を作らない、1 つずれた指数、np.float64 の学習率、固有値ではなく対角成分、
勾配の配列へのその場での書き込み）は、
テストの中で同じ間違いをした答えを作って見比べ、当てはまればそのことをヒントで伝えます。
"""
import functools

import numpy as np

import mini_dl.functions as F
import mini_dl.layers as L
from grader import ExerciseFailure, pick_hint
from mini_dl import Parameter
from mini_dl.models import Model
from mini_dl.optimizers import SGD, LinearWarmup


# この章の比較は、ほかの章より細かい誤差で行います
_pick_hint = functools.partial(pick_hint, rtol=1e-5, atol=1e-7)


def _r(x, digits=4):
    return float(np.round(float(x), digits))


# --- 10-1 ExponentialLR -------------------------------------------------------------------

HINT_FLOAT = ("学習率が Python の float ではありません（np.float64 など）。np.power や np.float64 を使わず、"
              "self.base_lr * self.gamma ** step のように Python の数で計算します。")


def _check_lr_type(ex, value, inputs):
    if type(value) is not float:
        ex.fail(f"学習率の型が {type(value).__name__} です。Python の float を返してください。", inputs=inputs,
                expected="float", actual=f"{value!r}（{type(value).__name__}）", hint=HINT_FLOAT)


def test_ex10_1_steps_match_formula(exercise, rng):
    ex = exercise("10-1", "ExponentialLR")
    base = _r(rng.uniform(0.01, 1.0))
    gamma = _r(rng.uniform(0.5, 0.99))
    n = int(rng.integers(5, 12))
    inputs = f"opt = SGD(lr={base})、s = ExponentialLR(opt, gamma={gamma})、s.step() を {n} 回"
    opt = SGD(lr=base)
    scheduler = ex(opt, gamma)
    if opt.lr != base:
        ex.fail("ExponentialLR を作っただけで optimizer.lr が変わりました。", inputs=inputs, expected=base, actual=opt.lr,
                hint="作ったときの学習率は変えません。super().__init__(optimizer) を呼び、gamma を覚えるだけです。")
    got = []
    for _ in range(n):
        value = ex.run(scheduler.step)
        _check_lr_type(ex, value, inputs)
        if value != opt.lr:
            ex.fail("step() の戻り値と optimizer.lr が違います。", inputs=inputs, expected=opt.lr, actual=value,
                    hint="step() は基底クラスのものをそのまま使います（get_lr だけを書きます）。")
        got.append(value)
    expected = [base * gamma ** k for k in range(1, n + 1)]
    hint = _pick_hint(got, {
        "指数が 1 つずれています。step 回目のあとの学習率は base_lr * gamma ** step です（gamma ** (step - 1) ではありません）。":
            [base * gamma ** (k - 1) for k in range(1, n + 1)],
        "指数が 1 つ多くなっています。base_lr * gamma ** step です。": [base * gamma ** (k + 1) for k in range(1, n + 1)],
    }, "学習率は base_lr * gamma ** step です。base_lr は基底クラスが覚えた、作ったときの学習率です。")
    ex.check_close(got, expected, rtol=1e-9, atol=0, inputs=inputs, hint=hint)


def test_ex10_1_get_lr_depends_only_on_step(exercise, rng):
    ex = exercise("10-1", "ExponentialLR")
    base = _r(rng.uniform(0.01, 1.0))
    gamma = _r(rng.uniform(0.5, 0.95))
    steps = [int(k) for k in rng.permutation(np.arange(1, 9))]
    inputs = f"opt = SGD(lr={base})、s = ExponentialLR(opt, gamma={gamma})、s.get_lr(step) を step = {steps} の順に直接呼ぶ"
    opt = SGD(lr=base)
    scheduler = ex(opt, gamma)
    got = [ex.run(scheduler.get_lr, k) for k in steps]
    for value in got:
        _check_lr_type(ex, value, inputs)
    ex.check_close(got, [base * gamma ** k for k in steps], rtol=1e-9, atol=0, inputs=inputs,
                   hint="get_lr(step) は step だけから値を決めます。optimizer.lr や前の値を gamma 倍する書き方では、"
                        "get_lr を直接（順番どおりでなく）呼んだときに値が狂います。")


def test_ex10_1_after_linear_warmup(exercise, rng):
    ex = exercise("10-1", "ExponentialLR")
    base = _r(rng.uniform(0.05, 1.0))
    gamma = _r(rng.uniform(0.5, 0.95))
    warmup = int(rng.integers(2, 6))
    inputs = f"opt = SGD(lr={base})、LinearWarmup(opt, {warmup}, after=ExponentialLR(opt, gamma={gamma}))、step() を 10 回"
    opt = SGD(lr=base)
    scheduler = LinearWarmup(opt, warmup, after=ex(opt, gamma))
    got = [ex.run(scheduler.step) for _ in range(10)]
    expected = [base * (k + 1) / warmup if k < warmup else base * gamma ** (k - warmup) for k in range(1, 11)]
    ex.check_close(got, expected, rtol=1e-9, atol=0, inputs=inputs,
                   hint="ウォームアップのあとは LinearWarmup が after.get_lr(step - warmup_steps) を呼びます。"
                        "get_lr は step だけから base_lr * gamma ** step を返します。")


# --- 10-2 ClipValue ----------------------------------------------------------------------

def _grads(rng):
    shapes = [(int(rng.integers(2, 6)),), (int(rng.integers(2, 4)), int(rng.integers(2, 4))), ()]
    params = []
    for shape in shapes:
        p = Parameter(rng.standard_normal(shape).astype(np.float32))
        p.grad = Parameter((rng.standard_normal(shape) * 3).astype(np.float32))
        params.append(p)
    return params


HINT_IN_PLACE = ("勾配の配列にその場で書き込んでいます（np.clip(..., out=g)、g[...] = ...、g *= ... など）。"
                 "勾配は複数のパラメータに共有されていたり（b1 + b2 の逆伝播では b1.grad is b2.grad）、"
                 "書き込めないビュー（F.sum(w) の勾配）だったりします（本文 10.4 節）。"
                 "xp.clip(g, -max_value, max_value) で新しい配列を作り、param.grad = Variable(新しい配列) と入れ直します。")
HINT_DATA_REBIND = ("param.grad.data = ... と、勾配の Variable の中身を入れ替えています。勾配の Variable は複数のパラメータに"
                    "共有されていることがあり（b1 + b2 の逆伝播では b1.grad is b2.grad）、中身を入れ替えると、ほかのパラメータの"
                    "勾配まで変わります。param.grad = Variable(新しい配列) と、パラメータの grad そのものを入れ直します。")


HINT_UNCHANGED = ("勾配が変わっていません。クリップした新しい配列を作り、param.grad = Variable(新しい配列) と入れ直します"
                  "（新しい配列を作って変数に入れたり、リストを返したりするだけでは、最適化手法には伝わりません）。")


def _check_not_written(ex, grads, arrays, copies, inputs):
    """フックのあと、元の勾配の Variable と配列が変わっていないことを確かめます。"""
    for var, arr, copy in zip(grads, arrays, copies):
        if not np.array_equal(arr, copy):
            ex.fail("元の勾配の配列が書き換えられました。", inputs=inputs, expected=copy, actual=arr, hint=HINT_IN_PLACE)
        if var.data is not arr:
            ex.fail("元の勾配の Variable の data が入れ替えられました。", inputs=inputs, expected="元の配列のまま",
                    actual=var.data, hint=HINT_DATA_REBIND)


def _call_hook(ex, hook, params):
    """フックを呼びます。書き込めない勾配に書き込もうとした ValueError は、ヒント付きの不合格にします。"""
    def call():
        try:
            hook(params)
        except ValueError as exc:
            if "read-only" in str(exc):
                ex.fail(f"書き込めない勾配に書き込もうとして、ValueError: {exc} になりました。",
                        inputs="F.sum(w).backward() で求めた勾配（broadcast_to の書き込めないビュー）",
                        show_values=False, hint=HINT_IN_PLACE)
            raise
    ex.run(call)


def test_ex10_2_clips_each_element(exercise, rng):
    ex = exercise("10-2", "ClipValue")
    max_value = _r(rng.uniform(0.5, 2.0), 3)
    params = _grads(rng)
    params[0].grad.data[:2] = [4.0, -4.0]  # 上側と下側の両方で切られる要素を必ず入れる
    params[-1].grad.data[...] = -5.0  # 0 次元の勾配も下側で切られる
    before_data = [p.data.copy() for p in params]
    before = [p.grad.data.copy() for p in params]
    grads, arrays = [p.grad for p in params], [p.grad.data for p in params]
    inputs = (f"ClipValue({max_value})(params)、勾配の shape = {[p.grad.shape for p in params]}、"
              f"最初の勾配 = {np.round(before[0], 3).tolist()}（float32）")
    hook = ex(max_value)
    _call_hook(ex, hook, params)
    for p, g0, d0 in zip(params, before, before_data):
        got = p.grad.data
        expected = np.clip(g0, -max_value, max_value)
        if got.dtype != np.float32:
            ex.fail(f"勾配の dtype が {got.dtype} になりました。", inputs=inputs, expected="float32", actual=got.dtype,
                    hint="np.float64 の上限や .astype(np.float64) を使わず、Python の数 max_value のまま np.clip に渡します。")
        hint = _pick_hint(got, {
            HINT_UNCHANGED: g0,
            "負の側が切られていません。下限 -max_value でも切ります（np.clip(g, -max_value, max_value)）。": np.minimum(g0, max_value),
            "ノルムで縮めています。この練習では、要素ごとに範囲に収めます（範囲の中の要素は変えません）。":
                g0 * min(1.0, max_value / (np.sqrt((g0.astype(np.float64) ** 2).sum()) + 1e-6)),
        }, "各要素を [-max_value, max_value] に収めます（np.clip）。")
        ex.check_close(got, expected, rtol=0, atol=0, check_dtype=True, inputs=inputs, hint=hint)
        ex.check_close(p.data, d0, rtol=0, atol=0, inputs=inputs,
                       hint="パラメータの値 param.data は変えません。変えるのは勾配 param.grad です。")
    _check_not_written(ex, grads, arrays, before, inputs)


class _TwoBiases(Model):
    def __init__(self, b1, b2):
        super().__init__()
        self.b1 = Parameter(b1)
        self.b2 = Parameter(b2)


def test_ex10_2_shared_gradient_is_not_written(exercise, rng):
    ex = exercise("10-2", "ClipValue")
    max_value = _r(rng.uniform(0.5, 1.5), 3)
    n = int(rng.integers(3, 7))
    c = (rng.standard_normal(n) * 3).astype(np.float32)
    c[:2] = [3.0, -3.0]  # 上側と下側の両方で切られる要素を必ず入れる
    model = _TwoBiases(rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32))
    F.sum((model.b1 + model.b2) * c).backward()
    assert model.b1.grad is model.b2.grad
    shared, shared_array = model.b1.grad, model.b1.grad.data
    inputs = (f"b1, b2 は {n} 要素のバイアス、F.sum((b1 + b2) * c).backward() のあと（b1.grad is b2.grad）、"
              f"ClipValue({max_value})([b1, b2])、共有された勾配 = {np.round(c, 3).tolist()}")
    hook = ex(max_value)
    _call_hook(ex, hook, [model.b1, model.b2])
    _check_not_written(ex, [shared], [shared_array], [c], inputs)
    for name in ("b1", "b2"):
        p = getattr(model, name)
        hint = _pick_hint(p.grad.data, {HINT_UNCHANGED: c}, "各要素を [-max_value, max_value] に収めます（xp.clip）。")
        ex.check_close(p.grad.data, np.clip(c, -max_value, max_value), rtol=0, atol=0, check_dtype=True,
                       inputs=inputs + f"、{name}.grad", hint=hint)


def test_ex10_2_read_only_gradient(exercise, rng):
    ex = exercise("10-2", "ClipValue")
    max_value = _r(rng.uniform(0.2, 0.8), 3)
    shape = (int(rng.integers(2, 5)), int(rng.integers(2, 5)))
    w = Parameter(rng.standard_normal(shape).astype(np.float32))
    F.sum(w).backward()  # 勾配はすべて 1 の、書き込めない（ストライド 0 の）ビュー
    assert not w.grad.data.flags.writeable
    inputs = f"w: {shape}、F.sum(w).backward() のあと（勾配は書き込めない配列）、ClipValue({max_value})([w])"
    grad, array = w.grad, w.grad.data
    hook = ex(max_value)
    _call_hook(ex, hook, [w])
    _check_not_written(ex, [grad], [array], [np.ones(shape, dtype=np.float32)], inputs)
    hint = _pick_hint(w.grad.data, {HINT_UNCHANGED: np.ones(shape)},
                      "各要素を [-max_value, max_value] に収めた新しい配列で、param.grad を入れ直します。")
    ex.check_close(w.grad.data, np.full(shape, max_value, dtype=np.float32), rtol=0, atol=0, check_dtype=True,
                   inputs=inputs, hint=hint)


def test_ex10_2_as_optimizer_hook(exercise, rng):
    ex = exercise("10-2", "ClipValue")
    max_value = _r(rng.uniform(0.1, 0.5), 3)
    lr = _r(rng.uniform(0.05, 0.5), 3)

    class Net(Model):
        def __init__(self):
            super().__init__()
            self.w = Parameter(rng.standard_normal((3, 2)).astype(np.float32))
            self.b = Parameter(rng.standard_normal(2).astype(np.float32))

    model = Net()
    w0, b0 = model.w.data.copy(), model.b.data.copy()
    gw = (rng.standard_normal((3, 2)) * 2).astype(np.float32)
    gb = (rng.standard_normal(2) * 2).astype(np.float32)
    model.w.grad, model.b.grad = Parameter(gw.copy()), Parameter(gb.copy())
    inputs = f"SGD(lr={lr}).setup(model).add_hook(ClipValue({max_value}))、1 回 update()"
    opt = SGD(lr=lr).setup(model).add_hook(ex(max_value))
    ex.run(opt.update)
    ex.check_close(model.w.data, w0 - np.float32(lr) * np.clip(gw, -max_value, max_value), rtol=1e-6, atol=1e-7,
                   check_dtype=True, inputs=inputs,
                   hint="フックは、SGD が更新する前に、クリップした新しい配列で param.grad を入れ直します。")
    ex.check_close(model.b.data, b0 - np.float32(lr) * np.clip(gb, -max_value, max_value), rtol=1e-6, atol=1e-7,
                   check_dtype=True, inputs=inputs, hint="すべてのパラメータ（params のすべて）の勾配をクリップします。")


# --- 10-3 Lion ---------------------------------------------------------------------------

def _lion_reference(w0s, grads, lr, beta1, beta2, wd, variant=None):
    """float64 で書いた Lion。``variant`` はよくある間違い（ヒント用）。"""
    ws = {k: v.astype(np.float64).copy() for k, v in w0s.items()}
    ms = {k: np.zeros_like(v) for k, v in ws.items()}
    history = []
    shared = None
    for step in grads:
        for k, g in step.items():
            g = g.astype(np.float64)
            m = ms[k]
            if variant == "shared":
                m = shared if shared is not None and shared.shape == g.shape else np.zeros_like(g)
            if variant == "new_m":
                m = beta2 * m + (1 - beta2) * g
                c = beta1 * m + (1 - beta1) * g
            else:
                c = beta1 * m + (1 - beta1) * g
                m = beta2 * m + (1 - beta2) * g
            if variant == "no_sign":
                update = c
            else:
                update = np.sign(c)
            decay = 0.0 if variant == "no_decay" else (wd * ws[k] if variant != "decay_no_lr" else 0.0)
            ws[k] = ws[k] - lr * (update + decay)
            if variant == "decay_no_lr":
                ws[k] = ws[k] - wd * ws[k]
            ms[k] = m
            shared = m
        history.append({k: v.copy() for k, v in ws.items()})
    return history, ms


class _Pair(Model):
    def __init__(self, a, b):
        super().__init__()
        self.a = Parameter(a.copy())
        self.b = Parameter(b.copy())


def _lion_case(rng, with_decay):
    n = int(rng.integers(3, 6))
    a0 = rng.standard_normal(n).astype(np.float32)
    b0 = rng.standard_normal((2, 3)).astype(np.float32)
    lr = _r(rng.uniform(0.01, 0.1), 3)
    beta1 = _r(rng.uniform(0.8, 0.95), 3)
    beta2 = _r(rng.uniform(0.9, 0.999), 3)
    wd = _r(rng.uniform(0.1, 1.0), 3) if with_decay else 0.0
    grads = []
    for t in range(6):
        step = {"a": (rng.standard_normal(n) * rng.uniform(0.1, 3)).astype(np.float32)}
        if t != 2:  # 3 回目だけ b の勾配がない（b の更新と状態は進まない）
            step["b"] = rng.standard_normal((2, 3)).astype(np.float32)
        grads.append(step)
    # 4 回目の勾配は、古い m から作った c と、更新したあとの m から作った c とで、符号が必ず逆になる
    # 大きさにします（m と逆向きで、2 つのしきい値のあいだ）。乱数しだいで見逃すことがありません。
    _, ms = _lion_reference({"a": a0, "b": b0}, grads[:3], lr, beta1, beta2, 0.0)
    t_old = beta1 / (1 - beta1)
    t_new = beta1 * beta2 / (beta1 * (1 - beta2) + (1 - beta1))
    for k, m in ms.items():
        grads[3][k] = (-m * (t_old + t_new) / 2).astype(np.float32)
    return {"a": a0, "b": b0}, grads, lr, beta1, beta2, wd


def _run_lion(ex, w0s, grads, lr, beta1, beta2, wd, inputs):
    model = _Pair(w0s["a"], w0s["b"])
    opt = ex(lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd)
    opt.setup(model)
    history = []
    for step in grads:
        model.cleargrads()
        for k, g in step.items():
            getattr(model, k).grad = Parameter(g.copy())
        ex.run(opt.update)
        for k in ("a", "b"):
            p = getattr(model, k)
            if p.data.dtype != np.float32:
                ex.fail(f"更新のあと、パラメータ {k} の dtype が {p.data.dtype} になりました。", inputs=inputs,
                        expected="float32", actual=p.data.dtype,
                        hint="ハイパーパラメータを np.float64 にしたり、np.sqrt / np.power を Python の数に使ったりしていませんか。"
                             "param.data を代入し直すなら、float32 のままになっているか確かめます。")
        history.append({"a": model.a.data.copy(), "b": model.b.data.copy()})
    return opt, history


def test_ex10_3_matches_float64_reference(exercise, rng):
    ex = exercise("10-3", "Lion")
    w0s, grads, lr, beta1, beta2, wd = _lion_case(rng, with_decay=True)
    inputs = (f"Lion(lr={lr}, beta1={beta1}, beta2={beta2}, weight_decay={wd})、パラメータ a: {w0s['a'].shape}、"
              f"b: {w0s['b'].shape}（float32）、ランダムな勾配で 6 回 update()（3 回目は b の勾配なし）")
    opt, history = _run_lion(ex, w0s, grads, lr, beta1, beta2, wd, inputs)
    expected, _ = _lion_reference(w0s, grads, lr, beta1, beta2, wd)
    wrong = {
        "c を、更新したあとの m から作っていませんか。c = beta1 * m + (1 - beta1) * g は古い m で計算し、m の更新はそのあとです。": "new_m",
        "重み減衰 weight_decay * W が効いていません。W ← W - lr * (sign(c) + weight_decay * W) です。": "no_decay",
        "重み減衰に学習率が掛かっていません。W ← W - lr * (sign(c) + weight_decay * W) です。": "decay_no_lr",
        "更新に c そのものを使っていませんか。Lion は符号 sign(c)（xp.sign）だけを使います。": "no_sign",
        "m をパラメータごとに分けていますか。m は state[\"m\"] に入れます（self.m のように 1 つを共有しない）。": "shared",
    }
    for t, (got, exp) in enumerate(zip(history, expected), start=1):
        for k in ("a", "b"):
            candidates = {}
            for hint, variant in wrong.items():
                try:
                    candidates[hint] = _lion_reference(w0s, grads, lr, beta1, beta2, wd, variant)[0][t - 1][k]
                except ValueError:
                    pass
            hint = _pick_hint(got[k], candidates, "更新式を確かめてください: c = beta1 m + (1 - beta1) g、"
                              "W ← W - lr (sign(c) + weight_decay W)、m ← beta2 m + (1 - beta2) g。")
            ex.check_close(got[k], exp[k], rtol=1e-5, atol=1e-6, inputs=inputs + f"、{t} 回目のあとのパラメータ {k}",
                           hint=hint)


def test_ex10_3_state_per_parameter_name(exercise, rng):
    ex = exercise("10-3", "Lion")
    w0s, grads, lr, beta1, beta2, _ = _lion_case(rng, with_decay=False)
    inputs = f"Lion(lr={lr}, beta1={beta1}, beta2={beta2})、パラメータ a と b、ランダムな勾配で 6 回 update()"
    opt, _ = _run_lion(ex, w0s, grads, lr, beta1, beta2, 0.0, inputs)
    _, ms = _lion_reference(w0s, grads, lr, beta1, beta2, 0.0)
    if sorted(opt.state) != ["a", "b"]:
        ex.fail("opt.state のキーが、パラメータの名前になっていません。", inputs=inputs, expected=["a", "b"],
                actual=sorted(opt.state), hint="状態は update_one に渡される辞書 state に入れます（state[\"m\"] = ...）。")
    for k in ("a", "b"):
        state = opt.state[k]
        if "m" not in state:
            ex.fail(f"opt.state[{k!r}] に \"m\" がありません。", inputs=inputs, expected="{'m': 配列}", actual=state,
                    hint="_zeros_like(state, \"m\", param) で、state[\"m\"] を作って使います。")
        ex.check_close(state["m"], ms[k].astype(np.float32), rtol=1e-5, atol=1e-6, check_dtype=True,
                       inputs=inputs + f"、6 回後の opt.state[{k!r}][\"m\"]",
                       hint="m ← beta2 m + (1 - beta2) g を、その場で（m *= ...; m += ...）か state[\"m\"] に入れ直して更新します。"
                            "勾配のなかった回は更新しません。")
    if opt.t != len(grads):
        ex.fail("update の回数 opt.t が合いません。", inputs=inputs, expected=len(grads), actual=opt.t,
                hint="update() を上書きせず、update_one だけを書きます。")


# --- 10-4 lr_limits ----------------------------------------------------------------------

def _spd(rng, n, diagonal=False):
    eig = np.sort(rng.uniform(0.05, 10.0, size=n))
    if diagonal:
        return np.diag(rng.permutation(eig)), eig
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * eig) @ q.T, eig


def _check_limits(ex, H, eig, inputs):
    got = ex(H.copy())
    if not isinstance(got, tuple) or len(got) != 3:
        ex.fail("(lr_max, lr_best, rate) の 3 つのタプルを返してください。", inputs=inputs, expected="(float, float, float)",
                actual=got)
    lo, hi = float(eig[0]), float(eig[-1])
    expected = (2 / hi, 2 / (lo + hi), (hi - lo) / (hi + lo))
    d = np.diag(H)
    dlo, dhi = float(d.min()), float(d.max())
    hint = _pick_hint(got, {
        "H の対角成分を使っていませんか。使うのは固有値（np.linalg.eigvalsh(H)）です。":
            (2 / dhi, 2 / (dlo + dhi), (dhi - dlo) / (dhi + dlo)),
        "lr_max と lr_best が 1/λ の形になっていませんか。|1 - ηλ| < 1 なので上限は 2/λ_max、"
        "最良は |1 - ηλ_min| = |1 - ηλ_max| となる 2/(λ_min + λ_max) です。": (1 / hi, 1 / (lo + hi), (hi - lo) / (hi + lo)),
        "rate が lr = 1/λ_max のときの倍率 1 - λ_min/λ_max になっています。lr_best のときの max|1 - ηλ| です。":
            (2 / hi, 2 / (lo + hi), 1 - lo / hi),
    }, "固有値の最小 λ_min と最大 λ_max から、lr_max = 2/λ_max、lr_best = 2/(λ_min + λ_max)、"
       "rate = (λ_max - λ_min)/(λ_max + λ_min) です。")
    ex.check_close(np.array(got, dtype=np.float64), np.array(expected), rtol=1e-8, atol=1e-12, inputs=inputs, hint=hint)
    for value in got:
        if not isinstance(value, float) or isinstance(value, np.floating):
            ex.fail("値は Python の float で返してください。", inputs=inputs, expected="float",
                    actual=f"{value!r}（{type(value).__name__}）", hint="float(...) で Python の数にします。")


def test_ex10_4_diagonal(exercise, rng):
    ex = exercise("10-4", "lr_limits")
    H, eig = _spd(rng, int(rng.integers(2, 5)), diagonal=True)
    _check_limits(ex, H, eig, f"H = np.diag({np.round(np.diag(H), 4).tolist()})")


def test_ex10_4_rotated_hessians(exercise, rng):
    ex = exercise("10-4", "lr_limits")
    for _ in range(3):
        n = int(rng.integers(2, 6))
        H, eig = _spd(rng, n)
        _check_limits(ex, H, eig, f"H は {n}×{n} の対称正定値行列（対角行列ではない）、固有値 {np.round(eig, 4).tolist()}")


def test_ex10_4_gradient_descent_agrees(exercise, rng):
    ex = exercise("10-4", "lr_limits")
    H, _ = _spd(rng, 3)
    inputs = "H は 3×3 の対称正定値行列。lr_max の 0.99 倍と 1.01 倍で、勾配降下法を 2000 回"
    lr_max, lr_best, rate = ex(H.copy())
    w0 = rng.standard_normal(3)
    norms = []
    for lr in (0.99 * lr_max, 1.01 * lr_max):
        w = w0.copy()
        for _ in range(2000):
            w = w - lr * H @ w
        norms.append(float(np.linalg.norm(w)))
    if not (norms[0] < np.linalg.norm(w0) < norms[1]):
        ex.fail("lr_max の少し下では収束し、少し上では発散するはずが、そうなっていません。", inputs=inputs,
                expected="収束 / 発散", actual=f"2000 回後の |w|: {norms[0]:.3g}（0.99 倍）/ {norms[1]:.3g}（1.01 倍）、最初の |w| = {np.linalg.norm(w0):.3g}",
                hint="lr_max = 2 / λ_max（λ_max は H の最大の固有値）です。")


# --- 10-5 orthogonal ---------------------------------------------------------------------

def _orthonormal_check(ex, W, shape, dtype, inputs):
    if not isinstance(W, np.ndarray):
        ex.fail("NumPy の配列を返してください。", inputs=inputs, expected="ndarray", actual=type(W).__name__)
    rows, cols = shape
    if W.shape != shape:
        hint = ("横長（rows < cols）のときは、(cols, rows) の縦長の行列で QR 分解し、最後に転置します。" if rows < cols
                else "QR 分解する行列は (max(rows, cols), min(rows, cols)) の縦長にします（np.linalg.qr は既定で縮約した Q を返します）。")
        ex.fail(f"shape が違います（期待 {shape}、実際 {W.shape}）。", inputs=inputs, expected=shape, actual=W.shape, hint=hint)
    if W.dtype != dtype:
        ex.fail(f"dtype が違います（期待 {np.dtype(dtype)}、実際 {W.dtype}）。", inputs=inputs, expected=np.dtype(dtype),
                actual=W.dtype, hint="QR 分解の結果は float64 です。最後に .astype(dtype) します。")
    W64 = W.astype(np.float64)
    gram = W64.T @ W64 if rows >= cols else W64 @ W64.T
    tol = 1e-5 if dtype == np.float32 else 1e-10
    ex.check_close(gram, np.eye(min(rows, cols)), rtol=0, atol=tol, inputs=inputs + "（W^T W、横長なら W W^T）",
                   hint="列（横長なら行）が正規直交になっていません。QR 分解の Q を使います（R や元の乱数の行列ではなく）。")


def test_ex10_5_shapes_and_orthonormality(exercise, rng):
    ex = exercise("10-5", "orthogonal")
    n = int(rng.integers(3, 8))
    m = int(rng.integers(n + 1, n + 6))
    for shape in [(m, n), (n, m), (n, n)]:
        inputs = f"orthogonal({shape}, np.random.default_rng(…))"
        W = ex(shape, np.random.default_rng(int(rng.integers(1 << 30))))
        _orthonormal_check(ex, W, shape, np.float32, inputs)
    inputs = f"orthogonal({(m, n)}, rng, dtype=np.float64)"
    W = ex((m, n), np.random.default_rng(int(rng.integers(1 << 30))), np.float64)
    _orthonormal_check(ex, W, (m, n), np.float64, inputs)


def test_ex10_5_uses_the_given_rng(exercise, rng):
    ex = exercise("10-5", "orthogonal")
    seed = int(rng.integers(1 << 30))
    shape = (int(rng.integers(4, 9)), int(rng.integers(2, 4)))
    inputs = f"orthogonal({shape}, np.random.default_rng({seed})) を 2 回、種 {seed + 1} で 1 回"
    W1 = ex(shape, np.random.default_rng(seed))
    W2 = ex(shape, np.random.default_rng(seed))
    W3 = ex(shape, np.random.default_rng(seed + 1))
    if not np.array_equal(W1, W2):
        ex.fail("同じ種の rng から、違う初期値ができました。", inputs=inputs, expected=W1, actual=W2,
                hint="乱数は np.random.randn などではなく、引数の rng（rng.standard_normal）から取ります。")
    if np.allclose(W1, W3):
        ex.fail("違う種の rng から、同じ初期値ができました。", inputs=inputs, expected="違う行列", actual=W3,
                hint="乱数の行列を QR 分解します（np.eye などの決まった行列ではなく）。")


def test_ex10_5_signs_are_corrected(exercise, rng):
    ex = exercise("10-5", "orthogonal")
    shape = (int(rng.integers(4, 8)), int(rng.integers(2, 4)))
    seed = int(rng.integers(1 << 30))
    while True:  # 補正が要る（diag(r) に負の数がある）乱数を選びます。補正を忘れた答えは毎回落ちます
        a = np.random.default_rng(seed).standard_normal((max(shape), min(shape)))
        q, r = np.linalg.qr(a)
        if np.any(np.diag(r) < 0):
            break
        seed += 1
    inputs = f"orthogonal({shape}, np.random.default_rng({seed}))"
    W = ex(shape, np.random.default_rng(seed))
    expected = (q * np.sign(np.diag(r))).astype(np.float32)
    if shape[0] < shape[1]:
        expected = expected.T
    hint = _pick_hint(W, {
        "列の符号の補正（q * np.sign(np.diag(r))）を忘れていませんか。": q.astype(np.float32),
    }, "rng.standard_normal((max(rows, cols), min(rows, cols))) を QR 分解し、q * np.sign(np.diag(r)) とします。", atol=1e-6)
    ex.check_close(W, expected, rtol=1e-5, atol=1e-6, inputs=inputs, hint=hint)


def test_ex10_5_works_as_linear_initializer(exercise, rng):
    ex = exercise("10-5", "orthogonal")
    out_size, in_size = int(rng.integers(3, 7)), int(rng.integers(7, 12))
    inputs = f"L.Linear({out_size}, in_size={in_size}, initializer=orthogonal, seed=0)"
    layer = ex.run(L.Linear, out_size, in_size=in_size, initializer=ex.obj, seed=0)
    _orthonormal_check(ex, layer.W.data, (in_size, out_size), np.float32, inputs)
    x = rng.standard_normal((5, in_size)).astype(np.float32)
    y = (x @ layer.W.data)
    if not np.all(np.linalg.norm(y, axis=1) <= np.linalg.norm(x, axis=1) * (1 + 1e-5)):
        raise ExerciseFailure("直交行列の初期値では、x W の長さが x の長さを超えないはずです。")
