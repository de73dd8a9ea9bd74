r"""データ並列の分散学習（第21章）: MPI の上で、パラメータをそろえ、勾配を平均し、データを分けます。

使い方は、同じスクリプトを ``mpiexec -n 2 python train.py`` のように複数のプロセスで動かし、
各プロセスで次のように書きます。

.. code-block:: python

    model = MLP((100, 10), seed=0)
    model(x_dummy)                                  # 遅延初期化をすませる
    distributed.broadcast_params(model)             # ランク 0 の初期値を全員に配る
    loader = distributed.DistributedDataLoader(train_set, batch_size=64, seed=0)
    for x, t in loader:                             # 全体のバッチのうち、自分の担当の部分
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        distributed.allreduce_grads(model)          # 勾配をプロセスの間で平均する
        optimizer.update()                          # 全員が同じ勾配で同じ更新をする

MPI は mpi4py（``pip install "mini_dl[distributed]"`` で入ります）を通して使い、使う関数の中で初めて
読み込みます。``comm=None`` は ``MPI.COMM_WORLD``（起動したすべてのプロセス）です。``mpiexec`` を
使わずに起動したプロセスは、プロセスが 1 つだけの MPI として動きます。

通信はホスト（CPU）の NumPy の配列で行います。CuPy の配列はいったんホストに写して通信し、元に戻します。
GPU の間を直接つなぐ NCCL（``cupy.cuda.nccl``）の使い方は、第21章の本文で説明します。
"""
import zlib

import numpy as np

from mini_dl import cuda
from mini_dl.core import Variable
from mini_dl.datasets import DataLoader


def _comm(comm):
    """``comm`` が ``None`` なら ``MPI.COMM_WORLD`` を返します（mpi4py はここで初めて読み込みます）。"""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            "mini_dl.distributed には mpi4py が必要です（見つかりませんでした）。"
            '`pip install "mini_dl[distributed]"` で mpi4py と MPI（mpich）が入ります。') from e
    return MPI.COMM_WORLD if comm is None else comm


def get_rank(comm=None):
    """このプロセスの番号（ランク、0 から ``size - 1``）を返します。"""
    return _comm(comm).Get_rank()


def get_world_size(comm=None):
    """通信に参加しているプロセスの数（サイズ）を返します。"""
    return _comm(comm).Get_size()


def _agree(comm, signature, what):
    """全プロセスの ``signature`` が同じか確かめ、違えば **全員で** ``ValueError`` を送出します。

    1 つのプロセスだけが例外で抜けると、残りのプロセスは来ない通信を永遠に待ちます。
    そこで、食い違いを全員で確かめてから、全員が同じ例外を出します。確かめる通信は、
    ``signature`` の文字列の CRC-32 :math:`h` について :math:`(h, -h)` の最小値をとる 1 回の ``Allreduce`` です
    （全員が同じなら、最小値が :math:`h` と :math:`-h` に戻ります）。
    """
    h = zlib.crc32(repr(signature).encode("utf-8"))
    mine = np.array([h, -h], dtype=np.int64)
    low = np.empty_like(mine)
    comm.Allreduce(mine, low, op=_mpi_op("MIN"))
    if low[0] != -low[1]:
        raise ValueError(f"{what}がプロセスによって違います（ランク {comm.Get_rank()}: {signature}）")


def _mpi_op(name):
    """``MPI.SUM`` などの演算を名前で返します（mpi4py を読み込むのは使うときだけ）。"""
    from mpi4py import MPI

    return getattr(MPI, name)


def broadcast_params(model, root=0, comm=None):
    """ランク ``root`` のパラメータの値を、すべてのプロセスのパラメータにその場で写します。

    学習を始める前に 1 回呼ぶと、乱数の種が違っても、全員が同じ初期値から始められます。
    配列はそれぞれのパラメータの dtype と場所（CPU か GPU）のまま、値だけを書き換えます。

    Args:
        model (Layer): パラメータをそろえるモデル（遅延初期化はすませておきます）。
        root (int): 値を配るプロセスのランク。
        comm: MPI のコミュニケータ（``None`` なら ``MPI.COMM_WORLD``）。

    Raises:
        ValueError: ``root`` が範囲の外のとき、まだ初期化されていない（``data`` が ``None`` の）
            パラメータがあるとき、パラメータの名前・shape・dtype がプロセスによって違うとき。
            どれも全プロセスで同じ例外になります。
    """
    comm = _comm(comm)
    size = comm.Get_size()
    if not 0 <= root < size:
        raise ValueError(f"root は 0 から {size - 1} のランクにします（受け取った値: {root}）")
    named = list(model.named_params())
    signature = [(name, None if p.data is None else (tuple(p.data.shape), str(p.data.dtype))) for name, p in named]
    _agree(comm, signature, "パラメータの名前・shape・dtype ")
    missing = [name for name, p in named if p.data is None]
    if missing:
        raise ValueError(f"まだ初期化されていないパラメータがあります: {', '.join(missing)}"
                         "（一度入力を通して遅延初期化をすませてから配ってください）")
    for _, param in named:
        xp = cuda.get_array_module(param.data)
        buf = np.ascontiguousarray(cuda.as_numpy(param.data))
        comm.Bcast(buf, root=root)
        param.data[...] = xp.asarray(buf)  # その場で書き換える（オプティマイザの状態などの参照を保つ）


