"""mini_dl: 本書で一歩ずつ作る、小さくて速いディープラーニングフレームワーク。"""
from mini_dl import cuda, datasets, functions, initializers, layers, models, optimizers, utils
from mini_dl.core import (
    Config,
    Function,
    Parameter,
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
from mini_dl.datasets import DataLoader
from mini_dl.utils import gradient_check, numerical_diff, numerical_grad

__version__ = "0.1.0"

__all__ = [
    "Config",
    "DataLoader",
    "Function",
    "Parameter",
    "Variable",
    "add",
    "as_array",
    "as_variable",
    "cos",
    "cuda",
    "datasets",
    "div",
    "exp",
    "functions",
    "gradient_check",
    "initializers",
    "layers",
    "log",
    "matmul",
    "models",
    "mul",
    "neg",
    "no_grad",
    "numerical_diff",
    "numerical_grad",
    "optimizers",
    "pow",
    "sin",
    "square",
    "sub",
    "tanh",
    "using_config",
    "utils",
]
