r"""ONNX への書き出し（第20章）: mini_dl の計算グラフをたどり、ONNX のグラフにして保存します。

- ``trace``: モデルを 1 回動かし、出力から ``creator`` と ``inputs`` をたどって、関数をトポロジカル順に並べます。
- ``export``: たどった関数を 1 つずつ ONNX のノードに写し、パラメータをイニシャライザ（initializer）にして保存します。
- ``fold_constants``・``fuse_matmul_add``: 書き出したグラフを小さくする、自作のグラフの最適化です（定数畳み込みと演算子の融合）。
- ``count_ops``: グラフのノードを種類ごとに数えます。

``onnx`` は、使う関数の中でだけ import します（``pip install "mini_dl[onnx]"`` で入ります）。
"""
import numpy as np

from mini_dl.core import Variable, using_config

OPSET = 17  # LayerNormalization が入った版。onnxruntime はこれより新しい版にも対応します


def trace(model, x):
    """モデルを ``x`` で 1 回動かし、計算グラフの関数をトポロジカル順（入力に近い順）に並べます。

    浮動小数点数の入力は ``Variable`` に包んでから渡し、グラフの入力として見分けられるようにします。
    整数の入力（GPT の ID）は配列のまま渡します（``Embedding`` が属性 ``ids`` に持ちます）。
    ドロップアウトのような学習中だけの関数が入らないように、推論モード（``eval()``）で動かします。

    Args:
        model: ``Layer``（``x`` を受け取って ``Variable`` を 1 つ返すもの）。
        x: 入力の配列。

    Returns:
        tuple: ``(inp, y, funcs)``。``inp`` はモデルに渡した入力（``Variable`` か整数の配列）、
        ``y`` は出力の ``Variable``、``funcs`` は関数のリスト（どの関数も、その入力を作った関数より後ろ）。
    """
    inp = x if x.dtype.kind in "iu" else Variable(x)
    was_training = model.training
    model.eval()
    try:
        with using_config("enable_backprop", True):
            y = model(inp)
    finally:
        model.train(was_training)
    funcs, seen = [], set()

    def visit(f):  # 深さ優先で、入力を作った関数を先にリストへ入れる（帰りがけ順）
        stack = [(f, False)]
        while stack:
            g, done = stack.pop()
            if done:
                funcs.append(g)
            elif id(g) not in seen:
                seen.add(id(g))
                stack.append((g, True))
                stack.extend((v.creator, False) for v in reversed(g.inputs) if v.creator is not None)

    if y.creator is not None:
        visit(y.creator)
    return inp, y, funcs


class _Graph:
    """書き出し中の ONNX のグラフ: ノード・イニシャライザと、``Variable`` から ONNX の値の名前への対応を持ちます。"""

    def __init__(self, inp, inp_name, batch):
        self.inp, self.inp_name, self.batch = inp, inp_name, batch  # batch: 可変にするバッチの長さ（固定なら None）
        self.nodes, self.inits, self.names, self.count = [], {}, {}, 0

    def fresh(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, value, stem="const"):
        """定数の配列をイニシャライザに加え、その名前を返します。"""
        name = self.fresh(stem)
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op, inputs, out=None, **attrs):
        """ノードを 1 つ加え、出力の名前を返します。"""
        from onnx import helper

        out = out or self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.fresh(op), **attrs))
        return out

    def shape(self, shape, in_shape):
        """Reshape・Expand の形の定数。バッチを可変にするなら、先頭のバッチの長さを 0（そのまま）にします。"""
        shape = list(shape)
        if self.batch is not None and shape and shape[0] == self.batch and in_shape[0] == self.batch:
            shape[0] = 0
        return self.const(np.array(shape, dtype=np.int64), "shape")


def _unary(op):
    return lambda g, f, ins, out: g.node(op, ins, out)


def _linear(g, f, ins, out):  # Y = X W (+ b)
    if len(ins) == 2:
        return g.node("MatMul", ins, out)
    return g.node("Add", [g.node("MatMul", ins[:2]), ins[2]], out)


