"""推論のレイテンシとスループットを、mini_dl と onnxruntime（``mini_dl.onnx.export`` で書き出したもの）で比べます（第20章）。

    python benchmarks/inference.py            # 既定の回数で測る（10 秒ほど）
    python benchmarks/inference.py --quick    # 回数を減らして短く
    python benchmarks/inference.py --smoke    # 1 回ずつだけ（スクリプトが動くことのテスト用）
    python benchmarks/inference.py --json benchmarks/results_inference.json

測るもの（どれも推論だけ、float32、1 スレッド）:

* 本の MLP（64-256-256-10）・CNN（チャンネル (8, 16)、8×8 の画像）・GPT（語彙 30、D = 32、4 ヘッド、2 ブロック、
  系列 16）の、バッチ 1 のレイテンシと、大きなバッチ（MLP と CNN は 2048、GPT は 64）の 1 回の時間。
* onnxruntime は、グラフの最適化なし（``ORT_DISABLE_ALL``）とすべて（``ORT_ENABLE_ALL``）の 2 通り。

mini_dl と onnxruntime を少しずつ交互に測り（interleave）、中央値で比べます。スレッド数は両方 1 にそろえます
（mini_dl の NumPy は threadpoolctl で、並列カーネルは ``cpu.set_num_threads`` で、onnxruntime は ``intra_op_num_threads`` で）。
書き出したファイルは一時ディレクトリに置きます。
"""
import os
import platform
import tempfile

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

import mini_dl
import mini_dl.functions as F
import mini_dl.onnx
from mini_dl.functions import cpu
from mini_dl.models import CNN, GPT, MLP
from bench import interleaved, options, report, save  # 同じフォルダの bench.py


def models(rng):
    """(名前, モデル, バッチ 1 の入力, 大きなバッチの入力) のリスト。"""
    mlp = MLP((256, 256, 10), activation=F.relu, seed=0)
    cnn = CNN((8, 16), 10, seed=0)
    gpt = GPT(30, dim=32, num_heads=4, num_layers=2, context=16, seed=0)
    x = rng.random((2048, 64), dtype=np.float32)
    ids = rng.integers(0, 30, size=(64, 16))
    return [("MLP", mlp, x[:1], x), ("CNN", cnn, x[:1].reshape(1, 1, 8, 8), x.reshape(-1, 1, 8, 8)),
            ("GPT", gpt, ids[:1], ids)]


def session(path, level):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def bench_model(model, one, many, path, rounds):
    mini_dl.onnx.export(model, one, path, dynamic_batch=True)
    off = session(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    full = session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    name = off.get_inputs()[0].name
    with mini_dl.no_grad():
        ref = model(many).data
    err = float(np.abs(full.run(None, {name: many})[0] - ref).max() / max(1.0, np.abs(ref).max()))
    assert err < 1e-5, f"onnxruntime の出力が mini_dl と合いません（相対誤差 {err}）"
    results = {}
    for label, x, repeat in [("batch 1", one, 1 if rounds == 1 else 50), (f"batch {len(many)}", many, 1 if rounds == 1 else 3)]:
        with threadpool_limits(1), mini_dl.no_grad():
            cpu.set_num_threads(1)  # mini_dl の並列カーネル（第15章）も 1 スレッドに
            times = interleaved({"mini_dl": lambda: model(x), "ORT (no opt)": lambda: off.run(None, {name: x}),
                                 "ORT (all opt)": lambda: full.run(None, {name: x})}, rounds, repeat)
        results[label] = (times, len(x))
    return results, err


def main():
    args, rounds = options(__doc__, 21)
    ort.set_default_logger_severity(3)
    print(f"Python {platform.python_version()}, NumPy {np.__version__}, mini_dl {mini_dl.__version__}, "
          f"onnxruntime {ort.__version__}, CPU {os.cpu_count()} コア（測るのは 1 スレッド）")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, model, one, many in models(np.random.default_rng(0)):
            parts, err = bench_model(model, one, many, os.path.join(workdir, f"{name}.onnx"), rounds)
            print(f"\n{name}: onnxruntime と mini_dl の出力の相対誤差 {err:.1e}")
            for label, (times, n) in parts.items():
                key = f"{name} {label}"
                results[key] = report(f"{name} の推論（{label}、1 回の時間。スループットは {n} を時間で割ったもの）",
                                      times, "ORT (all opt)")
    save(results, args.json)


if __name__ == "__main__":
    main()
