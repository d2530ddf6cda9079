"""Signum (sign of momentum) with coupled (Signum) or decoupled (SignumW) weight decay.

With momentum 0 these are SignGD and SignGDW, the optimizers of Theorems 3 and 4 in
``docs/optimizers.md``.
"""

import torch

from pipeline.optim._base import CheckedOptimizer
from pipeline.optim._checks import check_beta, check_non_negative


def signum_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict,
    *,
    lr: float,
    momentum: float,
    coupled_weight_decay: float,
    decoupled_weight_decay: float,
) -> None:
    """Apply one Signum step to ``param`` in place, with either or both kinds of weight decay.

    ``torch.sign(0) = 0``, so an entry whose momentum is exactly 0 gets no sign step
    (only the decoupled decay, if any). No buffer is kept when ``momentum`` is 0.
    """
    if coupled_weight_decay != 0:
        grad = grad.add(param, alpha=coupled_weight_decay)

    direction = grad
    if momentum != 0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        momentum_buffer = state["momentum_buffer"]
        momentum_buffer.mul_(momentum).add_(grad, alpha=1 - momentum)
        direction = momentum_buffer

    if decoupled_weight_decay != 0:
        param.mul_(1 - lr * decoupled_weight_decay)
    param.add_(torch.sign(direction), alpha=-lr)


class _SignumBase(CheckedOptimizer):
    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        check_non_negative("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        check_non_negative("weight_decay", group["weight_decay"])


class Signum(_SignumBase):
    r"""Signum: sign descent on an exponential moving average, with coupled weight decay.

    For every parameter ``param`` with gradient ``grad``, each step computes::

        g               = grad + weight_decay * param                       # coupled decay
        momentum_buffer = momentum * momentum_buffer + (1 - momentum) * g   # starts at 0
        param           = param - lr * sign(momentum_buffer)

    With ``momentum = 0`` this is SignGD with coupled decay. The decay can flip the sign
    of ``momentum_buffer`` once ``weight_decay * |param|`` outweighs the gradient, which
    is what lets the row sum of the last layer return to 0 (Theorem 4).

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate (size of every sign step), >= 0 (default 1e-3). Read from the
            group at every step.
        momentum: momentum factor in [0, 1) (default 0).
        weight_decay: coupled weight decay, >= 0 (default 0).
    """

    def _update(self, param, grad, state, group) -> None:
        signum_update(
            param,
            grad,
            state,
            lr=group["lr"],
            momentum=group["momentum"],
            coupled_weight_decay=group["weight_decay"],
            decoupled_weight_decay=0.0,
        )


class SignumW(_SignumBase):
    r"""Signum with decoupled weight decay.

    For every parameter ``param`` with gradient ``grad``, each step computes::

        momentum_buffer = momentum * momentum_buffer + (1 - momentum) * grad   # starts at 0
        param           = (1 - lr * weight_decay) * param - lr * sign(momentum_buffer)

    With ``momentum = 0`` this is SignGDW. The decay never changes the sign step, so on
    the unconstrained feature model the weights converge to ``-sign(grad) / weight_decay``
    and the row sum of the last layer stays away from 0 (Theorem 3).

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate (size of every sign step), >= 0 (default 1e-3). Read from the
            group at every step.
        momentum: momentum factor in [0, 1) (default 0).
        weight_decay: decoupled weight decay, >= 0 (default 0).
    """

    def _update(self, param, grad, state, group) -> None:
        signum_update(
            param,
            grad,
            state,
            lr=group["lr"],
            momentum=group["momentum"],
            coupled_weight_decay=0.0,
            decoupled_weight_decay=group["weight_decay"],
        )
