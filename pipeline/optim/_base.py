"""Common base of the optimizers in ``pipeline.optim``: group validation and the step loop."""

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


class CheckedOptimizer(Optimizer):
    """Optimizer that validates every parameter group and updates one parameter at a time.

    Subclasses implement ``_check_group`` (raise ``ValueError`` for invalid hyperparameters)
    and ``_update`` (the arithmetic for one parameter). Groups added later through
    ``add_param_group`` are validated too, after the defaults are filled in.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        self._check_group(merged)
        super().add_param_group(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every parameter that has a gradient; return the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        name = type(self).__name__
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError(f"{name} does not support sparse gradients; use torch.optim.SparseAdam")
                if torch.is_complex(param):
                    raise ValueError(f"{name} does not support complex parameters")
                self._update(param, param.grad, self.state[param], group)
        return loss
