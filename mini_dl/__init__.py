"""mini_dl: 本書で一歩ずつ作る、小さくて速いディープラーニングフレームワーク。"""
from mini_dl import cuda
from mini_dl.core import Add, Exp, Function, Square, Variable, add, as_array, exp, square
from mini_dl.utils import numerical_diff

__version__ = "0.1.0"

__all__ = [
    "Add",
    "Exp",
    "Function",
    "Square",
    "Variable",
    "add",
    "as_array",
    "cuda",
    "exp",
    "numerical_diff",
    "square",
]
