"""同じカーネルの CUDA C 版（第13章）: CuPy の ``ElementwiseKernel`` と ``RawKernel`` で動かします。

ソースは文字列なので CPU でも読めますが、コンパイルと実行には GPU が要ります（``cupy_kernels``）。
"""
import functools

from mini_dl import cuda as device

CUDA_SOURCES = {
    # ElementwiseKernel: (入力の引数, 出力の引数, 1 要素の式)。添字とグリッドは CuPy が決めます
    "add": ("float32 x, float32 y", "float32 out", "out = x + y"),
    "bias_relu": ("float32 x, float32 b", "float32 out", "float z = x + b; out = z > 0.0f ? z : 0.0f"),
    "adam": (
        "float32 g, float32 lr, float32 one_minus_beta1, float32 one_minus_beta2, float32 eps, float32 m_scale, "
        "float32 v_scale",
        "float32 param, float32 m, float32 v",
        "m += one_minus_beta1 * (g - m); v += one_minus_beta2 * (g * g - v); "
        "param -= lr * (m * m_scale) / (sqrtf(v * v_scale) + eps)",
    ),
    # RawKernel: CUDA C の関数をそのまま書きます。添字の計算も自分で書きます
    "sum": r"""
extern "C" __global__ void block_sum(const float* x, float* partial, int n) {
    extern __shared__ float buf[];              // 大きさは起動のときに渡す（blockDim.x 個）
    int tid = threadIdx.x;
    int i = blockIdx.x * blockDim.x + tid;
    buf[tid] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (tid < stride) buf[tid] += buf[tid + stride];
        __syncthreads();
    }
    if (tid == 0) partial[blockIdx.x] = buf[0];
}
""",
    "matmul_tiled": r"""
#define TILE 16
extern "C" __global__ void matmul_tiled(const float* a, const float* b, float* c, int M, int K, int N) {
    __shared__ float sa[TILE][TILE];
    __shared__ float sb[TILE][TILE];
    int tx = threadIdx.x, ty = threadIdx.y;
    int col = blockIdx.x * TILE + tx, row = blockIdx.y * TILE + ty;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        sa[ty][tx] = (row < M && k0 + tx < K) ? a[row * K + k0 + tx] : 0.0f;
        sb[ty][tx] = (k0 + ty < K && col < N) ? b[(k0 + ty) * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < TILE; ++k) acc += sa[ty][k] * sb[k][tx];
        __syncthreads();
    }
    if (row < M && col < N) c[row * N + col] = acc;
}
""",
    "softmax_cross_entropy": r"""
extern "C" __global__ void softmax_cross_entropy(const float* x, const long long* t, float* loss, int C) {
    extern __shared__ float buf[];
    int row = blockIdx.x, tid = threadIdx.x;
    const float* xr = x + (long long)row * C;
    float m = __int_as_float(0xff800000);  // -inf
    for (int c = tid; c < C; c += blockDim.x) m = fmaxf(m, xr[c]);
    buf[tid] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if (tid < s) buf[tid] = fmaxf(buf[tid], buf[tid + s]);
        __syncthreads();
    }
    m = buf[0];
    __syncthreads();
    float sum = 0.0f;
    for (int c = tid; c < C; c += blockDim.x) sum += expf(xr[c] - m);
    buf[tid] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if (tid < s) buf[tid] += buf[tid + s];
        __syncthreads();
    }
    if (tid == 0) {
        long long label = t[row];
        loss[row] = (0 <= label && label < C) ? logf(buf[0]) + m - xr[label] : __int_as_float(0x7fffffff);  // NaN
    }
}
""",
}


@functools.lru_cache(maxsize=None)
def cupy_kernels():
    """``CUDA_SOURCES`` を CuPy のカーネルにして、名前からカーネルへの辞書で返します（GPU でだけ）。

    ``add``・``bias_relu``・``adam`` は ``cupy.ElementwiseKernel``、``sum``・``matmul_tiled``・
    ``softmax_cross_entropy`` は ``cupy.RawKernel`` です。コンパイルは最初の呼び出しのときに CuPy が行います。

    Returns:
        dict: 名前からカーネルへの辞書。

    Raises:
        RuntimeError: CuPy が使える GPU が無いとき。
    """
    if not device.is_available():
        raise RuntimeError("CUDA C のカーネルを動かすには、CuPy が使える GPU が要ります（この機械にはありません）。")
    cupy = device.cupy
    kernels = {}
    for name, source in CUDA_SOURCES.items():
        if isinstance(source, tuple):
            kernels[name] = cupy.ElementwiseKernel(*source, name=f"mini_dl_{name}")
        else:
            entry = source.split("__global__ void ")[1].split("(")[0]  # 関数の名前
            kernels[name] = cupy.RawKernel(source, entry)
    return kernels
