"""Muon (orthogonalized momentum) for hidden weight matrices, AdamW for all other parameters."""

import math

import torch

from pipeline.optim._base import CheckedOptimizer
from pipeline.optim._checks import (
    check_beta,
    check_choice,
    check_non_negative,
    check_positive_int,
)
from pipeline.optim.adam import adam_update

# Quintic Newton-Schulz coefficients (a, b, c) published with Muon (Jordan et al., 2024)
# and used by torch.optim.Muon (torch 2.14). They trade exact orthogonality (singular
# values end near 1, roughly within [0.5, 1.5]) for fewer iterations.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

LR_ADJUSTMENTS = ("original", "match_rms_adamw", "none")


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate the orthogonal polar factor ``U V^T`` of a 2-D ``matrix = U S V^T``.

    Runs ``steps`` quintic Newton-Schulz iterations ``X = a X + (b A + c A A) X`` with
    ``A = X X^T``, after scaling ``X`` to unit Frobenius norm so that every singular value
    starts in [0, 1]. Computes in float64 for float64 input and in float32 otherwise
    (torch.optim.Muon uses bfloat16).
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    compute_dtype = torch.float64 if matrix.dtype == torch.float64 else torch.float32
    x = matrix.to(compute_dtype)

    # Iterate on the wide orientation so that the Gram matrix A is the smaller one.
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / x.norm().clamp_min(1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if transposed:
        x = x.T
    return x.to(matrix.dtype)


def muon_lr_scale(shape: torch.Size, lr_adjustment: str) -> float:
    """Return the factor that multiplies ``lr`` for a Muon parameter of ``shape``.

    ``rows`` is ``shape[0]`` and ``cols`` the product of the other dimensions.
    The rules are those of ``torch.optim.Muon``'s ``adjust_lr_fn`` (torch 2.14).
    "original": ``sqrt(max(1, rows / cols))``, the rule of Muon's authors.
    "match_rms_adamw": ``0.2 * sqrt(max(rows, cols))``, which brings the update to about
    the root-mean-square size of an AdamW update, so that one ``lr`` suits both parts.
    "none": 1.
    """
    rows = shape[0]
    cols = math.prod(shape[1:])
    if lr_adjustment == "original":
        return math.sqrt(max(1.0, rows / cols))
    if lr_adjustment == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def _split_groups(params) -> list[dict]:
    """Give every group a ``use_muon`` flag, splitting groups without one by ``ndim``."""
    params = list(params)
    if not params:
        raise ValueError("Muon got an empty parameter list")
    if not isinstance(params[0], dict):
        params = [{"params": params}]

    groups = []
    for group in params:
        if "use_muon" in group:
            groups.append(dict(group))
            continue
        tensors = group["params"]
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        matrices = [tensor for tensor in tensors if tensor.ndim >= 2]
        others = [tensor for tensor in tensors if tensor.ndim < 2]
        if matrices:
            groups.append({**group, "params": matrices, "use_muon": True})
        if others:
            groups.append({**group, "params": others, "use_muon": False})
    return groups


class Muon(CheckedOptimizer):
    r"""Muon for weight matrices, AdamW for every other parameter, both with decoupled decay.

    Each parameter group carries ``use_muon``. A group given to the constructor without it
    is split: tensors with two or more dimensions use Muon and the rest (biases,
    normalization gains) use AdamW. A group added later through ``add_param_group``
    without the key uses AdamW for all its tensors. Muon's authors also send the input embedding and the classifier's output layer
    to AdamW: put those in a group with ``use_muon=False`` (``create_optimizer("muon", ...)``
    does that for the classifier). Convolution kernels are viewed as
    ``shape[0] x (product of the other dimensions)`` matrices.

    Muon part, for ``param`` with gradient ``grad`` (``momentum_buffer`` starts at 0)::

        momentum_buffer = momentum * momentum_buffer + (1 - momentum) * grad
        update = momentum * momentum_buffer + (1 - momentum) * grad    # if nesterov
        update = momentum_buffer                                       # otherwise
        param  = (1 - lr * weight_decay) * param
                 - lr * muon_lr_scale(shape) * orthogonalize(update)   # decoupled decay

    AdamW part: exactly ``pipeline.optim.AdamW`` with ``betas = adamw_betas``, ``eps`` and
    the same ``lr`` and ``weight_decay``.

    Unlike ``torch.optim.Muon`` (torch 2.14), which takes 2-D parameters only and runs the
    Newton-Schulz iteration in bfloat16, this class covers every parameter and iterates in
    float32 (float64 for float64 parameters).

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups
            (optionally with ``use_muon``).
        lr: learning rate of both parts, >= 0 (default 1e-3). Read from the group at every step.
        momentum: Muon momentum in [0, 1) (default 0.95).
        weight_decay: decoupled weight decay of both parts, >= 0 (default 0).
        nesterov: use the Nesterov form of the Muon update (default True).
        ns_steps: Newton-Schulz iterations, >= 1 (default 5).
        lr_adjustment: "match_rms_adamw" (default), "original" or "none"; see
            ``muon_lr_scale``.
        adamw_betas: ``(beta1, beta2)`` of the AdamW part, each in [0, 1)
            (default (0.9, 0.999)).
        eps: denominator term of the AdamW part, >= 0 (default 1e-8).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = 5,
        lr_adjustment: str = "match_rms_adamw",
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "lr_adjustment": lr_adjustment,
            "adamw_betas": tuple(adamw_betas),
            "eps": eps,
            "use_muon": False,
        }
        super().__init__(_split_groups(params), defaults)

    def _check_group(self, group: dict) -> None:
        check_non_negative("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_positive_int("ns_steps", group["ns_steps"])
        check_choice("lr_adjustment", group["lr_adjustment"], LR_ADJUSTMENTS)
        betas = group["adamw_betas"]
        if len(betas) != 2:
            raise ValueError(f"invalid adamw_betas={betas!r}: expected a pair (beta1, beta2)")
        check_beta("adamw_betas[0]", betas[0])
        check_beta("adamw_betas[1]", betas[1])
        check_non_negative("eps", group["eps"])

        if group["use_muon"]:
            tensors = group["params"]
            tensors = [tensors] if isinstance(tensors, torch.Tensor) else tensors
            for tensor in tensors:
                if tensor.ndim < 2:
                    raise ValueError(
                        f"invalid parameter of shape {tuple(tensor.shape)} in a group with "
                        "use_muon=True: Muon needs at least 2 dimensions; put it in a group "
                        "with use_muon=False"
                    )

    def _update(self, param, grad, state, group) -> None:
        lr = group["lr"]
        if not group["use_muon"]:
            beta1, beta2 = group["adamw_betas"]
            adam_update(
                param,
                grad,
                state,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                coupled_weight_decay=0.0,
                decoupled_weight_decay=group["weight_decay"],
            )
            return

        momentum = group["momentum"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        momentum_buffer = state["momentum_buffer"]
        momentum_buffer.mul_(momentum).add_(grad, alpha=1 - momentum)
        if group["nesterov"]:
            update = momentum_buffer.mul(momentum).add_(grad, alpha=1 - momentum)
        else:
            update = momentum_buffer

        orthogonal_update = orthogonalize(update.reshape(param.shape[0], -1), group["ns_steps"])
        scale = muon_lr_scale(param.shape, group["lr_adjustment"])
        if group["weight_decay"] != 0:
            param.mul_(1 - lr * group["weight_decay"])
        param.add_(orthogonal_update.reshape_as(param), alpha=-lr * scale)
