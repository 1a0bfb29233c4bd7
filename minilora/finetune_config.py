"""FinetuneConfig: every setting of the main job, validated before any heavy work starts.

Loading a model takes seconds, so a bad --r or a missing data file is reported first. The CLI maps
its flags onto these fields; a JSON or YAML file (--config) may set them too, flags overriding it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

from . import backend
from .distributed.communicator import MODES as DISTRIBUTED_MODES
from .errors import ConfigError, MissingFileError

METHODS = ("lora", "qlora", "adalora")
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                 "lm_head")


@dataclass
class FinetuneConfig:
    model: str = "smollm2-135m"      # "smollm2-135m", a .gguf file, an HF folder, or "tiny" (small random model)
    data: str = "dates"              # a generated task (dates, units, sort, reverse) or a folder with *.jsonl
    method: str = "lora"             # lora | qlora | adalora
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "q_proj,v_proj"   # comma-separated module names, or "all-linear"
    rslora: bool = False
    loraplus_ratio: float | None = None
    steps: int = 60
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 5
    max_seq_len: int = 128
    max_grad_norm: float | None = None  # None: 0.3 for QLoRA (the QLoRA recipe), else 1.0
    grad_checkpoint: bool = False
    backend: str = "numpy"
    seed: int = 0
    out: str = "runs/finetune"
    resume: bool = False
    save_every: int = 0
    eval_examples: int = 50
    n_train: int = 2000
    target_r: int = 4                # AdaLoRA: final average rank (r is its initial rank)
    quant_type: str = "nf4"          # QLoRA: nf4 | fp4
    progress: bool = True
    distributed: str = "auto"        # auto (MPI when mpiexec started several processes) | mpi | none

    def target_list(self):
        return "all-linear" if self.targets.strip() == "all-linear" else \
            [t.strip() for t in self.targets.split(",") if t.strip()]

    def validate(self) -> "FinetuneConfig":
        """Check every field's type and range; raise ConfigError naming the field."""
        for name in ("model", "data", "method", "targets", "backend", "out", "quant_type"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("rslora", "grad_checkpoint", "resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("r", "steps", "batch_size", "max_seq_len", "eval_examples", "n_train", "target_r"):
            positive_int(name)
        if isinstance(self.save_every, bool) or not isinstance(self.save_every, int) or self.save_every < 0:
            raise ConfigError(f"save_every must be an integer >= 0, got {self.save_every!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        for name in ("alpha", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.distributed not in DISTRIBUTED_MODES:
            raise ConfigError(f"distributed must be one of {', '.join(DISTRIBUTED_MODES)}, got {self.distributed!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("loraplus_ratio", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not (value > 0 and math.isfinite(value))):
                raise ConfigError(f"{name} must be a finite number > 0 (or unset), got {value!r}")
        if self.method == "adalora" and self.target_r > self.r:
            raise ConfigError(f"target_r ({self.target_r}) must not exceed r ({self.r}) for AdaLoRA")
        if self.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"quant_type must be nf4 or fp4, got {self.quant_type!r}")
        targets = self.target_list()
        if not targets:
            raise ConfigError("targets is empty: give module names such as q_proj,v_proj or all-linear")
        if isinstance(targets, list):
            unknown = [t for t in targets if t not in LLAMA_MODULES]
            if unknown:
                raise ConfigError(f"targets {unknown} match no module of a Llama model; available module names: "
                                  f"{', '.join(LLAMA_MODULES)} (or all-linear)")
        if self.backend not in backend.BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(backend.BACKENDS)}, got {self.backend!r}")
        if self.backend == "cupy" and not backend.is_available("cupy"):
            raise ConfigError("backend cupy needs a CUDA GPU and the cupy package, and none answers here; "
                              "use --backend numpy")
        self._validate_sources()
        return self

    def _validate_sources(self):
        from .data.jsonl import check_jsonl_folder
        from .data.tasks import TASKS
        from .io.pretrained import DEFAULT_MODEL_NAMES
        if self.data not in TASKS:
            for split in ("train.jsonl", "valid.jsonl"):
                if not os.path.isfile(os.path.join(self.data, split)):
                    raise ConfigError(f"data {self.data!r} is neither a task ({', '.join(sorted(TASKS))}) nor a "
                                      f"folder with train.jsonl and valid.jsonl ({split} not found)")
            check_jsonl_folder(self.data)  # a bad line: DataError naming the file and the line
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"out {self.out!r} exists and is not a folder")
        if self.model != "tiny" and self.model.lower() not in DEFAULT_MODEL_NAMES and not os.path.exists(self.model):
            raise ConfigError(f"model {self.model!r} not found: use smollm2-135m, a .gguf file, a checkpoint "
                              "folder or tiny")
        if self.resume:
            from .checkpoint import checkpoint_path
            if not os.path.isfile(checkpoint_path(self.out)):
                raise ConfigError(f"--resume: no checkpoint at {checkpoint_path(self.out)}")
            from .io.safetensors_io import read_safetensors_metadata
            if read_safetensors_metadata(checkpoint_path(self.out)).get("format") != "minilora-checkpoint":
                raise ConfigError(f"--resume: {checkpoint_path(self.out)} is not a minilora checkpoint")

    @classmethod
    def from_file(cls, path: str, overrides: dict | None = None) -> "FinetuneConfig":
        """Fields from a JSON or YAML file, then ``overrides``; unknown keys warn and are ignored."""
        import warnings
        if not os.path.isfile(path):
            raise MissingFileError(path, "config file")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError as exc:
                raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or use JSON") from exc
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of field names to values")
        known = {f.name for f in fields(cls)}
        data = {str(k).replace("-", "_"): v for k, v in data.items()}  # "batch-size" as on the command line
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{path}: ignoring unknown config keys {unknown}", stacklevel=2)
        data = {k: v for k, v in data.items() if k in known}
        data.update(overrides or {})
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
