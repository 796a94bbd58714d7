"""Quant-friendly layers and blocks: float modules that fuse, fake-quantize and convert to int8."""

from qat.nn import blocks
from qat.nn.activations import (
    GELU,
    Hardsigmoid,
    Hardswish,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Swish,
    Tanh,
    get_act,
)
from qat.nn.blocks import *  # noqa: F403
from qat.nn.conv import ChannelScale2d, ConvModule2d, PixelShuffleUp, get_norm
from qat.nn.functional import Add, AddReLU, AddScalar, Cat, FloatFunctional, MatMul, Mul, MulScalar
from qat.nn.misc import Interpolate, SpaceToDepth
from qat.nn.se import SqueezeExcite, make_divisible
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = [
    "GELU",
    "Add",
    "AddReLU",
    "AddScalar",
    "Cat",
    "ChannelScale2d",
    "ConvModule2d",
    "DeQuantStub",
    "FloatFunctional",
    "Hardsigmoid",
    "Hardswish",
    "Interpolate",
    "MatMul",
    "Mul",
    "MulScalar",
    "PixelShuffleUp",
    "QuantStub",
    "ReLU",
    "ReLU6",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "SpaceToDepth",
    "SqueezeExcite",
    "Swish",
    "Tanh",
    "get_act",
    "get_norm",
    "make_divisible",
    *blocks.__all__,
]