def _reshape(g, f, ins, out):
    return g.node("Reshape", [ins[0], g.shape(f.shape, f.inputs[0].shape)], out)


def _transpose(g, f, ins, out):
    axes = f.axes if f.axes is not None else range(f.inputs[0].ndim)[::-1]
    return g.node("Transpose", ins, out, perm=[int(a) % f.inputs[0].ndim for a in axes])


def _broadcast_to(g, f, ins, out):  # Expand は 1 の軸を相手に合わせて広げるので、バッチの軸は 1 で足ります
    shape = [1 if g.batch is not None and i == 0 else s for i, s in enumerate(f.shape)]
    return g.node("Expand", [ins[0], g.const(np.array(shape, dtype=np.int64), "shape")], out)


def _reduce(op):
    def convert(g, f, ins, out):
        ndim = f.inputs[0].ndim
        axis = range(ndim) if f.axis is None else np.atleast_1d(f.axis)
        axes = [int(a) % ndim for a in axis]
        if op == "ReduceSum":  # opset 13 から、ReduceSum の軸は入力で渡します
            return g.node(op, [ins[0], g.const(np.array(axes, dtype=np.int64), "axes")], out,
                          keepdims=int(f.keepdims))
        return g.node(op, ins, out, axes=axes, keepdims=int(f.keepdims))
    return convert


def _pool(op):
    def convert(g, f, ins, out):
        kernel, stride, (ph, pw) = f.args
        attrs = {"count_include_pad": 1} if op == "AveragePool" else {}
        return g.node(op, ins, out, kernel_shape=list(kernel), strides=list(stride), pads=[ph, pw, ph, pw], **attrs)
    return convert


def _conv2d(g, f, ins, out):
    (sh, sw), (ph, pw) = f.stride, f.pad
    KH, KW = f.inputs[1].shape[2:]
    return g.node("Conv", ins, out, kernel_shape=[KH, KW], strides=[sh, sw], pads=[ph, pw, ph, pw])


def _embedding(g, f, ins, out):  # ID がモデルの入力ならグラフの入力を、それ以外（位置の ID）なら定数を使う
    ids = g.inp_name if f.ids is g.inp else g.const(f.ids.astype(np.int64), "ids")
    return g.node("Gather", [ins[0], ids], out, axis=0)


def _gelu(g, f, ins, out):  # opset 17 には GELU が無いので、tanh の式 x/2 (1 + tanh(c (x + a x^3))) に分ける
    x, dtype = ins[0], f.inputs[0].dtype
    c, a, half, one = (g.const(np.array(v, dtype=dtype)) for v in (np.sqrt(2 / np.pi), 0.044715, 0.5, 1.0))
    x3 = g.node("Mul", [g.node("Mul", [x, x]), x])
    t = g.node("Tanh", [g.node("Mul", [g.node("Add", [x, g.node("Mul", [x3, a])]), c])])
    return g.node("Mul", [g.node("Mul", [x, half]), g.node("Add", [t, one])], out)


def _attention(g, f, ins, out):  # softmax(Q K^T / sqrt(D) をマスク) V
    q, k, v = ins
    ndim, dtype = f.inputs[0].ndim, f.inputs[0].dtype
    perm = list(range(ndim - 2)) + [ndim - 1, ndim - 2]
    scale = g.const(np.array(1 / np.sqrt(f.inputs[0].shape[-1]), dtype=dtype), "scale")
    s = g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [k], perm=perm)]), scale])
    if f.mask is not None:  # 見ない場所を -inf に
        s = g.node("Where", [g.const(np.asarray(f.mask), "mask"), s, g.const(np.array(-np.inf, dtype=dtype))])
    return g.node("MatMul", [g.node("Softmax", [s], axis=-1), v], out)


def _pow(g, f, ins, out):
    return g.node("Pow", [ins[0], g.const(np.array(f.c, dtype=f.inputs[0].dtype))], out)


