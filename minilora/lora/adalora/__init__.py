"""AdaLoRA (arXiv 2303.10512): SVD-form adapters whose ranks are pruned by importance."""
from .allocator import RankAllocator
from .config import AdaLoraConfig
from .convert import to_lora
from .layers import SVDLinear
from .model import AdaLoraModel, orthogonal_regularizer
from .plot import plot_rank_pattern
from .save_load import load_adalora_adapter, save_adalora_adapter

__all__ = ["AdaLoraConfig", "SVDLinear", "RankAllocator", "AdaLoraModel", "orthogonal_regularizer", "to_lora",
           "plot_rank_pattern", "save_adalora_adapter", "load_adalora_adapter"]
