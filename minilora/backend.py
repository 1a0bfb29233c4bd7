"""Array backends: the only module that knows array libraries by name.

Compute code receives an array namespace ``xp`` (NumPy, CuPy or any Python Array API library) and
calls only Array API standard functions on it. Where the standard has a gap, this module offers one
named helper per gap, each with a NumPy, a CuPy and a portable implementation:

    Random            seeded random numbers (normal, uniform, integers), backend-native where possible
    scatter_add       out[idx[i]] += values[i]   (the embedding backward)
    to_numpy          device array -> host NumPy array (explicit, never silent)
    from_numpy        host NumPy array -> array of a backend
    to_namespace      any array -> array of a given namespace and dtype (what loaders copy into parameters)
    dtype_name        NumPy's name of any backend's dtype ("float32")

Backend precedence: the arrays you pass > ``with use_backend("cupy"):`` > the ``MINILORA_BACKEND``
environment variable > NumPy. There is no settable global. Four accessors answer the questions a
caller has:

    namespace_of(*arrays)      the namespace of these arrays (the default one when none is given)
    default_namespace()        the namespace new arrays are created in when no array decides
    namespace_named(name)      the namespace of the backend called "numpy", "cupy" or "array_api_strict"
    backend_name(x)            the name of an array's backend, or of a namespace
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import types

from .errors import BackendError

BACKENDS = ("numpy", "cupy", "array_api_strict")
_ENV_VAR = "MINILORA_BACKEND"
_local = threading.local()


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def namespace_named(name: str):
    """The array namespace of the backend called ``name`` (imported on first use)."""
    _check_name(name)
    if name == "cupy":
        try:
            cupy = importlib.import_module("cupy")
        except ImportError as exc:
            raise BackendError("backend 'cupy' needs the cupy package (pip install minilora[gpu]); "
                               "use backend 'numpy' on a machine without a GPU") from exc
        if not cupy.is_available():
            raise BackendError("backend 'cupy' is installed but no CUDA GPU answers; "
                               "use backend 'numpy' on this machine")
        return cupy
    return importlib.import_module(name)


def is_available(name: str) -> bool:
    """True when backend ``name`` can be used on this machine."""
    try:
        namespace_named(name)
        return True
    except (BackendError, ImportError):
        return False


def _default_name() -> str:
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get(_ENV_VAR, "").strip()
    if env:
        if env not in BACKENDS:
            raise BackendError(f"{_ENV_VAR}={env!r} is not a backend: expected one of {', '.join(BACKENDS)}")
        return env
    return "numpy"


def default_namespace():
    """The namespace new arrays are created in when no array decides: the innermost
    ``use_backend`` > $MINILORA_BACKEND > numpy."""
    return namespace_named(_default_name())


@contextlib.contextmanager
def use_backend(name: str):
    """Create new arrays with backend ``name`` inside the ``with`` block (nesting-safe)."""
    namespace_named(name)  # fail at the door, not at the first array
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield namespace_named(name)
    finally:
        stack.pop()


def backend_name(array_or_namespace) -> str:
    """The name ("numpy", "cupy", "array_api_strict") of an array's backend, or of a namespace."""
    if isinstance(array_or_namespace, types.ModuleType):
        return _check_name(array_or_namespace.__name__.split(".")[0])
    module = type(array_or_namespace).__module__.split(".")[0]
    if module in BACKENDS:
        return module
    raise BackendError(f"not an array of a known backend: {type(array_or_namespace).__name__}")


def namespace_of(*arrays):
    """The namespace shared by ``arrays`` (Python scalars and None are ignored; none left: the
    default namespace). Raises BackendError when arrays of two backends meet: minilora never
    copies silently."""
    names = {backend_name(a) for a in arrays if a is not None and not isinstance(a, (int, float, bool))}
    if not names:
        return default_namespace()
    if len(names) > 1:
        raise BackendError(f"arrays of different backends meet: {sorted(names)}; "
                           "move them explicitly with to_numpy/from_numpy")
    (name,) = names
    return importlib.import_module(name)


# ---------------------------------------------------------------- host <-> device

def to_numpy(array, contiguous: bool = False):
    """A host NumPy copy (or view) of ``array``, whatever its backend; ``contiguous``: row-major (C
    order) as files and digests need it, copied only when it is not (0-d arrays stay 0-d)."""
    import numpy as np
    name = backend_name(array) if not isinstance(array, np.ndarray) else "numpy"
    if name == "numpy":
        host = array
    elif name == "cupy":
        host = array.get()
    else:
        host = np.asarray(array)
    return np.asarray(host, order="C") if contiguous else host


def from_numpy(array, xp=None):
    """Move a host NumPy array to namespace ``xp`` (default: the default namespace)."""
    import numpy as np
    xp = default_namespace() if xp is None else xp
    name = backend_name(xp)
    if not isinstance(array, (np.ndarray, np.generic)):
        if type(array).__module__.split(".")[0] in BACKENDS:
            raise BackendError(f"from_numpy: expected a host NumPy array, got an array of "
                               f"{backend_name(array)!r}; call to_numpy first")
        array = np.asarray(array)  # host scalars and nested lists
    array = np.asarray(array)
    if name == "numpy":
        return array
    return xp.asarray(array)


