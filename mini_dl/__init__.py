"""mini_dl: 本書で一歩ずつ作る、小さくて速いディープラーニングフレームワーク。"""
from mini_dl import (amp, cuda, datasets, debug, distributed, functions, initializers, kernels, layers, models, onnx,
                     optimizers, serialization, utils)
from mini_dl.core import Config, Function, Parameter, Variable, as_array, as_variable, backward, no_grad, using_config
from mini_dl.functions import add, cos, div, exp, log, matmul, mul, neg, pow, setup_variable, sin, square, sub, tanh
from mini_dl.datasets import DataLoader
from mini_dl.utils import gradient_check, numerical_diff, numerical_grad

setup_variable()  # Variable に演算子（+ - * / ** @ と添字）とテンソルのメソッドを取り付ける

__version__ = "0.1.0"

__all__ = [
    "Config",
    "DataLoader",
    "Function",
    "Parameter",
    "Variable",
    "add",
    "amp",
    "as_array",
    "as_variable",
    "backward",
    "cos",
    "cuda",
    "datasets",
    "debug",
    "distributed",
    "div",
    "exp",
    "functions",
    "gradient_check",
    "initializers",
    "kernels",
    "layers",
    "log",
    "matmul",
    "models",
    "mul",
    "neg",
    "no_grad",
    "numerical_diff",
    "numerical_grad",
    "onnx",
    "optimizers",
    "pow",
    "serialization",
    "sin",
    "square",
    "sub",
    "tanh",
    "using_config",
    "utils",
]