def allreduce_grads(model, comm=None, weight=None):
    r"""すべてのパラメータの勾配を、プロセスの間で平均します（1 回の ``Allreduce`` で）。

    各プロセスの勾配を :math:`g_r`、重みを :math:`w_r` とすると、全員の勾配を次の値にします。

    .. math::

        g \leftarrow \frac{\sum_r w_r g_r}{\sum_r w_r}

    ``weight=None`` なら :math:`w_r = 1`（ただの平均）です。各プロセスの損失が担当するサンプルの平均で、
    担当の数がプロセスによって違うときは、``weight=len(x)`` とすれば全体のバッチの平均の勾配になります。

    勾配を 1 本の平らなバッファに詰めて 1 回だけ通信します（パラメータごとに通信するより速い）。
    最後に、各パラメータの勾配の有無と重みも同じバッファに入れます。勾配のないパラメータ
    （このプロセスの損失が使わなかったもの）は 0 の勾配として平均に加わり、どのプロセスにも勾配が
    なければ ``None`` のまま残ります（1 プロセスで全体のバッチを学習したときと同じです）。

    勾配は新しい ``Variable`` に入れ直します。勾配の配列は複数のパラメータに共有されていたり、
    書き込めないビューだったりするので、その場では書き換えません（第10章の約束）。

    Args:
        model (Layer): 勾配を平均するモデル。
        comm: MPI のコミュニケータ（``None`` なら ``MPI.COMM_WORLD``）。
        weight (float): このプロセスの重み :math:`w_r`（省略すると 1）。

    Raises:
        ValueError: パラメータの要素の数がプロセスによって違うとき（全プロセスで同じ例外）、
            重みの合計が 0 以下のとき。
    """
    comm = _comm(comm)
    params = list(model.params())
    sizes = [0 if p.data is None else p.data.size for p in params]
    n = sum(sizes)
    _agree(comm, (len(params), n), "パラメータの数と要素の数")
    dtypes = [p.data.dtype for p in params if p.data is not None]
    dtype = np.result_type(*dtypes) if dtypes else np.float32
    w = 1.0 if weight is None else float(weight)
    pieces, tail = [], np.zeros(len(params) + 1, dtype=dtype)  # tail: [勾配の有無 | 重み]
    for i, (param, k) in enumerate(zip(params, sizes)):
        if param.grad is None:
            pieces.append(np.zeros(k, dtype=dtype))
        else:
            pieces.append(cuda.as_numpy(param.grad.data).reshape(-1))
            tail[i] = 1
    tail[-1] = w
    buf = np.concatenate(pieces + [tail]).astype(dtype, copy=False)  # 1 本の平らなバッファ
    if weight is not None:
        buf[:n] *= w
    comm.Allreduce(buf.copy(), buf, op=_mpi_op("SUM"))
    total = buf[-1]
    if not total > 0:
        raise ValueError(f"重み weight の合計は正にします（合計: {total}）")
    mean = buf[:n] / total
    offset = 0
    for i, (param, k) in enumerate(zip(params, sizes)):
        if buf[n + i] > 0:
            g = mean[offset:offset + k].reshape(param.data.shape).astype(param.data.dtype, copy=False)
            param.grad = Variable(g if isinstance(param.data, np.ndarray) else cuda.as_cupy(g))
        offset += k


