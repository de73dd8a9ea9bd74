"""mini_dl の心臓部: 変数 ``Variable``、関数 ``Function``、それらをたどる逆伝播 ``backward``。

第3章で作り、第4章で逆伝播を自動化し、第5章でメモリとモード（``Config``・``no_grad``）を、
第7章で高階微分（``create_graph``）を加えた形です。

演算子（``x + y``）やテンソルのメソッド（``x.reshape(2, 3)``）の中身は ``mini_dl.functions`` にあり、
``mini_dl`` を import したときに ``setup_variable`` が ``Variable`` に取り付けます（第8章）。
このモジュールは ``functions`` を import しないので、import の向きは ``cuda → core → functions`` の一方向です。
"""
import contextlib
import heapq
import itertools
import weakref

import numpy as np

from mini_dl import cuda


class Config:
    """mini_dl 全体の設定です。

    Attributes:
        enable_backprop: ``True`` なら、関数を呼ぶたびに逆伝播のためのつながり
            （計算グラフ）を記録します。推論だけのときは ``False`` にしてメモリを節約します。
    """

    enable_backprop = True


@contextlib.contextmanager
def using_config(name, value):
    """``with`` ブロックの中だけ、``Config`` の設定 ``name`` を ``value`` に変えます。

    ブロックを抜けると（例外で抜けても）元の値に戻ります。

    Args:
        name (str): 設定の名前（例: ``"enable_backprop"``）。
        value: ブロックの中での値。

    Raises:
        AttributeError: ``Config`` にない名前を渡したとき。
    """
    if not hasattr(Config, name):
        raise AttributeError(f"Config に設定 {name!r} はありません")
    old_value = getattr(Config, name)
    setattr(Config, name, value)
    try:
        yield
    finally:
        setattr(Config, name, old_value)


def no_grad():
    """計算グラフを作らないモードにします（``with mini_dl.no_grad():`` と使います）。"""
    return using_config("enable_backprop", False)


