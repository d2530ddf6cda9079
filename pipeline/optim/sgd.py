"""SGD with heavy-ball momentum and coupled (SGD) or decoupled (SGDW) weight decay."""

import torch

from pipeline.optim._base import CheckedOptimizer
from pipeline.optim._checks import check_beta, check_non_negative


def sgd_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict,
    *,
    lr: float,
    momentum: float,
    coupled_weight_decay: float,
    decoupled_weight_decay: float,
) -> None:
    """Apply one SGD step to ``param`` in place, with either or both kinds of weight decay.

    The momentum buffer starts at zero, so its first value is the first gradient, as in
    ``torch.optim.SGD`` with dampening 0. No buffer is kept when ``momentum`` is 0.
    """
    if coupled_weight_decay != 0:
        grad = grad.add(param, alpha=coupled_weight_decay)

    direction = grad
    if momentum != 0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        momentum_buffer = state["momentum_buffer"]
        momentum_buffer.mul_(momentum).add_(grad)
        direction = momentum_buffer

    if decoupled_weight_decay != 0:
        param.mul_(1 - lr * decoupled_weight_decay)
    param.add_(direction, alpha=-lr)


class _SGDBase(CheckedOptimizer):
    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        check_non_negative("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        check_non_negative("weight_decay", group["weight_decay"])


class SGD(_SGDBase):
    r"""SGD with heavy-ball momentum and coupled weight decay (L2 regularization).

    For every parameter ``param`` with gradient ``grad``, each step computes::

        g               = grad + weight_decay * param          # coupled: decay enters the gradient
        momentum_buffer = momentum * momentum_buffer + g       # momentum_buffer starts at 0
        param           = param - lr * momentum_buffer

    This is ``torch.optim.SGD`` with dampening 0 and no Nesterov momentum. Because the
    decay term passes through the momentum buffer, the row sum of the last layer follows a
    second-order recurrence (Theorem 2 in ``docs/optimizers.md``).

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate, >= 0 (default 1e-3). Read from the group at every step, so
            ``torch.optim.lr_scheduler`` schedules apply.
        momentum: momentum factor in [0, 1) (default 0, plain SGD).
        weight_decay: coupled weight decay, >= 0 (default 0).
    """

    def _update(self, param, grad, state, group) -> None:
        sgd_update(
            param,
            grad,
            state,
            lr=group["lr"],
            momentum=group["momentum"],
            coupled_weight_decay=group["weight_decay"],
            decoupled_weight_decay=0.0,
        )


class SGDW(_SGDBase):
    r"""SGD with heavy-ball momentum and decoupled weight decay.

    For every parameter ``param`` with gradient ``grad``, each step computes::

        momentum_buffer = momentum * momentum_buffer + grad           # momentum_buffer starts at 0
        param           = (1 - lr * weight_decay) * param - lr * momentum_buffer   # decoupled decay

    The decay never enters the momentum buffer, so the row sum of the last layer shrinks
    by exactly ``1 - lr * weight_decay`` per step (Theorem 1 in ``docs/optimizers.md``).
    The decay factor uses the scheduled ``lr`` of the current step.

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate, >= 0 (default 1e-3). Read from the group at every step.
        momentum: momentum factor in [0, 1) (default 0).
        weight_decay: decoupled weight decay, >= 0 (default 0).
    """

    def _update(self, param, grad, state, group) -> None:
        sgd_update(
            param,
            grad,
            state,
            lr=group["lr"],
            momentum=group["momentum"],
            coupled_weight_decay=0.0,
            decoupled_weight_decay=group["weight_decay"],
        )
