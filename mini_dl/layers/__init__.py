"""層（``mini_dl.layers``、``import mini_dl.layers as L`` と使います）。

層は、パラメータ（``Parameter``）と、ほかの層を属性として持つ入れ物です。
種類ごとのモジュールに分けて置き、このファイルは ``L.Linear`` のように 1 か所から使えるようにまとめるだけです。

* ``base``: 基底クラス ``Layer`` と ``LayerList``
* ``basic``: ``Linear``・``Dropout``・``BatchNorm``
"""
from mini_dl.layers.base import Layer, LayerList  # noqa: F401
from mini_dl.layers.basic import BatchNorm, Dropout, Linear  # noqa: F401