_CONVERTERS = {
    "Add": _unary("Add"), "Sub": _unary("Sub"), "Mul": _unary("Mul"), "Div": _unary("Div"),
    "Neg": _unary("Neg"), "Exp": _unary("Exp"), "Log": _unary("Log"), "Tanh": _unary("Tanh"),
    "Sin": _unary("Sin"), "Cos": _unary("Cos"), "Sigmoid": _unary("Sigmoid"), "ReLU": _unary("Relu"),
    "MatMul": _unary("MatMul"), "Square": lambda g, f, ins, out: g.node("Mul", [ins[0], ins[0]], out),
    "Pow": _pow, "Linear": _linear, "Reshape": _reshape, "Transpose": _transpose, "BroadcastTo": _broadcast_to,
    "Sum": _reduce("ReduceSum"), "Mean": _reduce("ReduceMean"), "Max": _reduce("ReduceMax"),
    "Min": _reduce("ReduceMin"),
    "Softmax": lambda g, f, ins, out: g.node("Softmax", ins, out, axis=f.axis),
    "LogSoftmax": lambda g, f, ins, out: g.node("LogSoftmax", ins, out, axis=f.axis),
    "LeakyReLU": lambda g, f, ins, out: g.node("LeakyRelu", ins, out, alpha=float(f.slope)),
    "Conv2d": _conv2d, "MaxPooling": _pool("MaxPool"), "AveragePooling": _pool("AveragePool"),
    "Embedding": _embedding, "GELU": _gelu, "ScaledDotProductAttention": _attention,
    "LayerNorm": lambda g, f, ins, out: g.node("LayerNormalization", ins, out, axis=-1, epsilon=float(f.eps)),
}


def _value_info(name, array_or_var, batch_dim):
    from onnx import helper

    shape = list(array_or_var.shape)
    if batch_dim and shape:
        shape[0] = "N"
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array_or_var.dtype), shape)


