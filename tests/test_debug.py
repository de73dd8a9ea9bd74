"""第19章: ``mini_dl.debug`` の異常検出モード（``detect_anomaly``）と関数ごとのプロファイラ（``profile``）のテスト。"""
import numpy as np
import pytest

import mini_dl.functions as F
from mini_dl import Function, Variable, cuda, debug


def _methods():
    """``Function`` のすべてのサブクラスの ``forward``・``backward``（クラス自身が定義したもの）。"""
    return {(cls, name): cls.__dict__[name] for cls in [Function] + debug._all_subclasses(Function)
            for name in ("forward", "backward") if name in cls.__dict__}


class BadSqrt(Function):
    """逆伝播が x = 0 で 0 で割る、わざと素朴な平方根。"""

    def forward(self, x):
        return cuda.get_array_module(x).sqrt(x)

    def backward(self, gy):
        return gy / (2 * self.outputs[0]())


def test_anomaly_names_the_function_in_forward(xp):
    x = Variable(xp.asarray(np.array([1.0, 0.0, 2.0], np.float32)))
    before = _methods()
    with pytest.raises(FloatingPointError) as info, np.errstate(all="ignore"):
        with debug.detect_anomaly():
            y = F.exp(x)  # 有限のまま
            F.log(x * y)  # log(0) = -inf
    msg = str(info.value)
    assert msg.startswith("Log の順伝播") and "(3,) float32" in msg
    assert "test_debug.py" in msg and "F.log(x * y)" in msg  # 順伝播で呼んだ場所
    assert _methods() == before  # 例外で抜けても元に戻る


def test_anomaly_names_the_function_in_backward(xp):
    x = Variable(xp.asarray(np.array([4.0, 0.0], np.float32)))
    with pytest.raises(FloatingPointError) as info, np.errstate(all="ignore"):
        with debug.detect_anomaly():
            y = F.sum(BadSqrt()(x) * 3.0)  # 順伝播は有限（sqrt(0) = 0）
            y.backward()
    msg = str(info.value)
    assert msg.startswith("BadSqrt の逆伝播"), msg
    assert "BadSqrt()(x)" in msg  # 順伝播のときの呼び出し場所
    assert "Mul" not in msg.splitlines()[0] and "Div" not in msg.splitlines()[0]


def test_anomaly_with_create_graph_and_pow_at_zero(xp):
    x = Variable(xp.asarray(np.array([1.0, 0.0], np.float32)))
    with pytest.raises(FloatingPointError, match="^Pow の逆伝播"), np.errstate(all="ignore"):
        with debug.detect_anomaly():
            F.sum(x ** 0.5).backward(create_graph=True)
    # 有限の計算では、create_graph=True の 2 階微分まで何も出さずに通る
    x = Variable(xp.asarray(np.array([1.0, 2.0], np.float32)))
    with debug.detect_anomaly():
        F.sum(x ** 3).backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        F.sum(gx).backward()
    np.testing.assert_allclose(cuda.as_numpy(x.grad.data), [6.0, 12.0])


def test_anomaly_lets_non_finite_inputs_through(xp):
    # マスクの -inf のように、入力がもともと非有限なら止めない（作った関数ではないので）
    s = Variable(xp.asarray(np.array([[0.0, -np.inf, 1.0]], np.float32)))
    with debug.detect_anomaly():
        p = F.softmax(s + 0.0)
    assert float(p.data[0, 1]) == 0.0


def test_methods_restored_after_exit_nested_and_overlapping():
    before = _methods()
    with debug.detect_anomaly():
        assert Function.__dict__["forward"] is not before[(Function, "forward")]
        with debug.profile() as prof:
            F.exp(Variable(np.ones(2, np.float32)))
        assert prof.records["Exp"]["calls"] == 1
        assert _methods() != before  # 外側がまだ有効
    assert _methods() == before
    # 重なり合う（入れ子でない）使い方: a を先に閉じても b の分は有効で、両方閉じたら元どおり
    a, b = debug.profile(), debug.profile()
    pa = a.__enter__()
    pb = b.__enter__()
    a.__exit__(None, None, None)
    F.exp(Variable(np.ones(2, np.float32)))
    b.__exit__(None, None, None)
    assert "Exp" not in pa.records and pb.records["Exp"]["calls"] == 1
    assert _methods() == before


def test_profiler_counts_calls_and_bytes_exactly(xp):
    a, b, c, d, e, f = (Variable(xp.asarray(np.full((3, 4), i, np.float32))) for i in range(6))
    before = _methods()
    with debug.profile() as prof:
        y = F.sum((((a * b) + c) * d + e) + f)  # どの変数も 1 回だけ使う: Add 3・Mul 2・Sum 1
        y.backward()
    r = prof.records
    assert {k: v["calls"] for k, v in r.items()} == {"Mul": 2, "Add": 3, "Sum": 1}
    assert {k: v["backward_calls"] for k, v in r.items()} == {"Mul": 2, "Add": 3, "Sum": 1}
    assert r["Add"]["bytes"] == 3 * 12 * 4 and r["Mul"]["bytes"] == 2 * 12 * 4 and r["Sum"]["bytes"] == 4
    assert all(v["forward_s"] >= 0 and v["backward_s"] >= 0 for v in r.values())
    lines = prof.table().splitlines()
    assert len(lines) == 4 and lines[0].startswith("関数")
    totals = [prof.total_time(line.split()[0]) for line in lines[1:]]
    assert totals == sorted(totals, reverse=True)  # 時間の合計の大きい順
    assert _methods() == before


def test_profiler_counts_gradient_accumulation_and_restores_after_exception():
    x = Variable(np.ones(5, np.float32))
    before = _methods()
    with pytest.raises(RuntimeError):
        with debug.profile() as prof:
            F.sum(x * x * x).backward()  # x を 3 回使う: 勾配を足し合わせる Add が 2 回
            raise RuntimeError("途中で止める")
    assert prof.records["Add"]["calls"] == 2 and prof.records["Mul"]["calls"] == 2
    assert _methods() == before
    y = F.exp(x)  # 元に戻った後は、記録されない
    assert "Exp" not in prof.records and y.shape == (5,)


def test_anomaly_does_not_blame_functions_whose_inputs_were_already_non_finite():
    x = Variable(np.array([np.inf, 1.0], np.float32))  # 入力がもともと inf（作ったのはこのグラフの関数ではない）
    w = Variable(np.array([2.0, 3.0], np.float32))
    with debug.detect_anomaly(), np.errstate(all="ignore"):
        y = F.sum(x * w)  # 順伝播の inf は入力から来たもの
        y.backward()  # w の勾配 gy * x も inf だが、Mul の入力に inf があったので止めない
    assert np.isinf(w.grad.data[0])