def to_namespace(array, xp, dtype=None, copy: bool = True):
    """``array`` (host NumPy or any backend's) as an array of namespace ``xp`` with ``dtype`` (default:
    its own): the one way a host array becomes a parameter's data. copy=False shares ``array`` when
    it has the namespace and dtype already."""
    import numpy as np
    if not isinstance(array, np.ndarray) and backend_name(array) != backend_name(xp):
        array = to_numpy(array)
    if isinstance(array, np.ndarray) and backend_name(xp) != "numpy":
        array = from_numpy(np.asarray(array, order="C"), xp)
    return xp.astype(array, array.dtype if dtype is None else dtype, copy=copy)


def dtype_name(dtype) -> str:
    """NumPy's name of a dtype of any backend: np.float32, cupy's and array_api_strict's float32
    (which prints as "array_api_strict.float32") all give "float32"."""
    import numpy as np
    try:
        return np.dtype(dtype).name
    except TypeError:
        return np.dtype(str(dtype).split(".")[-1]).name


# ---------------------------------------------------------------- gap: random numbers

class Random:
    """A seeded random generator for namespace ``xp``; its state can be saved and restored.

    NumPy and array_api_strict draw on the host with PCG64 (array_api_strict then wraps the result);
    CuPy draws natively on the device.
    """

    def __init__(self, seed: int = 0, xp=None):
        import numpy as np
        self.xp = default_namespace() if xp is None else xp
        self._name = backend_name(self.xp)
        if self._name == "cupy":
            self._gen = self.xp.random.default_rng(seed)
        else:
            self._gen = np.random.Generator(np.random.PCG64(seed))

    def _wrap(self, host):
        return host if self._name in ("numpy", "cupy") else self.xp.asarray(host)

    def normal(self, shape, std=1.0, dtype=None, mean=0.0):
        dtype = self.xp.float32 if dtype is None else dtype
        if self._name == "cupy":
            return (self._gen.standard_normal(shape, dtype=dtype) * std + mean).astype(dtype)
        host = self._gen.standard_normal(shape) * std + mean
        return self._wrap(host.astype(_host_dtype(dtype)))

    def uniform(self, shape, low=0.0, high=1.0, dtype=None):
        dtype = self.xp.float32 if dtype is None else dtype
        if self._name == "cupy":
            return (self._gen.random(shape, dtype=dtype) * (high - low) + low).astype(dtype)
        host = self._gen.uniform(low, high, shape)
        return self._wrap(host.astype(_host_dtype(dtype)))

    def integers(self, low, high, shape, dtype=None):
        """Integers uniform in [low, high); dtype default int64."""
        dtype = self.xp.int64 if dtype is None else dtype
        if self._name == "cupy":
            return self._gen.integers(low, high, shape, dtype=dtype)
        return self._wrap(self._gen.integers(low, high, shape, dtype=_host_dtype(dtype)))

    @property
    def state(self):
        """JSON-serialisable state (host generators only)."""
        if self._name == "cupy":
            raise BackendError("saving the RNG state is supported for host backends only")
        return self._gen.bit_generator.state

    @state.setter
    def state(self, value):
        if self._name == "cupy":
            raise BackendError("restoring the RNG state is supported for host backends only")
        self._gen.bit_generator.state = value


def _host_dtype(dtype):
    import numpy as np
    return np.dtype(dtype_name(dtype))


# ---------------------------------------------------------------- gap: row gather

def take_rows(xp, a, indices):
    """a[indices[i], :] for every i: (R, C), (N,) integers -> (N, C), row-major.

    ``xp.take`` where it is all the namespace has. NumPy's and CuPy's take first copy a whole array
    that is not row-major (an input-major weight, models/fused.py: 170 ms for SmolLM2's tied
    (49152, 576) embedding on the test VM, per lookup), their integer indexing reads the rows where
    they lie (3.6 ms for 512 tokens, 5 us for one).
    """
    if backend_name(xp) in ("numpy", "cupy"):
        return a[indices]
    return xp.take(a, indices, axis=0)


# ---------------------------------------------------------------- gap: scatter-add

def scatter_add(xp, num_rows: int, indices, values):
    """out (num_rows, C) with out[indices[i]] += values[i] for every i (repeats accumulate).

    indices: (N,) integers in [0, num_rows), values: (N, C). The embedding lookup's VJP.
    """
    if indices.ndim != 1 or values.ndim != 2 or indices.shape[0] != values.shape[0]:
        raise ValueError(f"scatter_add: expected indices (N,) and values (N, C), got shapes "
                         f"{tuple(indices.shape)} and {tuple(values.shape)}")
    name = backend_name(xp)
    out = xp.zeros((num_rows, values.shape[1]), dtype=values.dtype)
    if name == "numpy":
        import numpy as np
        np.add.at(out, indices, values)
        return out
    if name == "cupy":
        import cupyx
        cupyx.scatter_add(out, indices, values)
        return out
    # Portable: one-hot (n, num_rows) transposed times values, in row chunks so that the one-hot
    # matrix stays near _SCATTER_CHUNK elements. O(N * rows * C) work, fine for a referee backend.
    rows = xp.arange(num_rows, dtype=indices.dtype)[None, :]  # (1, num_rows)
    step = max(1, _SCATTER_CHUNK // max(num_rows, 1))
    n = indices.shape[0]
    for start in range(0, n, step):
        stop = min(start + step, n)  # out-of-bounds slice stops are not in the standard
        one_hot = xp.astype(indices[start:stop, None] == rows, values.dtype)  # (n, num_rows)
        out = out + xp.matmul(one_hot.mT, values[start:stop, ...])
    return out


_SCATTER_CHUNK = 1 << 22
