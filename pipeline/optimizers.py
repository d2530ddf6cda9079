"""Optimizers of the study by name: ``create_optimizer``, the list of names, and the
coupling table (where weight decay enters the update) that tables and figures use."""

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from pipeline.optim import SGD, SGDW, Adam, AdamMix, AdamW, Lion, Muon, Signum, SignumW
from pipeline.optim._checks import check_beta, check_non_negative

logger = logging.getLogger(__name__)

OPTIMIZER_NAMES = (
    "sgd",
    "sgdw",
    "adam",
    "adamw",
    "signum",
    "signumw",
    "adammix",
    "signgd",
    "signgdw",
    "adam0",
    "adamw0",
    "lion",
    "muon",
)

# Placement of weight decay per optimizer: "coupled" adds it to the gradient before momentum
# or normalization, "decoupled" shrinks the weights directly, "mixed" does both.
COUPLING = {
    "sgd": "coupled",
    "sgdw": "decoupled",
    "adam": "coupled",
    "adamw": "decoupled",
    "signum": "coupled",
    "signumw": "decoupled",
    "adammix": "mixed",
    "signgd": "coupled",
    "signgdw": "decoupled",
    "adam0": "coupled",
    "adamw0": "decoupled",
    "lion": "decoupled",
    "muon": "decoupled",
}

# Coupled and decoupled variant of each optimizer family in the main grid of Zhao et al.,
# "Optimizer choice matters for the emergence of neural collapse" (ICLR 2026).
PAPER_PAIRS = (("sgd", "sgdw"), ("adam", "adamw"), ("signum", "signumw"))

# Variants that fix every moving average to 0, so a non-zero momentum is a caller error.
_ZERO_MOMENTUM_BASE = {"signgd": "signum", "signgdw": "signumw", "adam0": "adam", "adamw0": "adamw"}

_EXCLUDE_1D = "exclude_1d_from_weight_decay"
_ADAM_OPTIONS = frozenset({_EXCLUDE_1D, "beta2", "eps"})
_OPTIONS = {
    "sgd": frozenset({_EXCLUDE_1D}),
    "sgdw": frozenset({_EXCLUDE_1D}),
    "adam": _ADAM_OPTIONS,
    "adamw": _ADAM_OPTIONS,
    "signum": frozenset({_EXCLUDE_1D}),
    "signumw": frozenset({_EXCLUDE_1D}),
    "adammix": _ADAM_OPTIONS | {"coupled_weight_decay"},
    "signgd": frozenset({_EXCLUDE_1D}),
    "signgdw": frozenset({_EXCLUDE_1D}),
    "adam0": frozenset({_EXCLUDE_1D, "eps"}),
    "adamw0": frozenset({_EXCLUDE_1D, "eps"}),
    "lion": frozenset({_EXCLUDE_1D, "beta2"}),
    "muon": _ADAM_OPTIONS | {"muon_exclude", "nesterov", "ns_steps", "lr_adjustment"},
}


