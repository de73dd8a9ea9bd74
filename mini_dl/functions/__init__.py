"""関数（``mini_dl.functions``、``import mini_dl.functions as F`` と使います）。

微分できる関数を、種類ごとのモジュールに分けて置いています。このファイルは、それらを
``F.relu`` のように 1 か所から使えるようにまとめるだけです。

* ``tensor``: 形を扱う関数（reshape・transpose・sum・添字・行列積・concat・where など、第8章）
* ``math``: 四則演算と要素ごとの数学関数（第6〜7章）
* ``nn``: 活性化関数・全結合・ソフトマックス・ドロップアウト（第9章・第11章）
* ``loss``: 損失関数と正解率（第9章・第11章）
* ``norm``: 正規化（第11章）
* ``conv``: 畳み込み・im2col・col2im（第15章）
* ``pooling``: 最大プーリング・平均プーリング（第15章）
* ``cpu``・``parallel``: CPU の並列カーネル（numba）と、大きな配列の使い回し（第15章）
* ``operators``: ``Variable`` に演算子を取り付ける ``setup_variable``（第8章）
* ``deconv``: 転置畳み込み ``deconv2d``（第16章）
* ``attention``: 埋め込み・層正規化・GELU・スケール付き内積注意（第18章）

どの関数も ``forward`` は配列で、``backward`` は ``Variable`` で計算するので、何回でも微分できます（第7章）。
"""
from mini_dl.functions.tensor import (  # noqa: F401
    AsType,
    astype,
    broadcast_to,
    BroadcastTo,
    Clip,
    clip,
    Concat,
    concat,
    get_item,
    GetItem,
    GetItemGrad,
    MatMul,
    matmul,
    Max,
    max,
    Mean,
    mean,
    Min,
    min,
    Reshape,
    reshape,
    stack,
    Sum,
    sum,
    sum_to,
    sum_to_array,
    SumTo,
    Transpose,
    transpose,
    Where,
    where,
)
from mini_dl.functions.math import (  # noqa: F401
    Add,
    add,
    as_operands,
    Cos,
    cos,
    Div,
    div,
    Exp,
    exp,
    Log,
    log,
    Mul,
    mul,
    Neg,
    neg,
    Pow,
    pow,
    Sin,
    sin,
    Square,
    square,
    Sub,
    sub,
    Tanh,
    tanh,
)
from mini_dl.functions.nn import (  # noqa: F401
    Dropout,
    dropout,
    leaky_relu,
    LeakyReLU,
    Linear,
    linear,
    linear_simple,
    log_softmax,
    LogSoftmax,
    ReLU,
    relu,
    Sigmoid,
    sigmoid,
    Softmax,
    softmax,
)
from mini_dl.functions.loss import (  # noqa: F401
    accuracy,
    mean_squared_error,
    mean_squared_error_simple,
    MeanSquaredError,
    softmax_cross_entropy,
    softmax_cross_entropy_simple,
    SoftmaxCrossEntropy,
)
from mini_dl.functions.norm import (  # noqa: F401
    batch_norm,
    BatchNorm,
)
from mini_dl.functions.conv import (  # noqa: F401
    Col2im,
    col2im_array,
    conv2d,
    conv2d_simple,
    Conv2d,
    get_conv_outsize,
    get_deconv_outsize,
    im2col,
    im2col_array,
    Im2col,
    pair,
)
from mini_dl.functions.pooling import (  # noqa: F401
    average_pooling,
    average_pooling_simple,
    AveragePooling,
    max_pooling,
    max_pooling_simple,
    MaxPooling,
)
from mini_dl.functions.operators import (  # noqa: F401
    setup_variable,
)
from mini_dl.functions.deconv import (  # noqa: F401
    Deconv2d,
    deconv2d,
    deconv2d_simple,
)
from mini_dl.functions.attention import (  # noqa: F401
    Embedding,
    embedding,
    embedding_simple,
    EmbeddingGrad,
    GELU,
    gelu,
    gelu_simple,
    layer_norm,
    layer_norm_simple,
    LayerNorm,
    scaled_dot_product_attention,
    scaled_dot_product_attention_simple,
    ScaledDotProductAttention,
)
