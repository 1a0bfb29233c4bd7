"""FinetuneConfig: every setting of the main job, validated before any heavy work starts.

Loading a model takes seconds, so a bad --r or a missing data file is reported first. The CLI maps
its flags onto these fields; a JSON or YAML file (--config) may set them too, flags overriding it.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, fields

from . import backend
from .checkpoint import checkpoint_path
from .data.jsonl import check_jsonl_folder
from .data.tasks import TASKS
from .distributed.communicator import MODES as DISTRIBUTED_MODES
from .errors import ConfigError, MissingFileError
from .io.files import read_json
from .io.pretrained import DEFAULT_MODEL_NAMES
from .io.safetensors_io import read_safetensors_metadata

METHODS = ("lora", "qlora", "adalora")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "linear", "constant")
DEFAULT_STEPS = 60  # when neither steps nor epochs is given
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
    dora: bool = False               # DoRA (lora, qlora): a magnitude per output row
    init: str = "default"            # adapter init: default | gaussian | pissa | pissa_niter_K | olora | loftq (qlora)
    loraplus_ratio: float | None = None
    steps: int | None = None         # optimizer steps (default 60); or give epochs instead
    epochs: float | None = None      # passes over the training set: steps = ceil(epochs * n / (batch * accumulation))
    batch_size: int = 8              # examples per micro-batch
    grad_accumulation_steps: int = 1  # micro-batches per optimizer step (effective batch = batch_size * this)
    lr: float = 2e-3
    lr_schedule: str = "cosine"      # cosine | linear | constant, after a linear warmup
    warmup_steps: int = 5
    optimizer: str = "adamw"         # adamw | sgd (momentum 0.9)
    weight_decay: float = 0.0
    mask_prompt: bool = True         # False: train on the prompt tokens too
    max_seq_len: int = 128
    max_grad_norm: float | None = None  # None: 0.3 for QLoRA (the QLoRA recipe), else 1.0
    grad_checkpoint: bool = False
    backend: str = "numpy"
    seed: int = 0
    out: str = "runs/finetune"
    resume: bool = False
    save_every: int = 0
    eval_examples: int = 50          # held-out examples for exact match (a task: also its validation set)
    eval_every: int | None = None    # validation loss every N steps (default: about 10 times a run; 0: at the end)
    val_batches: int | None = None   # cap the validation set at this many batches (default: all of it)
    test: bool = False               # report the loss on the data folder's test.jsonl at the end
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
        for name in ("model", "data", "method", "targets", "backend", "out", "quant_type", "optimizer", "lr_schedule"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("rslora", "dora", "grad_checkpoint", "resume", "progress", "mask_prompt", "test"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("r", "batch_size", "grad_accumulation_steps", "max_seq_len", "eval_examples", "n_train",
                     "target_r"):
            positive_int(name)
        for name in ("steps", "val_batches"):
            if getattr(self, name) is not None:
                positive_int(name)

        def non_negative_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("save_every", "warmup_steps"):
            non_negative_int(name)
        if self.eval_every is not None:
            non_negative_int("eval_every")
        for name in ("alpha", "lr") + (("epochs",) if self.epochs is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(f"give steps ({self.steps}) or epochs ({self.epochs}), not both")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (wd >= 0 and math.isfinite(wd)):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {wd!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
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
        self._validate_variant()
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

    def lora_init(self):
        """init as LoraConfig.init_lora_weights ("default" is True, PEFT's default)."""
        return True if self.init == "default" else self.init

    def _validate_variant(self):
        from .lora.init_methods import parse_init
        if not isinstance(self.init, str) or self.init in ("True", "False"):
            raise ConfigError(f"init must be default, gaussian, pissa, pissa_niter_K, olora or loftq, got {self.init!r}")
        try:
            parse_init(self.lora_init())
        except ConfigError:
            raise ConfigError(f"init must be default, gaussian, pissa, pissa_niter_K, olora or loftq, got "
                              f"{self.init!r}") from None
        if self.method == "adalora" and (self.dora or self.init != "default"):
            raise ConfigError("--dora and --init apply to --method lora or qlora, not adalora")
        if self.init == "loftq" and (self.method != "qlora" or self.quant_type != "nf4"):
            raise ConfigError("init loftq initializes for an NF4 base: use it with --method qlora --quant-type nf4")

    def _validate_sources(self):
        if self.data not in TASKS:
            for split in ("train.jsonl", "valid.jsonl"):
                if not os.path.isfile(os.path.join(self.data, split)):
                    raise ConfigError(f"data {self.data!r} is neither a task ({', '.join(sorted(TASKS))}) nor a "
                                      f"folder with train.jsonl and valid.jsonl ({split} not found)")
            check_jsonl_folder(self.data, test=self.test)  # a bad line: DataError naming the file and the line
        elif self.test:
            raise ConfigError(f"--test needs a data folder with test.jsonl; {self.data!r} is a generated task")
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"out {self.out!r} exists and is not a folder")
        if self.model != "tiny" and self.model.lower() not in DEFAULT_MODEL_NAMES and not os.path.exists(self.model):
            raise ConfigError(f"model {self.model!r} not found: use smollm2-135m, a .gguf file, a checkpoint "
                              "folder or tiny")
        if self.resume:
            if not os.path.isfile(checkpoint_path(self.out)):
                raise ConfigError(f"--resume: no checkpoint at {checkpoint_path(self.out)}")
            if read_safetensors_metadata(checkpoint_path(self.out)).get("format") != "minilora-checkpoint":
                raise ConfigError(f"--resume: {checkpoint_path(self.out)} is not a minilora checkpoint")

    @classmethod
    def from_file(cls, path: str, overrides: dict | None = None) -> "FinetuneConfig":
        """Fields from a JSON or YAML file, then ``overrides``; unknown keys warn and are ignored."""
        if not path.endswith((".yaml", ".yml")):
            data = read_json(path, "config file")
        else:
            if not os.path.isfile(path):
                raise MissingFileError(path, "config file")
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
            try:
                import yaml  # imported here: PyYAML is optional, only YAML configs need it
            except ImportError as exc:
                raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or use JSON") from exc
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from None
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

    def total_steps(self, n_train: int | None = None) -> int:
        """Optimizer steps of the run: steps, or epochs over n_train examples (rounded up), or 60."""
        if self.steps is not None:
            return self.steps
        if self.epochs is None or n_train is None:
            return DEFAULT_STEPS
        return max(1, math.ceil(self.epochs * n_train / (self.batch_size * self.grad_accumulation_steps) - 1e-9))

    def evaluation_interval(self, steps: int) -> int:
        """Steps between validation losses: eval_every, or about 10 evaluations in a run of ``steps``."""
        return self.eval_every if self.eval_every is not None else max(1, round(steps / 10))

    def to_dict(self) -> dict:
        return asdict(self)