def export(model, x, path, *, dynamic_batch=False, input_name=None, output_name="y"):
    """モデルを ONNX の形式で書き出します（opset は ``OPSET``）。

    モデルを ``x`` で 1 回動かして計算グラフをたどり（``trace``）、関数ごとに ONNX のノードを作ります。
    パラメータは名前つき（``l0.W`` など）のイニシャライザになり、``x`` はグラフの入力、モデルの出力はグラフの出力になります。
    書き出したモデルは ``onnx.checker`` で確かめてから保存します。

    Args:
        model: 書き出す ``Layer``。入力 1 つ、出力 1 つのもの。
        x: 見本の入力の配列（float32、GPT なら整数の ID）。shape がグラフに記録されます。
        path: 保存するファイルの名前（``.onnx``）。
        dynamic_batch (bool): ``True`` なら、入力と出力の先頭の軸（バッチ）の長さを決めずに書き出します。
        input_name (str): グラフの入力の名前（省略すると、浮動小数点数なら ``"x"``、整数なら ``"ids"``）。
        output_name (str): グラフの出力の名前。

    Returns:
        onnx.ModelProto: 保存したモデル。

    Raises:
        NotImplementedError: ONNX への写し方を知らない関数がグラフにあるとき（その関数の名前を挙げます）。
        TypeError: ``x`` が NumPy の配列でないとき（GPU の配列は ``cuda.as_numpy`` で CPU へ移してから渡します）。
    """
    import onnx
    from onnx import helper, numpy_helper

    if not isinstance(x, np.ndarray):
        raise TypeError(f"export の x は NumPy の配列にします（受け取ったもの: {type(x).__name__}）")
    inp, y, funcs = trace(model, x)
    for f in funcs:
        if type(f).__name__ not in _CONVERTERS:
            raise NotImplementedError(f"ONNX への書き出しは関数 {type(f).__name__} にまだ対応していません"
                                      f"（対応している関数: {', '.join(sorted(_CONVERTERS))}）")
    integer = isinstance(inp, np.ndarray)
    input_name = input_name or ("ids" if integer else "x")
    g = _Graph(inp if integer else inp.data, input_name, x.shape[0] if dynamic_batch and x.ndim else None)
    if not integer:
        g.names[id(inp)] = input_name
    for name, p in model.named_params():
        g.names[id(p)] = name
        g.inits[name] = p.data
    for f in funcs:
        ins = []
        for v in f.inputs:
            if id(v) not in g.names:  # 作った関数の無い Variable（数の定数など）は定数のイニシャライザに
                g.names[id(v)] = g.const(v.data)
            ins.append(g.names[id(v)])
        out = output_name if f is y.creator else g.fresh(type(f).__name__.lower())
        _CONVERTERS[type(f).__name__](g, f, ins, out)
        g.names[id(f.outputs[0]())] = out
    if y.creator is None:  # 関数が 1 つも無いモデル（恒等写像）
        g.node("Identity", [input_name], output_name)
    used = {i for node in g.nodes for i in node.input}
    inits = [numpy_helper.from_array(np.asarray(a), name) for name, a in g.inits.items() if name in used]
    graph = helper.make_graph(g.nodes, type(model).__name__, [_value_info(input_name, x, dynamic_batch)],
                              [_value_info(output_name, y, dynamic_batch)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mini_dl",
                              ir_version=8)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return proto


def count_ops(model):
    """ONNX のモデルのノードを、種類（op_type）ごとに数えた辞書を返します（多い順）。"""
    from collections import Counter

    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def fold_constants(model):
    """定数畳み込み（constant folding）: 入力がすべてイニシャライザ（パラメータや定数）のノードを前もって計算し、結果をイニシャライザに置き換えます。

    入力によらずいつも同じ値になる部分（重みの転置、位置の埋め込みの取り出しなど）を、推論のたびに
    計算しなくて済むようになります。ノードの計算には ``onnx.reference``（ONNX の NumPy による参照実装）を使います。
    使われなくなったイニシャライザは消します。

    Args:
        model: ``onnx.ModelProto``。書き換えずに、新しいモデルを返します。

    Returns:
        onnx.ModelProto: 畳み込んだモデル。
    """
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.ModelProto.FromString(model.SerializeToString())  # 複製
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.input and all(i in consts for i in node.input):
            results = ReferenceEvaluator(node).run(None, {i: consts[i] for i in node.input})
            consts.update(zip(node.output, results))
        else:
            keep.append(node)
    used = {i for node in keep for i in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(keep)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items() if n in used)
    return model


def fuse_matmul_add(model):
    """演算子の融合: 2 次元の ``MatMul(A, W)`` とそれに続く ``Add(・, b)`` を、1 つの ``Gemm(A, W, b)`` にまとめます。

    ``W`` と ``b`` がイニシャライザで、``MatMul`` の結果をその ``Add`` だけが使い、``A`` が 2 次元（形の推論で確かめます）
    のときだけ融合します。ノードが減り、バイアスを足す分の中間の配列を作らずに済みます。

    Args:
        model: ``onnx.ModelProto``。書き換えずに、新しいモデルを返します。

    Returns:
        onnx.ModelProto: 融合したモデル。
    """
    import onnx
    from onnx import helper

    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]}
    users = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    fused, skip = [], set()
    for node in graph.node:
        if id(node) in skip:
            continue
        nxt = users.get(node.output[0], [])
        if (node.op_type == "MatMul" and len(nxt) == 1 and nxt[0].op_type == "Add" and ranks.get(node.input[0]) == 2
                and node.input[1] in inits and len(inits[node.input[1]].dims) == 2):
            add = nxt[0]
            b = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            if b in inits and len(inits[b].dims) == 1:
                fused.append(helper.make_node("Gemm", [node.input[0], node.input[1], b], list(add.output),
                                              name=node.name + "_gemm"))
                skip.add(id(add))
                continue
        fused.append(node)
    del graph.node[:]
    graph.node.extend(fused)
    del graph.value_info[:]
    return model