class Variable:
    """値（配列）とその勾配を入れておく「箱」です。

    Args:
        data: 中身となる配列。``numpy.ndarray``（GPU なら ``cupy.ndarray``）、
            NumPy のスカラー（同じ dtype の 0 次元配列になります）、
            Python の数値（``float32`` の 0 次元配列になります）、または ``None``。
        name: 変数の名前（計算グラフの表示などに使います）。

    Attributes:
        data: 中身の配列。
        grad (Variable): 逆伝播で求めた勾配（``data`` と同じ shape）。求める前は ``None``。
        creator (Function): この変数を作った関数。入力として作った変数なら ``None``。
        generation (int): 世代。入力から何段目の関数で作られたかを表します。
        name: 変数の名前。

    Raises:
        TypeError: ``data`` が配列でも数値でもないとき。
    """

    # ndarray と Variable の演算（ndarray が左）で、Variable の演算子を優先させます
    __array_priority__ = 200

    def __init__(self, data, name=None):
        if isinstance(data, cuda.array_types) or data is None:
            pass  # 配列はそのまま入れる（いちばんよくある場合なので、最初に調べる）
        elif isinstance(data, np.generic):
            data = np.asarray(data)
        elif isinstance(data, (int, float)) and not isinstance(data, bool):
            data = np.array(data, dtype=np.float32)
        else:
            raise TypeError(
                f"Variable の data には ndarray か数値を渡してください"
                f"（受け取った型: {type(data).__name__}）"
            )
        self.data = data
        self.name = name
        self.grad = None
        self.creator = None
        self.generation = 0

    @property
    def shape(self):
        """中身の配列の shape です。"""
        return self.data.shape

    @property
    def ndim(self):
        """中身の配列の次元数です。"""
        return self.data.ndim

    @property
    def size(self):
        """中身の配列の要素数です。"""
        return self.data.size

    @property
    def dtype(self):
        """中身の配列の dtype です。"""
        return self.data.dtype

    def to_cpu(self):
        """中身の配列を CPU（NumPy）に移します。自分自身を返します。"""
        if self.data is not None:
            self.data = cuda.as_numpy(self.data)
        return self

    def to_gpu(self):
        """中身の配列を GPU（CuPy）に移します（使える GPU が無ければ ``RuntimeError``）。自分自身を返します。"""
        if self.data is not None:
            self.data = cuda.as_cupy(self.data)
        return self

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        if self.data is None:
            return "variable(None)"
        body = str(self.data).replace("\n", "\n" + " " * len("variable("))
        return f"variable({body})"

    def set_creator(self, func):
        """この変数を作った関数 ``func`` を記録し、世代を ``func`` の世代 + 1 にします。"""
        self.creator = func
        self.generation = func.generation + 1

    def cleargrad(self):
        """勾配を消します（同じ変数で別の計算を微分し直す前に呼びます）。"""
        self.grad = None

    def detach(self):
        """同じ配列を中身に持ち、計算グラフにつながっていない新しい変数を返します（PyTorch の ``detach``）。

        配列はコピーせずに共有します。返した変数から先の計算を微分しても、``self`` より入力側には
        勾配が流れません。
        """
        return Variable(self.data, name=self.name)

    def unchain_backward(self):
        """この変数から入力側へ計算グラフをさかのぼり、つながりをすべて断ちます。

        この変数も、たどった途中の変数も ``creator`` が ``None`` になり、計算グラフの根になります
        （Chainer と同じ意味です）。どこからも参照されなくなった関数と途中の配列は、その場で解放されます。
        RNN の「打ち切り BPTT」（第17章）で、学習済みの過去の計算を切り離すのに使います。
        """
        funcs = [] if self.creator is None else [self.creator]
        seen = set(funcs)
        self.creator = None
        while funcs:
            f = funcs.pop()
            for x in f.inputs:
                if x.creator is not None and x.creator not in seen:
                    seen.add(x.creator)
                    funcs.append(x.creator)
                x.creator = None

    def backward(self, retain_grad=False, create_graph=False):
        """この変数から計算グラフをさかのぼり、入力側の変数の ``grad`` を求めます。

        ``mini_dl.backward([self])`` と同じです。関数は世代（generation）の大きい順、つまり出力に近い順に
        1 回ずつ呼び、同じ変数に複数の道から届いた勾配は足し合わせます。

        ``grad`` が未設定なら、出発点の勾配を 1 とします。これができるのは要素が
        1 個の変数（損失など）だけです。それ以外の変数から始めるときは、先に
        ``grad`` に出力側の勾配を入れておきます（PyTorch と同じ規則です）。
        ``grad`` に入れた数や配列は、この変数と同じ dtype・同じ配列モジュールにそろえます。

        Args:
            retain_grad (bool): ``False`` なら、途中の変数（関数の出力）の勾配は使い終わったら
                消し、メモリを節約します。残るのは入力側の変数（``creator`` が ``None``）の勾配です。
            create_graph (bool): ``True`` なら、逆伝播の計算そのものも計算グラフに記録します。
                求めた ``grad`` をさらに微分できる（高階微分）ようになります。

        Raises:
            ValueError: ``grad`` が未設定で ``data`` の要素が 1 個ではないとき、
                または ``grad`` の shape が ``data`` と違うとき。
        """
        backward([self], [self.grad], retain_grad=retain_grad, create_graph=create_graph)


class Parameter(Variable):
    """学習で更新する変数（重みやバイアス）です。

    中身は ``Variable`` と同じです。型で区別できるので、``Layer`` は属性のうち
    ``Parameter`` のものだけを「パラメータ」として集めます。
    """


def _output_grad(f, i, y):
    """関数 ``f`` の ``i`` 番目の出力 ``y`` の勾配。使われなかった出力からは 0 が流れてきたとみなします。"""
    if y is not None:
        if y.grad is not None:
            return y.grad
        return Variable(cuda.get_array_module(y.data).zeros_like(y.data))
    shape, dtype = f.output_specs[i]  # 出力が消えている（出力が複数の関数でだけ起こります）
    xp = cuda.get_array_module(f.inputs[0].data)
    return Variable(xp.zeros(shape, dtype=dtype))


