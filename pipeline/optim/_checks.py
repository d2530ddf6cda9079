"""Hyperparameter validation shared by the optimizers in ``pipeline.optim``.

Each check raises ``ValueError`` that names the argument, its value and the valid range.
"""

import math
from numbers import Real


def _require_real(name: str, value: object, valid_range: str) -> float:
    # bool is a Real subclass, but True as a learning rate is a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"invalid {name}={value!r}: expected a finite number in {valid_range}")
    return float(value)


def check_non_negative(name: str, value: object) -> float:
    """Check that ``value`` is a finite number >= 0 and return it as a float."""
    number = _require_real(name, value, "[0, inf)")
    if number < 0:
        raise ValueError(f"invalid {name}={value!r}: expected a value in [0, inf)")
    return number


def check_beta(name: str, value: object) -> float:
    """Check that ``value`` lies in [0, 1) and return it as a float."""
    number = _require_real(name, value, "[0, 1)")
    if not 0.0 <= number < 1.0:
        raise ValueError(f"invalid {name}={value!r}: expected a value in [0, 1)")
    return number


def check_positive_int(name: str, value: object) -> int:
    """Check that ``value`` is an int >= 1 and return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"invalid {name}={value!r}: expected an integer >= 1")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of ``choices`` and return it."""
    if value not in choices:
        raise ValueError(f"invalid {name}={value!r}: expected one of {', '.join(choices)}")
    return value  # type: ignore[return-value]
