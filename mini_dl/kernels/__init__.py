"""GPU のカーネル（第13章、``mini_dl.kernels``）。

numba-cuda で Python で書いた CUDA カーネルと、それぞれの NumPy の参照実装（``*_reference``）です。
GPU があれば CuPy の配列の上で動き、無ければ numba の CUDA シミュレータ（``NUMBA_ENABLE_CUDASIM=1``）で
NumPy の配列の上で動きます（遅いので小さな大きさで）。シミュレータの選び方は ``launch`` にあります。
numba は最初のカーネルを動かすときに読み込みます。

* ``launch``: numba-cuda の読み込みと、グリッドの大きさの計算
* ``elementwise``: 足し算、バイアス+ReLU の融合、Adam の更新の融合
* ``reduction``: 木の形の総和、ソフトマックス交差エントロピー
* ``gemm``: 素朴な GEMM と、共有メモリのタイルの GEMM（``matmul``）
* ``cuda_c``: 同じカーネルの CUDA C 版（CuPy の ``RawKernel``・``ElementwiseKernel``、GPU でだけ動きます）
"""
from mini_dl.kernels.cuda_c import CUDA_SOURCES, cupy_kernels  # noqa: F401
from mini_dl.kernels.elementwise import (  # noqa: F401
    adam_update,
    adam_update_reference,
    add,
    add_reference,
    bias_relu,
    bias_relu_reference,
)
from mini_dl.kernels.gemm import TILE, matmul, matmul_naive, matmul_reference  # noqa: F401
from mini_dl.kernels.launch import blocks_for, is_simulator, load_numba_cuda  # noqa: F401
from mini_dl.kernels.reduction import (  # noqa: F401
    softmax_cross_entropy,
    softmax_cross_entropy_reference,
    sum,
    sum_reference,
)
