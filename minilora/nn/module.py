"""Module and Parameter: the containers every layer and model is built from.

A Module finds its parameters and submodules by walking its attributes (in definition order), so
a layer only assigns ``self.weight = Parameter(...)``. Names are dotted paths, as in PyTorch and
Hugging Face checkpoints: ``model.layers.0.self_attn.q_proj.weight``.
"""
from __future__ import annotations

from typing import Iterator

from .. import backend
from ..errors import StateDictError
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer may update (requires_grad=True by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"


def _array_of(value):
    return value.data if isinstance(value, Tensor) else value


class Module:
    """Base class of layers and models. Subclasses define ``forward``."""

    training: bool = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ traversal
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """Every module below (and including) self, with its dotted path; shared ones once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = list(module.named_children())
            for child_name, child in reversed(children):
                stack.append((f"{name}.{child_name}" if name else child_name, child))

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs; a tied parameter appears under its first name only."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter):
                    if remove_duplicate and id(value) in seen:
                        continue
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Every Parameter once (tied ones once), plus the frozen weights modules keep packed.

        A 4-bit weight is a uint8 array, not a Parameter, yet it holds d_out * d_in parameters: they
        count (``packed_parameter_count``), as PEFT's get_nb_trainable_parameters counts a
        bitsandbytes Params4bit as two parameters per byte. So a model has one total in any format.
        """
        count = sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)
        if not trainable_only:
            count += sum(m.packed_parameter_count() for m in self.modules())
        return count

    def packed_parameter_count(self) -> int:
        """Parameters this module itself stores outside Parameter objects (0; Linear4bit: its weight's)."""
        return 0

    # ------------------------------------------------------------ submodules by name
    def get_submodule(self, path: str) -> "Module":
        module = self
        for part in path.split(".") if path else []:
            child = getattr(module, part, None)
            if not isinstance(child, Module):
                raise KeyError(f"no submodule {path!r} ({part!r} not found in {type(module).__name__})")
            module = child
        return module

    def set_submodule(self, path: str, new: "Module") -> None:
        """Replace the submodule at dotted ``path`` by ``new``."""
        parent_path, _, leaf = path.rpartition(".")
        parent = self.get_submodule(parent_path)
        if not isinstance(getattr(parent, leaf, None), Module):
            raise KeyError(f"no submodule {path!r} to replace")
        setattr(parent, leaf, new)

    # ------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def freeze(self) -> "Module":
        for p in self.parameters():
            p.requires_grad = False
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """name -> array for every parameter (tied ones under their first name)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True, copy: bool = True) -> None:
        """Copy arrays into parameters by name, checking every key and shape before changing any.

        strict: missing and unexpected keys are errors. The error lists each offending key with the
        expected and found shapes. A tied parameter may be given under any of its names (Hugging Face
        checkpoints list both ``embed_tokens.weight`` and ``lm_head.weight``). Values may be arrays of
        any backend or Tensors; they are copied into the parameter's backend and dtype. copy=False
        lets a parameter share an array that already has its backend and dtype (a loader handing over
        freshly read weights saves a second copy of the model that way).
        """
        aliases: dict[int, list[str]] = {}
        params: dict[int, Parameter] = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
            params[id(p)] = p
        known = {name for names in aliases.values() for name in names}
        problems, updates = [], []
        for key, p in params.items():
            given = [name for name in aliases[key] if name in state]
            if not given:
                if strict:
                    problems.append(f"missing key {aliases[key][0]!r} (expected shape {p.shape})")
                continue
            for name in given:
                found = tuple(_array_of(state[name]).shape)
                if found != p.shape:
                    problems.append(f"key {name!r}: expected shape {p.shape}, found {found}")
            updates.append((p, _array_of(state[given[0]])))
        if strict:
            problems += [f"unexpected key {name!r} (shape {tuple(_array_of(v).shape)})"
                         for name, v in state.items() if name not in known]
        if problems:
            raise StateDictError("load_state_dict: " + "; ".join(problems))
        for p, value in updates:
            p.data = backend.to_namespace(value, p.xp, p.dtype, copy=copy)

    def astype(self, dtype) -> "Module":
        """Cast every floating parameter to ``dtype`` in place."""
        for p in self.parameters():
            if p.xp.isdtype(p.dtype, "real floating"):
                p.data = p.xp.astype(p.data, dtype)
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self.named_children():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + ("\n)" if len(lines) > 1 else ")")


class ModuleList(Module):
    """An indexable list of modules, named 0, 1, 2, ... in dotted paths."""

    def __init__(self, modules=()):
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __len__(self):
        return sum(1 for _ in self.named_children())

    def __getitem__(self, i: int) -> Module:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"ModuleList index {i} out of range for {n} modules")
        return getattr(self, str(i % n))

    def __iter__(self):
        return iter(self.children())

    def append(self, module: Module) -> None:
        setattr(self, str(len(self)), module)
