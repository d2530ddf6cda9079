"""Configuration: validate ``params.yaml`` and expand the selected preset into
one run configuration per training job of the grid."""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline.data import DATASETS
from pipeline.models import ARCHITECTURES


class ConfigError(ValueError):
    """Invalid ``params.yaml`` content; the message names the value and the fix."""


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one training job; saved with each of its outputs."""

    dataset: str
    architecture: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    width: float
    epochs: int
    batch_size: int
    eval_every: int
    train_per_class: int | None
    test_per_class: int | None
    valid_accuracy: float = 0.99
    optimizer_options: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """Relative path of the run's folder, readable and unique within a preset."""
        return (
            f"{self.dataset}/{self.architecture}/{self.optimizer}/"
            f"lr{format_number(self.lr)}-mom{format_number(self.momentum)}"
            f"-wd{format_number(self.weight_decay)}-seed{self.seed}{self.options_suffix()}"
        )

    def options_suffix(self) -> str:
        return "".join(f"-{key}{format_option(value)}" for key, value in sorted(self.optimizer_options.items()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        return cls(**values)


def format_number(value: float) -> str:
    """Format a hyperparameter for a path: ``0.0679``, ``5e-05``, ``10``."""
    return f"{float(value):.12g}"


def format_option(value: Any) -> str:
    return format_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def load_schema() -> dict:
    text = resources.files("pipeline").joinpath("params.schema.yaml").read_text()
    return yaml.safe_load(text)


def schema_path() -> str:
    """Path of the JSON schema of ``params.yaml`` (Snakemake validates against it too)."""
    return str(resources.files("pipeline").joinpath("params.schema.yaml"))


def describe_location(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def validate_params(params: Any, source: str = "params.yaml") -> dict:
    """Validate ``params`` against the schema and the known names; return a copy with defaults filled in."""
    if not isinstance(params, dict):
        raise ConfigError(f"invalid {source}: expected a mapping at the top level, found {type(params).__name__}")
    validator = jsonschema.Draft202012Validator(load_schema())
    # A misspelled key raises both "unexpected" and "required" errors at one path: report the misspelling.
    errors = sorted(
        validator.iter_errors(params), key=lambda e: ([str(p) for p in e.absolute_path], e.validator != "additionalProperties")
    )
    if errors:
        error = errors[0]
        raise ConfigError(f"invalid {source} at {describe_location(error)}: {error.message}; see pipeline/params.schema.yaml for the expected form")
    params = copy.deepcopy(params)
    data = params.setdefault("data", {})
    data.setdefault("root", "data")
    data.setdefault("fashion_mnist_dir", "/usr/share/datasets/fashion-mnist")
    data.setdefault("download", True)
    for name, preset in params["presets"].items():
        check_preset_names(name, preset, source)
    select_preset(params, params["preset"], source)
    return params


def check_preset_names(name: str, preset: dict, source: str) -> None:
    from pipeline.optimizers import OPTIMIZER_NAMES
    from pipeline.ufm import UFM_NAME  # here, because pipeline.ufm imports this module through pipeline.training

    datasets = (*DATASETS, UFM_NAME)
    architectures = (*ARCHITECTURES, UFM_NAME)
    for dataset in preset["datasets"]:
        if dataset not in datasets:
            raise ConfigError(f"unknown dataset {dataset!r} in preset {name!r} of {source}: expected one of {', '.join(datasets)}")
    for architecture in preset["architectures"]:
        if architecture not in architectures:
            raise ConfigError(
                f"unknown architecture {architecture!r} in preset {name!r} of {source}: expected one of {', '.join(architectures)}"
            )
    # The grid pairs every dataset with every architecture, and the UFM has no input data.
    for dataset, architecture in itertools.product(preset["datasets"], preset["architectures"]):
        if (dataset == UFM_NAME) != (architecture == UFM_NAME):
            raise ConfigError(
                f"invalid pair of dataset {dataset!r} and architecture {architecture!r} in preset {name!r} of {source}: "
                f"the unconstrained feature model runs only as dataset {UFM_NAME!r} with architecture {UFM_NAME!r}; "
                f"put it in a preset of its own with datasets: [{UFM_NAME}] and architectures: [{UFM_NAME}]"
            )
    for optimizer, grid in preset["optimizers"].items():
        if optimizer not in OPTIMIZER_NAMES:
            raise ConfigError(
                f"unknown optimizer {optimizer!r} in preset {name!r} of {source}: expected one of {', '.join(OPTIMIZER_NAMES)}"
            )
        for momentum in grid["momentum"]:
            if not 0 <= momentum < 1:
                raise ConfigError(f"invalid momentum {momentum!r} for {optimizer} in preset {name!r} of {source}: expected a value in [0, 1)")


def select_preset(params: dict, name: str, source: str = "params.yaml") -> dict:
    """Return the preset ``name``, or raise with the list of defined presets."""
    presets = params["presets"]
    if name not in presets:
        raise ConfigError(
            f"unknown preset {name!r}: {source} defines {', '.join(sorted(presets))}; "
            "pass one of them (snakemake --config preset=NAME, or --preset NAME on the command line)"
        )
    return presets[name]


def load_params(path: str | Path = "params.yaml", preset: str | None = None) -> dict:
    """Read and validate ``params.yaml``; ``preset`` overrides its ``preset`` key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing parameter file {path}: run from the repository root or pass its path")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(error, 'problem', error)}; fix the syntax there") from None
    if isinstance(params, dict) and preset is not None:
        params["preset"] = preset
    return validate_params(params, str(path))


def expand_grid(params: dict, preset_name: str | None = None) -> dict[str, RunConfig]:
    """Expand a preset into ``{run_id: RunConfig}`` in a stable order."""
    name = preset_name or params["preset"]
    preset = select_preset(params, name)
    runs: dict[str, RunConfig] = {}
    for dataset, architecture in itertools.product(preset["datasets"], preset["architectures"]):
        for optimizer, grid in preset["optimizers"].items():
            for lr, momentum, weight_decay, seed, options in itertools.product(
                grid["lr"], grid["momentum"], grid["weight_decay"], preset.get("seeds", [0]), expand_options(grid.get("options", {}))
            ):
                run = RunConfig(
                    dataset=dataset,
                    architecture=architecture,
                    optimizer=optimizer,
                    lr=float(lr),
                    momentum=float(momentum),
                    weight_decay=float(weight_decay),
                    seed=int(seed),
                    width=float(preset.get("width", 1.0)),
                    epochs=int(preset["epochs"]),
                    batch_size=int(preset.get("batch_size", 128)),
                    eval_every=int(preset.get("eval_every", 1)),
                    train_per_class=preset.get("train_per_class"),
                    test_per_class=preset.get("test_per_class"),
                    valid_accuracy=float(preset.get("valid_accuracy", 0.99)),
                    optimizer_options=options,
                )
                check_optimizer_settings(run, name)
                runs[run.run_id] = run
    return runs


def expand_options(options: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand optimizer options whose values are lists into one dict per combination.

    ``{"coupled_weight_decay": [0, 2.5e-4, 5e-4]}`` gives three runs, as the Adam-AdamW
    interpolation needs; scalar values are shared by every run.
    """
    keys = sorted(options)
    axes = [options[k] if isinstance(options[k], list) else [options[k]] for k in keys]
    return [dict(zip(keys, values)) for values in itertools.product(*axes)]


def check_optimizer_settings(run: RunConfig, preset_name: str) -> None:
    """Raise ``ConfigError`` if the optimizer rejects the run's hyperparameters, before any job starts."""
    import torch

    from pipeline.optimizers import create_optimizer

    probe = [torch.zeros(2, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
    try:
        create_optimizer(run.optimizer, probe, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay, **run.optimizer_options)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid settings for {run.optimizer} in preset {preset_name!r} ({run.run_id}): {error}") from None