class Function:
    """すべての関数（演算）の基底クラスです。

    ``Function`` のインスタンスを 1 個以上の入力に適用すると、中身の配列を ``forward`` で
    計算し、結果を新しい ``Variable`` に入れて返します（出力が複数ならリスト）。
    入力には ``Variable`` のほか、配列や数値も渡せます（``Variable`` に包みます）。

    逆伝播が有効（``Config.enable_backprop``）なら、入力・出力・世代を覚え、出力に
    「自分を作った関数」として自分を記録します。これが計算グラフになり、``Variable.backward``
    がたどります。出力は弱参照（``weakref``）で持つので、関数と出力の間に循環参照はできません。
    具体的な計算はサブクラスの ``forward``（配列の計算）と ``backward``（``Variable`` の計算）に書きます。
    """

    def __call__(self, *inputs):
        variables, xs, generation = [], [], 0
        for x in inputs:  # 入力を Variable にそろえ、中身の配列を集めながら、いちばん大きな世代も求める
            if not isinstance(x, Variable):
                x = _as_input(self, x)
            variables.append(x)
            xs.append(x.data)
            if x.generation > generation:
                generation = x.generation
        ys = self.forward(*xs)
        if isinstance(ys, tuple):
            return self._outputs(ys, variables, generation)
        # 出力が 1 つ（ほとんどの関数）: リストを作らずに済ませる。演算 1 回ごとの手間を 2 割ほど減らせます
        output = Variable(ys)  # NumPy のスカラーは、Variable が同じ dtype の 0 次元配列にする
        if Config.enable_backprop:
            self.generation = generation
            output.set_creator(self)  # 出力に「自分を作った関数」を記録する
            self.inputs = variables
            self.outputs = [weakref.ref(output)]
        return output

    def _outputs(self, ys, variables, generation):
        """``forward`` がタプルを返したときの ``__call__`` の続き: 出力をまとめて ``Variable`` にします。"""
        outputs = [Variable(y) for y in ys]
        if Config.enable_backprop:
            self.generation = generation
            for output in outputs:
                output.set_creator(self)
            self.inputs = variables
            self.outputs = [weakref.ref(output) for output in outputs]
            # 使われずに消えた出力にも勾配 0 を作れるように、shape と dtype を覚えておく
            self.output_specs = [(y.shape, y.dtype) for y in outputs]
        return outputs if len(outputs) > 1 else outputs[0]

    def forward(self, *xs):
        """順伝播: 入力の配列から出力の配列（複数ならタプル）を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.forward が実装されていません")

    def backward(self, *gys):
        """逆伝播: 出力側の勾配（``Variable``）から、入力ごとの勾配（複数ならタプル）を計算します（サブクラスで実装）。"""
        raise NotImplementedError(f"{type(self).__name__}.backward が実装されていません")


def _as_input(func, x):
    """``Function`` の入力を ``Variable`` にそろえます。変換できない型なら、関数名と型を挙げて知らせます。"""
    if isinstance(x, Variable):
        return x
    if isinstance(x, (*cuda.array_types, np.generic, int, float)) and not isinstance(x, bool):
        return Variable(x)  # Python の数は float32 の 0 次元配列になる
    raise TypeError(
        f"{type(func).__name__} には Variable か ndarray を渡してください"
        f"（受け取った型: {type(x).__name__}）"
    )


def as_array(x):
    """スカラーを 0 次元配列に直します（配列はそのまま返します）。

    NumPy では 0 次元配列どうしの計算結果が ``numpy.float32`` のような
    スカラーになることがあります。``Variable`` は配列だけを入れる箱なので、
    ``Function`` の出力をこの関数で配列にそろえます。dtype は変わりません。

    Args:
        x: 配列かスカラー。

    Returns:
        ndarray: ``x`` が配列ならそのもの、スカラーなら同じ dtype の 0 次元配列。
    """
    if isinstance(x, cuda.array_types):
        return x
    return np.array(x)


def as_variable(obj):
    """``Variable`` はそのまま、配列や数値は ``Variable`` に包んで返します。

    Python の数は、``Variable`` と同じ規則で float32 の 0 次元配列になります。

    Args:
        obj: ``Variable``、配列、または数値。

    Returns:
        Variable: ``obj`` を中身とする変数（``obj`` が ``Variable`` ならそのもの）。
    """
    if isinstance(obj, Variable):
        return obj
    return Variable(obj)


def backward(outputs, grads=None, retain_grad=False, create_graph=False):
    """出力 ``outputs`` から計算グラフをさかのぼり、入力側の変数の ``grad`` を求めます。

    ``Variable.backward`` の中身です。出力が複数あっても 1 回の逆伝播で済みます（PyTorch の
    ``torch.autograd.backward(tensors, grad_tensors)`` と同じ働きです）。関数は世代の大きい順に
    1 回ずつ呼び、同じ変数に複数の道から届いた勾配は足し合わせます。足すときは新しい配列を作るので、
    勾配の配列がその場で書き換わることはありません。

    Args:
        outputs: 出発点の変数（``Variable`` か、そのリスト）。
        grads: 出力ごとの出発点の勾配（``Variable``・配列・数・``None`` のリスト。出力が 1 つなら
            リストでなくても構いません）。``None`` なら、その出力の ``grad`` を使い、それも ``None`` なら
            要素が 1 個の出力に限って 1 とします。数や配列は、その出力と同じ dtype・配列モジュールにします。
        retain_grad (bool): ``False`` なら、途中の変数の勾配は使い終わったら消します。
        create_graph (bool): ``True`` なら、逆伝播の計算も計算グラフに記録します（高階微分）。

    Raises:
        ValueError: 出発点の勾配が決められないとき、shape が合わないとき、
            関数の ``backward`` が入力の数と違う個数や違う shape の勾配を返したとき。
    """
    if isinstance(outputs, Variable):
        outputs = [outputs]
    if grads is None or not isinstance(grads, (list, tuple)):
        grads = [grads] * len(outputs) if grads is None else [grads]
    if len(grads) != len(outputs):
        raise ValueError(f"grads の数（{len(grads)} 個）を outputs の数（{len(outputs)} 個）と同じにしてください")

    funcs = []  # (-世代, 追加した順番, 関数) のヒープ: 世代の大きい関数から取り出す
    seen = set()
    order = itertools.count()

    def add_func(f):
        if f not in seen:
            seen.add(f)
            heapq.heappush(funcs, (-f.generation, next(order), f))

    seeded = set()
    for y, gy in zip(outputs, grads):
        g = _seed_grad(y, y.grad if gy is None else gy)
        y.grad = y.grad + g if id(y) in seeded else g  # 同じ出力が 2 回あれば、出発点の勾配を足す
        seeded.add(id(y))
        if y.creator is not None:
            add_func(y.creator)
    # 逆伝播の計算そのものを計算グラフに記録するのは、create_graph=True のときだけ
    with using_config("enable_backprop", create_graph):
        while funcs:
            _, _, f = heapq.heappop(funcs)
            ys = [ref() for ref in f.outputs]  # 弱参照から出力を取り出す（消えていれば None）
            gys = [_output_grad(f, i, y) for i, y in enumerate(ys)]
            gxs = f.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if len(gxs) != len(f.inputs):
                raise ValueError(
                    f"{type(f).__name__}.backward は入力の数（{len(f.inputs)} 個）だけ勾配を返します"
                    f"（返ってきた数: {len(gxs)} 個）"
                )
            for x, gx in zip(f.inputs, gxs):
                if gx is None:
                    continue  # 微分しない入力（正解ラベルなど）の勾配は None
                if not isinstance(gx, Variable):
                    gx = Variable(as_array(gx))
                if gx.shape != x.shape:
                    raise ValueError(
                        f"{type(f).__name__}.backward が返した勾配の shape {gx.shape} が、"
                        f"入力の shape {x.shape} と違います"
                    )
                if x.grad is None:
                    x.grad = gx
                else:
                    x.grad = x.grad + gx  # 複数の道から届いた勾配は、新しい配列に足し合わせる
                if x.creator is not None:
                    add_func(x.creator)

            if not retain_grad:
                for y in ys:
                    if y is not None:
                        y.grad = None  # 途中の変数の勾配は使い終わったので消す


def _seed_grad(y, g):
    """出発点の勾配 ``g`` を、``y`` と同じ shape・dtype・配列モジュールの ``Variable`` にします。"""
    xp = cuda.get_array_module(y.data)
    if g is None:
        if y.data.size != 1:
            raise ValueError(
                f"backward() を grad なしで呼べるのは、要素が 1 個の変数だけです"
                f"（この変数の shape: {y.data.shape}）。"
                f"先に grad に出力側の勾配を入れてください。"
            )
        return Variable(xp.ones_like(y.data))
    if not isinstance(g, Variable):
        g = Variable(xp.asarray(g, dtype=y.dtype))  # 1.0 や float64 の配列も、y の dtype にそろえる
    if g.shape != y.shape:
        raise ValueError(f"grad の shape {g.shape} が data の shape {y.data.shape} と違います")
    return g
