"""層（``mini_dl.layers``、``import mini_dl.layers as L`` と使います）。

層は、パラメータ（``Parameter``）と、ほかの層を属性として持つ入れ物です。
種類ごとのモジュールに分けて置き、このファイルは ``L.Linear`` のように 1 か所から使えるようにまとめるだけです。

* ``base``: 基底クラス ``Layer`` と ``LayerList``
* ``basic``: ``Linear``・``Dropout``・``BatchNorm``
* ``conv``: 畳み込みの ``Conv2d``（第15章）
* ``deconv``: 転置畳み込みの ``Deconv2d``（第16章）
* ``attention``: ``LayerNorm``・``Embedding``・``MultiHeadAttention``・``TransformerBlock``（第18章）
* ``rnn``: 再帰の ``RNN``・``LSTM``・``GRU``（第17章）
"""
from mini_dl.layers.base import Layer, LayerList  # noqa: F401
from mini_dl.layers.basic import BatchNorm, Dropout, Linear  # noqa: F401
from mini_dl.layers.conv import Conv2d  # noqa: F401
from mini_dl.layers.deconv import Deconv2d  # noqa: F401
from mini_dl.layers.rnn import GRU, LSTM, RNN  # noqa: F401
from mini_dl.layers.attention import Embedding, KVCache, LayerNorm, MultiHeadAttention, TransformerBlock  # noqa: F401
