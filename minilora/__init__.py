"""minilora: parameter-efficient fine-tuning from scratch on NumPy, CuPy and any Array API library."""
from . import backend, functional, kernels, ops
from .backend import Random, use_backend
from .tensor import Tensor, as_tensor, enable_grad, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "as_tensor", "no_grad", "enable_grad", "use_backend", "Random", "backend", "ops",
           "kernels", "functional"]
