"""Neural-network building blocks."""
from .layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from .module import Module, ModuleList, Parameter, StateDictError

__all__ = ["Module", "ModuleList", "Parameter", "StateDictError", "Linear", "Embedding", "LayerNorm",
           "RMSNorm", "Dropout"]
