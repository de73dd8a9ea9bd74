"""mini_dl.distributed のテスト: 本物の ``mpiexec -n 2``（と 3）のプロセスで確かめます。

``mpiexec`` が見つからなければ、飛ばさずに失敗します（``pip install -e ".[test]"`` で mpich が入ります）。
各スクリプトはランク 0 で結果を JSON にして標準出力に書き、テストはそれを読んで確かめます。
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mini_dl
from mini_dl import distributed, models, optimizers
import mini_dl.functions as F

ROOT = pathlib.Path(__file__).resolve().parents[1]


def mpiexec_path():
    """``sys.executable`` の隣の ``mpiexec``、なければ PATH の ``mpiexec``。"""
    here = pathlib.Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def run_script(tmp_path, source, n=2, mpi=True):
    """``source`` をファイルに書き、``mpiexec -n n``（``mpi=False`` なら python だけ）で動かして、最後の行の JSON を返します。"""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    cmd = [sys.executable, str(script)]
    if mpi:
        exe = mpiexec_path()
        if exe is None:
            pytest.fail("mpiexec が見つかりません。MPI（mpich）を入れてください: pip install -e \".[test]\"（distributed の extra）")
        cmd = [exe, "-n", str(n)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"終了コード {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mpiexec_is_installed():
    assert mpiexec_path() is not None, "mpiexec が見つかりません（pip install -e \".[test]\" で mpich が入ります）"


def test_broadcast_params_makes_ranks_equal(tmp_path):
    out = run_script(tmp_path, """
        import json
        import numpy as np
        from mpi4py import MPI
        from mini_dl import distributed, models
        comm = MPI.COMM_WORLD
        rank = comm.Get_rank()
        model = models.MLP((7, 3), seed=rank)            # ランクごとに違う初期値
        model(np.zeros((1, 5), dtype=np.float32))
        before = [p.data for p in model.params()]
        root_values = comm.bcast([p.data.copy() for p in model.params()] if rank == 1 else None, root=1)
        distributed.broadcast_params(model, root=1)
        after = [p.data for p in model.params()]
        res = {"same_object": all(a is b for a, b in zip(before, after)),
               "equal_root": all(np.array_equal(a, b) for a, b in zip(after, root_values)),
               "dtypes": sorted({str(a.dtype) for a in after})}
        allres = comm.gather(res)
        if rank == 0:
            print(json.dumps(allres))
    """)
    assert len(out) == 2
    for res in out:
        assert res == {"same_object": True, "equal_root": True, "dtypes": ["float32"]}, out


def test_allreduce_grads_averages(tmp_path):
    out = run_script(tmp_path, """
        import json
        import numpy as np
        from mpi4py import MPI
        from mini_dl import Variable, distributed
        from mini_dl.layers import Layer
        from mini_dl.core import Parameter
        comm = MPI.COMM_WORLD
        rank = comm.Get_rank()

        class Net(Layer):
            def __init__(self):
                super().__init__()
                self.a = Parameter(np.zeros((2, 3), dtype=np.float32))
                self.b = Parameter(np.zeros(4, dtype=np.float32))
                self.c = Parameter(np.zeros(1, dtype=np.float32))

        net = Net()
        net.a.grad = Variable(np.full((2, 3), rank + 1.0, dtype=np.float32))   # 1 と 2 -> 平均 1.5
        if rank == 0:
            net.b.grad = Variable(np.arange(4, dtype=np.float32))              # ランク 0 だけ -> 半分
        distributed.allreduce_grads(net)
        res = {"a": net.a.grad.data.tolist(), "a_dtype": str(net.a.grad.data.dtype),
               "b": None if net.b.grad is None else net.b.grad.data.tolist(), "c": net.c.grad is None}
        # 重みつき: ランク 0 は 1 件、ランク 1 は 3 件の平均の勾配
        net.a.grad = Variable(np.full((2, 3), 10.0 * rank, dtype=np.float32))
        net.b.grad = net.c.grad = None
        distributed.allreduce_grads(net, weight=1 + 2 * rank)
        res["weighted"] = float(net.a.grad.data[0, 0])
        allres = comm.gather(res)
        if rank == 0:
            print(json.dumps(allres))
    """)
    for res in out:
        assert res["a"] == [[1.5] * 3] * 2 and res["a_dtype"] == "float32", res
        assert res["b"] == [0.0, 0.5, 1.0, 1.5], res    # 勾配のないランクは 0 として平均に加わる
        assert res["c"] is True, res                     # どのランクにもなければ None のまま
        assert res["weighted"] == pytest.approx(7.5), res  # (1*0 + 3*10) / 4


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [4, 7, 10])
def test_distributed_loader_is_a_disjoint_cover(size, batch_size):
    data = mini_dl.datasets.Spiral(num_data=11)  # 33 件: 最後のバッチは半端
    if batch_size < size:
        return
    single = list(mini_dl.DataLoader(data, batch_size, seed=3))
    parts = [list(distributed.DistributedDataLoader(data, batch_size, seed=3, rank=r, size=size)) for r in range(size)]
    assert all(len(p) == len(single) for p in parts)
    for i, (x, t) in enumerate(single):
        xs = np.concatenate([p[i][0] for p in parts])
        ts = np.concatenate([p[i][1] for p in parts])
        np.testing.assert_array_equal(xs, x)
        np.testing.assert_array_equal(ts, t)
        lengths = [len(p[i][0]) for p in parts]
        assert max(lengths) - min(lengths) <= 1, lengths


def test_shard_range_covers_exactly():
    for n in range(0, 20):
        for size in range(1, 6):
            ranges = [distributed.shard_range(n, r, size) for r in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert [hi - lo for lo, hi in ranges] == [len(c) for c in np.array_split(np.arange(n), size)]


def _train_single(batch_size):
    data = mini_dl.datasets.Digits()
    model = models.MLP((32, 10), seed=0)
    opt = optimizers.SGD(lr=0.2).setup(model)
    for x, t in mini_dl.DataLoader(data, batch_size, seed=1):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()
    return [p.data for p in model.params()]


def test_data_parallel_training_matches_single_process(tmp_path):
    """2 プロセスのデータ並列（全体のバッチ 64）が、1 プロセスのバッチ 64 の学習と同じ重みになる。

    1 エポック（1,437 件）の最後のバッチは 29 件で 15 件と 14 件に分かれるので、件数の重みで平均します。
    """
    batch_size = 64
    out = run_script(tmp_path, f"""
        import json
        import numpy as np
        from mpi4py import MPI
        import mini_dl
        import mini_dl.functions as F
        from mini_dl import distributed, models, optimizers
        comm = MPI.COMM_WORLD
        rank = comm.Get_rank()
        data = mini_dl.datasets.Digits()
        model = models.MLP((32, 10), seed=0 if rank == 0 else 123)   # ランク 1 はわざと違う初期値
        model(data[np.arange(1)][0])
        distributed.broadcast_params(model)
        opt = optimizers.SGD(lr=0.2).setup(model)
        loader = distributed.DistributedDataLoader(data, {batch_size}, seed=1)
        for x, t in loader:
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            distributed.allreduce_grads(model, weight=len(x))
            opt.update()
        weights = comm.gather([p.data for p in model.params()])
        if rank == 0:
            same = all(np.array_equal(a, b) for a, b in zip(*weights))
            np.savez("w.npz", *weights[0])
            print(json.dumps({{"ranks_identical": same, "shard": len(x)}}))
    """)
    assert out == {"ranks_identical": True, "shard": 15}
    with np.load(tmp_path / "w.npz") as f:
        parallel = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    single = _train_single(batch_size)
    assert len(parallel) == len(single)
    for a, b in zip(parallel, single):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg="2 プロセスのデータ並列が 1 プロセスの学習と違います")


@pytest.mark.parametrize("n", [2, 3])
def test_ring_allreduce_equals_allreduce(tmp_path, n):
    out = run_script(tmp_path, """
        import json
        import numpy as np
        from mpi4py import MPI
        from mini_dl import distributed
        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        res = []
        for length in [0, 1, 2, 5, 7, 101]:          # size で割り切れない長さも
            rng = np.random.default_rng(rank * 100 + length)
            x = rng.standard_normal((length,)).astype(np.float32)
            i = rng.integers(-1000, 1000, size=(length, 1)).astype(np.int64)
            ref_x, ref_i = np.empty_like(x), np.empty_like(i)
            comm.Allreduce(x, ref_x)
            comm.Allreduce(i, ref_i)
            got_x, got_i = distributed.ring_allreduce(x), distributed.ring_allreduce(i)
            everyone = comm.allgather(got_x)
            res.append({"exact": bool(np.array_equal(got_x, ref_x)), "close": bool(np.allclose(got_x, ref_x, rtol=1e-5, atol=1e-6)),
                        "int": bool(np.array_equal(got_i, ref_i)), "shape": list(got_i.shape), "dtype": str(got_x.dtype),
                        "same_on_ranks": all(np.array_equal(e, got_x) for e in everyone)})
        x = np.ones((2, 3), dtype=np.float32)
        y = distributed.ring_allreduce(x)
        res.append({"input_unchanged": bool((x == 1).all()), "sum": float(y[1, 2])})
        allres = comm.gather(res)
        if rank == 0:
            print(json.dumps({"size": size, "res": allres}))
    """, n=n)
    assert out["size"] == n
    for res in out["res"]:
        for r in res[:-1]:
            assert r["close"] and r["int"] and r["same_on_ranks"] and r["dtype"] == "float32", r
            if n == 2:
                assert r["exact"], r  # 2 つの数の和は足す順番によらない
        assert res[-1] == {"input_unchanged": True, "sum": float(n)}


def test_mismatched_ranks_raise_on_every_rank(tmp_path):
    out = run_script(tmp_path, """
        import json
        import numpy as np
        from mpi4py import MPI
        from mini_dl import distributed, models
        comm = MPI.COMM_WORLD
        rank = comm.Get_rank()
        msgs = []
        model = models.MLP((4 + rank, 2), seed=0)      # ランクで形が違うモデル
        model(np.zeros((1, 3), dtype=np.float32))
        for f in [lambda: distributed.broadcast_params(model), lambda: distributed.allreduce_grads(model),
                  lambda: distributed.ring_allreduce(np.zeros(3 + rank, dtype=np.float32))]:
            try:
                f()
                msgs.append(None)
            except ValueError as e:
                msgs.append(str(e))
        allmsgs = comm.gather(msgs)
        if rank == 0:
            print(json.dumps(allmsgs))
    """)
    for msgs in out:
        assert all(m is not None and "プロセスによって違います" in m for m in msgs), out


def test_size_one_without_mpiexec(tmp_path):
    out = run_script(tmp_path, """
        import json
        import numpy as np
        from mini_dl import Variable, distributed, models
        model = models.MLP((4, 2), seed=0)
        model(np.zeros((1, 3), dtype=np.float32))
        w = [p.data.copy() for p in model.params()]
        distributed.broadcast_params(model)
        for p in model.params():
            p.grad = Variable(np.full(p.data.shape, 0.25, dtype=np.float32))
        distributed.allreduce_grads(model, weight=5)
        x = np.arange(5, dtype=np.float32)
        lazy = models.MLP((4, 2), seed=0)
        try:
            distributed.broadcast_params(lazy)
            err = None
        except ValueError as e:
            err = str(e)
        print(json.dumps({"rank": distributed.get_rank(), "size": distributed.get_world_size(),
                          "unchanged": all(np.array_equal(a, p.data) for a, p in zip(w, model.params())),
                          "grads": sorted({float(v) for p in model.params() for v in p.grad.data.ravel()}),
                          "ring": distributed.ring_allreduce(x).tolist(), "lazy_error": err}))
    """, mpi=False)
    assert out["rank"] == 0 and out["size"] == 1 and out["unchanged"]
    assert out["grads"] == [0.25] and out["ring"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert "初期化されていない" in out["lazy_error"]


def test_clear_errors_without_mpi(monkeypatch):
    with pytest.raises(ValueError, match="rank は 0 から 1"):
        distributed.shard_range(10, 2, 2)
    with pytest.raises(ValueError, match="size は 1 以上"):
        distributed.shard_range(10, 0, 0)
    data = mini_dl.datasets.Spiral(num_data=5)
    with pytest.raises(ValueError, match="seed"):
        distributed.DistributedDataLoader(data, 8, seed=None, rank=0, size=2)
    with pytest.raises(ValueError, match="batch_size"):
        distributed.DistributedDataLoader(data, 1, seed=0, rank=0, size=2)
    distributed.DistributedDataLoader(data, 8, shuffle=False, seed=None, rank=1, size=2)  # 並べ替えなければ種は要らない
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match="mini_dl\\[distributed\\]"):
        distributed.get_rank()


@pytest.mark.parametrize("device", ["strict", "cupy"])
def test_device_arrays_stay_on_their_device(tmp_path, device):
    """GPU の配列（と CPU で動く厳しい代役）は、ホストで通信してから元の配列モジュールに戻る（1 プロセス）。"""
    if device == "cupy" and not mini_dl.cuda.is_available():
        pytest.skip("CuPy が使える GPU がありません")
    out = run_script(tmp_path, f"""
        import contextlib
        import json
        import sys
        import numpy as np
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from mini_dl import Variable, cuda, distributed, models
        if {device!r} == "strict":
            import strict_cupy
            ctx = strict_cupy.install()
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            model = models.MLP((4, 2), seed=0)
            model(np.zeros((1, 3), dtype=np.float32))
            model.to_gpu()
            xp = cuda.get_array_module(model.l0.W.data)
            before = [cuda.as_numpy(p.data).copy() for p in model.params()]
            distributed.broadcast_params(model)
            for p in model.params():
                p.grad = Variable(xp.full(p.data.shape, 0.5, dtype=np.float32))
            distributed.allreduce_grads(model)
            ring = distributed.ring_allreduce(xp.arange(5, dtype=np.float32))
            print(json.dumps({{
                "on_device": xp is not np and all(cuda.get_array_module(p.data) is xp and cuda.get_array_module(p.grad.data) is xp
                                                   for p in model.params()),
                "unchanged": all(np.array_equal(a, cuda.as_numpy(p.data)) for a, p in zip(before, model.params())),
                "grads": sorted({{float(v) for p in model.params() for v in cuda.as_numpy(p.grad.data).ravel()}}),
                "ring_on_device": cuda.get_array_module(ring) is xp, "ring": cuda.as_numpy(ring).tolist()}}))
    """, mpi=False)
    assert out == {"on_device": True, "unchanged": True, "grads": [0.5], "ring_on_device": True,
                   "ring": [0.0, 1.0, 2.0, 3.0, 4.0]}, out