def create_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    **options: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` (one of ``OPTIMIZER_NAMES``, case-insensitive).

    ``momentum`` is the SGD and Signum momentum, beta1 of the Adam family and Lion, and
    both the Muon momentum and the beta1 of Muon's AdamW part. It defaults to 0 for every
    optimizer, so Lion's published beta1 = 0.9 must be passed explicitly.
    ``weight_decay`` is the total decay, coupled or decoupled as ``COUPLING[name]`` records.
    Weight decay applies to every parameter, biases and normalization gains included.

    Options (each only where it applies; any other raises ``ValueError``):
        exclude_1d_from_weight_decay (all, default False): give parameters with fewer than
            2 dimensions (biases, BatchNorm and LayerNorm weights) weight decay 0.
        beta2 (adam, adamw, adammix, lion, muon): second moment rate in [0, 1); default
            0.999, except 0.99 for lion. For muon it belongs to the AdamW part.
        eps (Adam family, muon): denominator term >= 0, default 1e-8.
        coupled_weight_decay (adammix, required): coupled share in [0, weight_decay]; the
            decoupled share is ``weight_decay - coupled_weight_decay``.
        muon_exclude (muon): tensors with 2 or more dimensions to train with AdamW instead
            of Muon, such as embeddings and the classifier. Default None sends the last
            parameter with 2 or more dimensions to AdamW, which is the classifier of a model
            that registers its head last (the models of this project do); pass ``()`` to
            train every matrix with Muon.
        nesterov (muon, default True), ns_steps (muon, default 5), lr_adjustment (muon,
            default "match_rms_adamw"): see ``pipeline.optim.Muon``.

    ``signgd``, ``signgdw`` are ``signum``, ``signumw`` with momentum 0, and ``adam0``,
    ``adamw0`` are ``adam``, ``adamw`` with beta1 = beta2 = 0; they reject a non-zero
    momentum. ``params`` may be tensors or torch parameter-group dicts.

    Raises:
        ValueError: for an unknown name or option, or a hyperparameter outside its range.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _OPTIONS:
        raise ValueError(f"unknown optimizer name {name!r}: expected one of {', '.join(OPTIMIZER_NAMES)}")
    unknown = sorted(set(options) - _OPTIONS[key])
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for optimizer {key!r}: "
            f"valid options are {', '.join(sorted(_OPTIONS[key]))}"
        )

    lr = check_non_negative("lr", lr)
    momentum = check_beta("momentum", momentum)
    weight_decay = check_non_negative("weight_decay", weight_decay)
    if key in _ZERO_MOMENTUM_BASE and momentum != 0:
        raise ValueError(
            f"invalid momentum={momentum!r} for {key!r}: expected 0, because {key!r} fixes "
            f"every moving average to 0; use {_ZERO_MOMENTUM_BASE[key]!r} for momentum > 0"
        )

    groups = _as_groups(params)
    if key == "muon":
        groups = _split_muon_groups(groups, options.get("muon_exclude"))
    if options.get(_EXCLUDE_1D, False):
        decay_keys = ("weight_decay", "coupled_weight_decay") if key == "adammix" else ("weight_decay",)
        groups = _exclude_1d_from_decay(groups, decay_keys)

    optimizer = _BUILDERS[key](groups, lr, momentum, weight_decay, options)
    logger.debug(
        "created optimizer name=%s class=%s lr=%g momentum=%g weight_decay=%g groups=%d",
        key,
        type(optimizer).__name__,
        lr,
        momentum,
        weight_decay,
        len(optimizer.param_groups),
    )
    return optimizer


def _as_groups(params) -> list[dict[str, Any]]:
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or of dicts, not a single tensor")
    items = list(params)
    if not items:
        raise ValueError("params is empty: expected at least one tensor to optimize")
    if not isinstance(items[0], dict):
        return [{"params": items}]

    groups = []
    for group in items:
        tensors = group["params"]
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        groups.append({**group, "params": tensors})
    return groups


def _exclude_1d_from_decay(groups: list[dict], decay_keys: tuple[str, ...]) -> list[dict]:
    """Move tensors with fewer than 2 dimensions of each group to a copy with no decay."""
    split = []
    for group in groups:
        matrices = [tensor for tensor in group["params"] if tensor.ndim >= 2]
        vectors = [tensor for tensor in group["params"] if tensor.ndim < 2]
        if matrices:
            split.append({**group, "params": matrices})
        if vectors:
            split.append({**group, "params": vectors, **{key: 0.0 for key in decay_keys}})
    return split


def _split_muon_groups(groups: list[dict], muon_exclude) -> list[dict]:
    """Flag each tensor ``use_muon``: 2 or more dimensions and not excluded."""
    all_tensors = [tensor for group in groups for tensor in group["params"]]
    if muon_exclude is None:
        matrices = [tensor for tensor in all_tensors if tensor.ndim >= 2]
        excluded = [matrices[-1]] if matrices else []
        if matrices:
            logger.info(
                "muon: training the last matrix parameter, shape=%s, with AdamW as the "
                "classifier; pass muon_exclude to choose other tensors",
                tuple(matrices[-1].shape),
            )
    else:
        excluded = list(muon_exclude)
    excluded_ids = {id(tensor) for tensor in excluded}
    known_ids = {id(tensor) for tensor in all_tensors}
    for tensor in excluded:
        if id(tensor) not in known_ids:
            raise ValueError(
                f"invalid muon_exclude: a tensor of shape {tuple(tensor.shape)} is not among "
                "params; pass the same tensor objects that params contains"
            )

    split = []
    for group in groups:
        if "use_muon" in group:
            split.append(group)
            continue
        muon_part = [t for t in group["params"] if t.ndim >= 2 and id(t) not in excluded_ids]
        adamw_part = [t for t in group["params"] if t.ndim < 2 or id(t) in excluded_ids]
        if muon_part:
            split.append({**group, "params": muon_part, "use_muon": True})
        if adamw_part:
            split.append({**group, "params": adamw_part, "use_muon": False})
    return split


def _build_adammix(groups, lr, momentum, weight_decay, options):
    if "coupled_weight_decay" not in options:
        raise ValueError(
            "missing option coupled_weight_decay for 'adammix': pass the coupled share, "
            f"a value in [0, weight_decay={weight_decay!r}]"
        )
    coupled = check_non_negative("coupled_weight_decay", options["coupled_weight_decay"])
    if coupled > weight_decay:
        raise ValueError(
            f"invalid coupled_weight_decay={coupled!r}: expected a value in "
            f"[0, weight_decay={weight_decay!r}], because the coupled share cannot exceed "
            "the total weight decay"
        )
    return AdamMix(
        groups,
        lr=lr,
        betas=(momentum, options.get("beta2", 0.999)),
        eps=options.get("eps", 1e-8),
        weight_decay=weight_decay,
        coupled_weight_decay=coupled,
    )


def _build_muon(groups, lr, momentum, weight_decay, options):
    return Muon(
        groups,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=options.get("nesterov", True),
        ns_steps=options.get("ns_steps", 5),
        lr_adjustment=options.get("lr_adjustment", "match_rms_adamw"),
        adamw_betas=(momentum, options.get("beta2", 0.999)),
        eps=options.get("eps", 1e-8),
    )


def _adam_builder(cls, zero_betas: bool) -> Callable:
    def build(groups, lr, momentum, weight_decay, options):
        betas = (0.0, 0.0) if zero_betas else (momentum, options.get("beta2", 0.999))
        return cls(groups, lr=lr, betas=betas, eps=options.get("eps", 1e-8), weight_decay=weight_decay)

    return build


def _momentum_builder(cls) -> Callable:
    def build(groups, lr, momentum, weight_decay, options):
        return cls(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)

    return build


def _build_lion(groups, lr, momentum, weight_decay, options):
    return Lion(groups, lr=lr, betas=(momentum, options.get("beta2", 0.99)), weight_decay=weight_decay)


_BUILDERS = {
    "sgd": _momentum_builder(SGD),
    "sgdw": _momentum_builder(SGDW),
    "adam": _adam_builder(Adam, zero_betas=False),
    "adamw": _adam_builder(AdamW, zero_betas=False),
    "signum": _momentum_builder(Signum),
    "signumw": _momentum_builder(SignumW),
    "adammix": _build_adammix,
    "signgd": _momentum_builder(Signum),
    "signgdw": _momentum_builder(SignumW),
    "adam0": _adam_builder(Adam, zero_betas=True),
    "adamw0": _adam_builder(AdamW, zero_betas=True),
    "lion": _build_lion,
    "muon": _build_muon,
}
