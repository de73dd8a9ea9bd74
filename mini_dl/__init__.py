"""mini_dl: 本書で一歩ずつ作る、小さくて速いディープラーニングフレームワーク。"""
from mini_dl import cuda, functions, utils
from mini_dl.core import (
    Config,
    Function,
    Variable,
    add,
    as_array,
    as_variable,
    div,
    matmul,
    mul,
    neg,
    no_grad,
    pow,
    sub,
    using_config,
)
from mini_dl.functions import cos, exp, log, sin, square, tanh
from mini_dl.utils import gradient_check, numerical_diff, numerical_grad

__version__ = "0.1.0"

__all__ = [
    "Config",
    "Function",
    "Variable",
    "add",
    "as_array",
    "as_variable",
    "cos",
    "cuda",
    "div",
    "exp",
    "functions",
    "gradient_check",
    "log",
    "matmul",
    "mul",
    "neg",
    "no_grad",
    "numerical_diff",
    "numerical_grad",
    "pow",
    "sin",
    "square",
    "sub",
    "tanh",
    "using_config",
    "utils",
]
