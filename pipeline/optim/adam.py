"""Adam with coupled (Adam), decoupled (AdamW) or mixed (AdamMix) weight decay."""

import math

import torch

from pipeline.optim._base import CheckedOptimizer
from pipeline.optim._checks import check_beta, check_non_negative


def adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    coupled_weight_decay: float,
    decoupled_weight_decay: float,
) -> None:
    """Apply one bias-corrected Adam step to ``param`` in place.

    The coupled decay uses ``param`` before the decoupled decay shrinks it. With
    ``beta1 = beta2 = 0`` both bias corrections are 1 and the step is
    ``lr * g / (|g| + eps)``, a smoothed sign step.
    """
    if coupled_weight_decay != 0:
        grad = grad.add(param, alpha=coupled_weight_decay)
    if decoupled_weight_decay != 0:
        param.mul_(1 - lr * decoupled_weight_decay)

    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["step"] += 1
    step = state["step"]
    exp_avg = state["exp_avg"]
    exp_avg_sq = state["exp_avg_sq"]

    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denominator = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    param.addcdiv_(exp_avg, denominator, value=-lr / bias_correction1)


class _AdamBase(CheckedOptimizer):
    def _check_group(self, group: dict) -> None:
        check_non_negative("lr", group["lr"])
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"invalid betas={betas!r}: expected a pair (beta1, beta2)")
        beta1, beta2 = betas
        check_beta("beta1", beta1)
        check_beta("beta2", beta2)
        check_non_negative("eps", group["eps"])
        check_non_negative("weight_decay", group["weight_decay"])


class Adam(_AdamBase):
    r"""Adam with coupled weight decay (L2 regularization inside the moments).

    For every parameter ``param`` with gradient ``grad``, step ``step = 1, 2, ...``::

        g          = grad + weight_decay * param                     # coupled decay
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * g            # both moments start at 0
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        m_hat      = exp_avg    / (1 - beta1 ** step)
        v_hat      = exp_avg_sq / (1 - beta2 ** step)
        param      = param - lr * m_hat / (sqrt(v_hat) + eps)

    This is ``torch.optim.Adam`` without amsgrad. Because the decay passes through the
    adaptive denominator, large weights are decayed less than under AdamW.

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate, >= 0 (default 1e-3). Read from the group at every step.
        betas: ``(beta1, beta2)``, each in [0, 1) (default (0.9, 0.999)).
        eps: term added to the denominator, >= 0 (default 1e-8). With eps = 0 a zero
            gradient gives 0 / 0 = NaN.
        weight_decay: coupled weight decay, >= 0 (default 0).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _update(self, param, grad, state, group) -> None:
        beta1, beta2 = group["betas"]
        adam_update(
            param,
            grad,
            state,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            coupled_weight_decay=group["weight_decay"],
            decoupled_weight_decay=0.0,
        )


class AdamW(_AdamBase):
    r"""Adam with decoupled weight decay.

    For every parameter ``param`` with gradient ``grad``, step ``step = 1, 2, ...``::

        param      = (1 - lr * weight_decay) * param                 # decoupled decay
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * grad         # both moments start at 0
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
        m_hat      = exp_avg    / (1 - beta1 ** step)
        v_hat      = exp_avg_sq / (1 - beta2 ** step)
        param      = param - lr * m_hat / (sqrt(v_hat) + eps)

    This is ``torch.optim.AdamW`` without amsgrad, except that the default weight decay
    is 0 here (torch uses 0.01). The decay factor uses the scheduled ``lr``.

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate, >= 0 (default 1e-3). Read from the group at every step.
        betas: ``(beta1, beta2)``, each in [0, 1) (default (0.9, 0.999)).
        eps: term added to the denominator, >= 0 (default 1e-8).
        weight_decay: decoupled weight decay, >= 0 (default 0).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _update(self, param, grad, state, group) -> None:
        beta1, beta2 = group["betas"]
        adam_update(
            param,
            grad,
            state,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            coupled_weight_decay=0.0,
            decoupled_weight_decay=group["weight_decay"],
        )


class AdamMix(_AdamBase):
    r"""Adam with a coupled and a decoupled share of one total weight decay.

    With ``decoupled = weight_decay - coupled_weight_decay``, for every parameter
    ``param`` with gradient ``grad``, step ``step = 1, 2, ...``::

        g          = grad + coupled_weight_decay * param             # coupled share (old param)
        param      = (1 - lr * decoupled) * param                    # decoupled share
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        param      = param - lr * (exp_avg / (1 - beta1 ** step))
                             / (sqrt(exp_avg_sq / (1 - beta2 ** step)) + eps)

    ``coupled_weight_decay = weight_decay`` is Adam and ``coupled_weight_decay = 0`` is
    AdamW, step for step. This interpolates Adam and AdamW at a fixed total decay.

    Args:
        params: iterable of tensors to optimize, or of dicts that define parameter groups.
        lr: learning rate, >= 0 (default 1e-3). Read from the group at every step.
        betas: ``(beta1, beta2)``, each in [0, 1) (default (0.9, 0.999)).
        eps: term added to the denominator, >= 0 (default 1e-8).
        weight_decay: total weight decay, >= 0 (default 0).
        coupled_weight_decay: coupled share, in [0, weight_decay] (default 0).
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        coupled_weight_decay=0.0,
    ):
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "coupled_weight_decay": coupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        coupled = check_non_negative("coupled_weight_decay", group["coupled_weight_decay"])
        if coupled > group["weight_decay"]:
            raise ValueError(
                f"invalid coupled_weight_decay={coupled!r}: expected a value in "
                f"[0, weight_decay={group['weight_decay']!r}], because the coupled share "
                "cannot exceed the total weight decay"
            )

    def _update(self, param, grad, state, group) -> None:
        beta1, beta2 = group["betas"]
        coupled = group["coupled_weight_decay"]
        adam_update(
            param,
            grad,
            state,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            coupled_weight_decay=coupled,
            decoupled_weight_decay=group["weight_decay"] - coupled,
        )
