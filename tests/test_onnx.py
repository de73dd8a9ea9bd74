"""第20章: ONNX への書き出し（``mini_dl.onnx``）のテスト。本書のモデルを書き出し、onnxruntime の結果と比べます。"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import mini_dl
import mini_dl.functions as F
import mini_dl.layers as L
import mini_dl.onnx as mo
from mini_dl.models import CNN, GPT, MLP, Model, Sequential


@pytest.fixture
def rng():
    return np.random.default_rng(20)


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(model, inputs, path, *, dynamic_batch=True, rtol=1e-5, name="x"):
    """最初の入力で書き出し、すべての入力で mini_dl と onnxruntime の出力を比べます。書き出したモデルを返します。"""
    proto = mo.export(model, inputs[0], path, dynamic_batch=dynamic_batch)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == [name]
    for x in inputs:
        with mini_dl.no_grad():
            ref = model(x).data
        out = sess.run(None, {name: x})[0]
        assert out.dtype == np.float32 and out.shape == ref.shape, (out.dtype, out.shape, ref.shape)
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(out - ref).max())
        assert err <= rtol * scale * 10, f"{type(model).__name__} の出力が onnxruntime と合いません（最大誤差 {err}）"
    return proto


def _io_types(proto):
    graph = proto.graph
    return ([i.type.tensor_type.elem_type for i in graph.input], [o.type.tensor_type.elem_type for o in graph.output])


def test_mlp_matches_onnxruntime_with_dynamic_batch(tmp_path, rng):
    model = MLP((13, 7, 5), activation=F.relu, seed=0)
    xs = [rng.standard_normal((n, 11)).astype(np.float32) for n in (4, 1, 9)]
    proto = _compare(model, xs, tmp_path / "mlp.onnx")
    assert _io_types(proto) == ([onnx.TensorProto.FLOAT], [onnx.TensorProto.FLOAT])
    assert mo.count_ops(proto) == {"MatMul": 3, "Add": 3, "Relu": 2}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 11
    names = {t.name for t in proto.graph.initializer}
    assert {"l0.W", "l0.b", "l2.W", "l2.b"} <= names


def test_cnn_matches_onnxruntime(tmp_path, rng):
    model = CNN((3, 5), out_size=7, hidden=6, seed=1)
    xs = [rng.standard_normal((n, 1, 9, 10)).astype(np.float32) for n in (2, 5)]
    proto = _compare(model, xs, tmp_path / "cnn.onnx")
    ops = mo.count_ops(proto)
    assert ops["Conv"] == 2 and ops["MaxPool"] == 2 and ops["Reshape"] == 1
    assert _io_types(proto) == ([onnx.TensorProto.FLOAT], [onnx.TensorProto.FLOAT])


def test_fixed_batch_rejects_other_batch(tmp_path, rng):
    model = MLP((5, 3), seed=0)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    _compare(model, [x], tmp_path / "fixed.onnx", dynamic_batch=False)
    with pytest.raises(Exception):
        _session(tmp_path / "fixed.onnx").run(None, {"x": x[:2]})


@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_gpt_matches_onnxruntime(tmp_path, rng, num_kv_heads):
    model = GPT(11, dim=12, num_heads=3 if num_kv_heads is None else 2, num_layers=2, context=9,
                num_kv_heads=num_kv_heads, seed=2)
    ids = [rng.integers(0, 11, size=(n, 7)) for n in (3, 1, 4)]
    model(ids[0])  # 大きさを省いた層のパラメータを作る
    for p in model.params():  # 初期値のままだと値が小さすぎるので、大きめの乱数にして違いを見えやすくする
        p.data = rng.standard_normal(p.shape).astype(np.float32) * 0.5
    proto = _compare(model, ids, tmp_path / "gpt.onnx", name="ids")
    ops = mo.count_ops(proto)
    assert ops["LayerNormalization"] == 5 and ops["Softmax"] == 2 and ops["Where"] == 2 and ops["Tanh"] == 2
    assert _io_types(proto) == ([onnx.TensorProto.INT64], [onnx.TensorProto.FLOAT])


def test_causal_mask_in_exported_gpt(tmp_path, rng):
    """書き出した GPT でも、位置 t の出力は t より後の ID で変わりません。"""
    model = GPT(7, dim=8, num_heads=2, num_layers=1, context=6, seed=3)
    ids = rng.integers(0, 7, size=(2, 6))
    mo.export(model, ids, tmp_path / "g.onnx")
    sess = _session(tmp_path / "g.onnx")
    changed = ids.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % 7
    a, b = (sess.run(None, {"ids": i})[0] for i in (ids, changed))
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-6)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-4


def test_other_functions_match(tmp_path, rng):
    class Misc(Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2d(4, 3, stride=2, pad=1, seed=0)
            self.fc = L.Linear(5, seed=1)
            self.fc2 = L.Linear(5, in_size=5, seed=2)

        def forward(self, x):
            h = F.average_pooling(F.leaky_relu(self.conv(x), 0.1), 2)
            h = F.reshape(h, (h.shape[0], -1))
            h = self.fc(h)
            h = F.tanh(h) * 2.0 - F.exp(-F.sigmoid(h)) + F.square(F.cos(h)) * F.sin(h)
            h = h / (1 + F.sum(h ** 2, axis=1, keepdims=True)) + F.mean(h, axis=0) - F.max(h, axis=1, keepdims=True)
            h = F.log(1 + F.exp(F.min(h, axis=0))) * F.softmax(h, axis=0)
            return F.log_softmax(F.matmul(h, F.transpose(self.fc2.W)))

    x = rng.standard_normal((3, 2, 7, 8)).astype(np.float32)
    _compare(Misc(), [x], tmp_path / "misc.onnx", dynamic_batch=False)


def test_unknown_function_raises_in_japanese(tmp_path, rng):
    model = Sequential(L.Linear(3, seed=0), lambda h: F.clip(h, -0.1, 0.1))
    with pytest.raises(NotImplementedError, match="関数 Clip にまだ対応していません"):
        mo.export(model, rng.standard_normal((2, 4)).astype(np.float32), tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists()


def test_export_rejects_non_numpy_input(tmp_path):
    with pytest.raises(TypeError, match="NumPy"):
        mo.export(MLP((2,)), [[1.0, 2.0]], tmp_path / "l.onnx")


def test_export_keeps_training_mode_and_skips_dropout(tmp_path, rng):
    model = GPT(5, dim=4, num_heads=2, num_layers=1, context=4, dropout=0.5, seed=0)
    proto = mo.export(model, rng.integers(0, 5, size=(1, 4)), tmp_path / "d.onnx")
    assert model.training and "Dropout" not in mo.count_ops(proto)


def test_trace_is_topological(rng):
    model = MLP((4, 3), seed=0)
    inp, y, funcs = mo.trace(model, rng.standard_normal((2, 5)).astype(np.float32))
    assert [type(f).__name__ for f in funcs] == ["Linear", "Sigmoid", "Linear"]
    assert funcs[-1] is y.creator and funcs[0].inputs[0] is inp
    position = {id(f): i for i, f in enumerate(funcs)}
    for i, f in enumerate(funcs):
        assert all(position[id(v.creator)] < i for v in f.inputs if v.creator is not None)


def test_fold_constants_and_fuse_keep_outputs(tmp_path, rng):
    class Tied(Model):  # 出力の層が埋め込みの重みの転置を使う（重みの共有）。転置は定数の畳み込みで消える
        def __init__(self):
            super().__init__()
            self.emb = L.Embedding(9, 6, seed=0)
            self.fc = L.Linear(6, seed=1)

        def forward(self, ids):
            h = F.relu(self.fc(F.reshape(self.emb(ids), (-1, 6))))
            return F.matmul(h, F.transpose(self.emb.W))

    model = Tied()
    ids = rng.integers(0, 9, size=(5,))
    proto = mo.export(model, ids, tmp_path / "t.onnx")
    folded = mo.fold_constants(proto)
    fused = mo.fuse_matmul_add(folded)
    assert mo.count_ops(proto) == {"Gather": 1, "Reshape": 1, "MatMul": 2, "Add": 1, "Relu": 1, "Transpose": 1}
    assert mo.count_ops(folded) == {"Gather": 1, "Reshape": 1, "MatMul": 2, "Add": 1, "Relu": 1}
    assert mo.count_ops(fused) == {"Gather": 1, "Reshape": 1, "Gemm": 1, "MatMul": 1, "Relu": 1}
    assert mo.count_ops(proto)["Transpose"] == 1  # 元のモデルは書き換えない
    ref = model(ids).data
    for m in (folded, fused):
        onnx.checker.check_model(m)
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"ids": ids})[0], ref, rtol=1e-5, atol=1e-6)


def test_fuse_skips_3d_matmul(tmp_path, rng):
    model = GPT(5, dim=4, num_heads=2, num_layers=1, context=4, seed=0)
    proto = mo.export(model, rng.integers(0, 5, size=(2, 4)), tmp_path / "g.onnx")
    assert "Gemm" not in mo.count_ops(mo.fuse_matmul_add(proto))