def shard_range(n, rank, size):
    """``n`` 個を ``size`` 個の連続した区間に分けたときの、``rank`` 番目の区間 ``(lo, hi)`` を返します。

    区間の長さの違いは高々 1 で、余りは前のランクから 1 個ずつ持ちます（``np.array_split`` と同じ分け方）。
    すべてのランクの区間を並べると、重ならずに ``0`` から ``n`` をちょうど覆います。

    Raises:
        ValueError: ``size`` が 1 未満、``rank`` が 0 から ``size - 1`` の外、``n`` が負のとき。
    """
    if size < 1:
        raise ValueError(f"size は 1 以上にします（受け取った値: {size}）")
    if not 0 <= rank < size:
        raise ValueError(f"rank は 0 から {size - 1} にします（受け取った値: {rank}）")
    if n < 0:
        raise ValueError(f"n は 0 以上にします（受け取った値: {n}）")
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class DistributedDataLoader(DataLoader):
    """全体のミニバッチのうち、このプロセスの担当の部分だけを返す ``DataLoader`` です。

    全員が同じ種 ``seed`` で同じ順番に並べ替え、``batch_size`` 個の **全体の** ミニバッチを作り、
    その ``shard_range`` の区間だけを取り出します。全ランクの部分を順に並べると、1 プロセスの
    ``DataLoader(dataset, batch_size, seed=seed)`` のミニバッチとちょうど同じになります。

    Args:
        dataset: ``Dataset``（整数の配列での添字に対応するもの）。
        batch_size (int): 全体のミニバッチの大きさ（全プロセスの合計）。
        shuffle (bool): エポックごとに並べ替えるなら ``True``。
        drop_last (bool): 最後の半端な全体のミニバッチを捨てるなら ``True``。
        seed (int): 並べ替えの乱数の種。全プロセスで同じにします。
        gpu (bool): ``True`` ならミニバッチを GPU の配列にして返します。
        rank (int): このプロセスの番号（``None`` なら ``comm`` から）。
        size (int): プロセスの数（``None`` なら ``comm`` から）。
        comm: MPI のコミュニケータ（``rank`` と ``size`` を渡せば使いません）。

    Raises:
        ValueError: ``size > 1`` で並べ替えるのに ``seed`` が ``None`` のとき（プロセスごとに順番が
            ばらばらになります）、``batch_size`` が ``size`` より小さいとき（空の部分ができます）。
    """

    def __init__(self, dataset, batch_size, shuffle=True, drop_last=False, seed=0, gpu=False,
                 rank=None, size=None, comm=None):
        super().__init__(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, gpu=gpu)
        if rank is None or size is None:
            c = _comm(comm)
            rank = c.Get_rank() if rank is None else rank
            size = c.Get_size() if size is None else size
        shard_range(0, rank, size)  # rank と size を確かめる
        if shuffle and seed is None and size > 1:
            raise ValueError("複数のプロセスで並べ替えるときは、全員で同じ seed（整数）を渡します"
                             "（seed=None だとプロセスごとに順番が変わり、データが重なったり漏れたりします）")
        if batch_size < size:
            raise ValueError(f"batch_size（全体のミニバッチ）はプロセスの数 {size} 以上にします（受け取った値: {batch_size}）")
        self.rank, self.size = rank, size

    def __iter__(self):
        for idx in self.global_batches():
            lo, hi = shard_range(len(idx), self.rank, self.size)
            x, t = self.dataset[idx[lo:hi]]
            if self.gpu:
                x, t = cuda.as_cupy(x), cuda.as_cupy(t)
            yield x, t

    def global_batches(self):
        """全体のミニバッチの番号の配列を、順に返します（ジェネレータ、エポックの順番を 1 つ進めます）。"""
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]


def ring_allreduce(array, comm=None):
    r"""リング allreduce: 全プロセスの ``array`` の和を、1 対 1 の通信（``Sendrecv``）だけで求めます。

    配列を平らにして ``size`` 個の塊（chunk）に分けます。ランク :math:`r` は右隣 :math:`r+1` に送り、
    左隣 :math:`r-1` から受け取ります（番号は ``size`` で割った余り）。

    1. reduce-scatter（:math:`p-1` 歩）: 歩 :math:`s` で塊 :math:`(r - s) \bmod p` を送り、受け取った
       塊 :math:`(r - s - 1) \bmod p` を自分の塊に足します。終わると、ランク :math:`r` は塊
       :math:`(r + 1) \bmod p` の全員の和を持っています。
    2. all-gather（:math:`p-1` 歩）: 歩 :math:`s` で塊 :math:`(r + 1 - s) \bmod p` を送り、受け取った
       塊 :math:`(r - s) \bmod p` で上書きします。

    1 つのプロセスが送る量は :math:`2(p-1)/p \\cdot n` 個で、プロセスの数にほとんどよりません。
    ``comm.Allreduce(..., op=SUM)`` と同じ値になります（浮動小数点数では足す順番の違いの誤差まで）。
    各塊は 1 つのランクが足してから全員に写すので、結果はすべてのランクでビットまで同じです。

    Args:
        array: 全プロセスで同じ shape の NumPy（か CuPy）の配列。
        comm: MPI のコミュニケータ（``None`` なら ``MPI.COMM_WORLD``）。

    Returns:
        ndarray: 和。shape・dtype・配列モジュールは ``array`` と同じ（``array`` は変えません）。

    Raises:
        ValueError: shape か dtype がプロセスによって違うとき（全プロセスで同じ例外）。
    """
    comm = _comm(comm)
    xp = cuda.get_array_module(array)
    host = cuda.as_numpy(array)
    _agree(comm, (tuple(host.shape), str(host.dtype)), "配列の shape と dtype ")
    p, r = comm.Get_size(), comm.Get_rank()
    buf = np.array(host, copy=True).reshape(-1)  # 平らな作業用のコピー
    bounds = [shard_range(buf.size, i, p) for i in range(p)]

    def chunk(i):
        lo, hi = bounds[i % p]
        return buf[lo:hi]  # 連続したビュー

    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):  # reduce-scatter
        send, recv_id = chunk(r - s), (r - s - 1) % p
        tmp = np.empty_like(chunk(recv_id))
        comm.Sendrecv(send, dest=right, recvbuf=tmp, source=left)
        chunk(recv_id)[...] += tmp
    for s in range(p - 1):  # all-gather
        send, recv = chunk(r + 1 - s), chunk(r - s)
        tmp = np.empty_like(recv)
        comm.Sendrecv(send, dest=right, recvbuf=tmp, source=left)
        recv[...] = tmp
    out = buf.reshape(host.shape)
    return xp.asarray(out) if xp is not np else out
