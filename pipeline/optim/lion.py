"""Lion (evolved sign momentum) with decoupled weight decay."""

import torch

from pipeline.optim._base import CheckedOptimizer
from pipeline.optim._checks import check_beta, check_non_negative


class Lion(CheckedOptimizer):
    r"""Lion: a sign step on an interpolation of momentum and gradient, decoupled decay.

    The rule of Chen et al., "Symbolic Discovery of Optimization Algorithms" (NeurIPS 2023).
    For every parameter ``param`` with gradient ``grad``, each step computes::

        update  = beta1 * exp_avg + (1 - beta1) * grad         # exp_avg starts at 0
        param   = (1 - lr * weight_decay) * param - lr * sign(update)   # decoupled decay
        exp_avg = beta2 * exp_avg + (1 - beta2) * grad

    The sign step uses ``beta1`` and the stored average uses ``beta2``, so the stored
    average is smoother than the step direction. With ``beta1 = 0`` the step is SignGDW.
    Every entry moves by ``lr`` at every step, so Lion needs a smaller learning rate
    than AdamW.

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate, >= 0 (default 1e-4). Read from the group at every step.
        betas: ``(beta1, beta2)``, each in [0, 1) (default (0.9, 0.99), the published values).
        weight_decay: decoupled weight decay, >= 0 (default 0).
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        defaults = {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        check_non_negative("lr", group["lr"])
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"invalid betas={betas!r}: expected a pair (beta1, beta2)")
        check_beta("beta1", betas[0])
        check_beta("beta2", betas[1])
        check_non_negative("weight_decay", group["weight_decay"])

    def _update(self, param, grad, state, group) -> None:
        lr = group["lr"]
        beta1, beta2 = group["betas"]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        exp_avg = state["exp_avg"]

        update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1)
        if group["weight_decay"] != 0:
            param.mul_(1 - lr * group["weight_decay"])
        param.add_(torch.sign(update), alpha=-lr)

        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
