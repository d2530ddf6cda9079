"""Closed forms of the four theorems on the row sum of the last layer (NC0) under SGDW, SGD,
SignGDW and SignGD, simulators that run the project's optimizers on each setting, and the
table and figure that compare the two."""

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.optimizers import create_optimizer

logger = logging.getLogger(__name__)

# --- closed forms ------------------------------------------------------------------------
#
# Notation: W is the K x p last-layer weight, m_t = W_t^T 1_K its row sum (a p-vector) and
# alpha_t = ||m_t||^2 / K. Cross-entropy gradients with respect to W have zero row sum,
# because softmax outputs and one-hot labels both sum to 1, so m_t moves only through
# weight decay.


def row_sum_alpha(weight) -> float:
    """Return ``alpha = ||W^T 1_K||^2 / K`` for a K x p weight (numpy array or tensor)."""
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu()
    weight = np.asarray(weight, dtype=np.float64)
    row_sum = weight.sum(axis=0)
    return float(row_sum @ row_sum / weight.shape[0])


def sgdw_alpha(alpha0: float, lr: float, weight_decay: float, steps: int) -> np.ndarray:
    """Return Theorem 1's ``alpha_t = (1 - lr * weight_decay)^(2t) * alpha0`` for t = 0..steps.

    Holds for SGD with decoupled weight decay and any momentum (buffer starting at 0), a
    constant ``lr`` and any model whose last layer is linear and trained with cross-entropy.
    """
    t = np.arange(steps + 1)
    return alpha0 * (1.0 - lr * weight_decay) ** (2 * t)


def sgd_characteristic_roots(lr: float, momentum: float, weight_decay: float) -> tuple[complex, complex]:
    """Return the roots ``r+, r-`` of ``r^2 - (1 + momentum - lr * weight_decay) r + momentum``.

    These roots govern Theorem 2's row-sum recurrence under SGD with coupled weight decay.
    """
    trace = 1.0 + momentum - lr * weight_decay
    root_of_discriminant = np.sqrt(complex(trace * trace - 4.0 * momentum))
    return (trace + root_of_discriminant) / 2, (trace - root_of_discriminant) / 2


def sgd_spectral_radius(lr: float, momentum: float, weight_decay: float) -> float:
    """Return ``rho = max(|r+|, |r-|)``: Theorem 2's alpha_t decays like ``rho^(2t)``.

    ``rho < 1`` exactly when ``0 < lr * weight_decay < 2 * (1 + momentum)`` (for momentum in [0, 1)).
    """
    return float(max(abs(root) for root in sgd_characteristic_roots(lr, momentum, weight_decay)))


def sgd_row_sums(m0, lr: float, momentum: float, weight_decay: float, steps: int) -> np.ndarray:
    """Iterate Theorem 2's recurrence and return the row sums m_0..m_steps as rows.

    ``m_{t+1} = (1 + momentum - lr * weight_decay) m_t - momentum * m_{t-1}`` with
    ``m_1 = (1 - lr * weight_decay) m_0``. It follows from the update
    ``V = momentum V + grad + weight_decay W; W -= lr V`` (buffer starting at 0), because the
    row sum of ``grad`` is 0 and so that of ``V_{t+1}`` is ``(m_t - m_{t+1}) / lr``.
    """
    m0 = np.asarray(m0, dtype=np.float64)
    row_sums = np.empty((steps + 1, *m0.shape))
    row_sums[0] = m0
    if steps >= 1:
        row_sums[1] = (1.0 - lr * weight_decay) * m0
    trace = 1.0 + momentum - lr * weight_decay
    for t in range(1, steps):
        row_sums[t + 1] = trace * row_sums[t] - momentum * row_sums[t - 1]
    return row_sums


def alpha_from_row_sums(row_sums, num_classes: int) -> np.ndarray:
    """Return ``alpha_t = ||m_t||^2 / K`` for row sums stacked as rows (one per step)."""
    row_sums = np.asarray(row_sums, dtype=np.float64)
    return np.einsum("tp,tp->t", row_sums, row_sums) / num_classes


def simplex_etf(num_classes: int) -> np.ndarray:
    """Return ``M* = (I_K - J_K / K) / sqrt(K - 1)``, whose columns form a simplex ETF.

    Column n is the centred one-hot vector of class n scaled to unit Frobenius norm of the
    whole matrix. It is symmetric and ``M* 1 = 0``.
    """
    identity = np.eye(num_classes)
    return (identity - np.ones((num_classes, num_classes)) / num_classes) / math.sqrt(num_classes - 1)


def signgdw_weight_scale(lr: float, weight_decay: float, steps: int) -> np.ndarray:
    """Return Theorem 3's ``w_t = -(1 / weight_decay) (1 - (1 - lr * weight_decay)^t)``, t = 0..steps.

    SignGDW on the UFM with features fixed to ``M*`` and ``W_0 = 0`` gives
    ``W_t = w_t (J - 2I)``, from the scalar recurrence ``w_{t+1} = (1 - lr * weight_decay) w_t - lr``.
    """
    t = np.arange(steps + 1)
    return -(1.0 - (1.0 - lr * weight_decay) ** t) / weight_decay


def signgdw_alpha(num_classes: int, lr: float, weight_decay: float, steps: int) -> np.ndarray:
    """Return Theorem 3's ``alpha_t = (K - 2)^2 w_t^2`` for t = 0..steps.

    ``(J - 2I)^T 1 = (K - 2) 1``, so ``||W_t^T 1||^2 / K = (K - 2)^2 w_t^2``. It rises
    monotonically to ``signgdw_alpha_limit`` when ``0 < lr * weight_decay < 1``.
    """
    return (num_classes - 2) ** 2 * signgdw_weight_scale(lr, weight_decay, steps) ** 2


def signgdw_alpha_limit(num_classes: int, weight_decay: float) -> float:
    """Return Theorem 3's limit ``(K - 2)^2 / weight_decay^2`` of alpha_t."""
    return (num_classes - 2) ** 2 / weight_decay**2


def ufm_gradient_scale(num_classes: int, a: float, b: float) -> float:
    """Return ``psi`` with ``grad L(W) = psi (J - K I)`` at ``W = (a + b) I - b J`` on the UFM.

    With ``H = M*``, one sample per class and the mean cross-entropy, ``W H = (a + b) H``,
    so each sample's true-class logit exceeds the others by ``(a + b) / sqrt(K - 1)`` and
    ``psi = 1 / (K sqrt(K - 1)) / (exp((a + b) / sqrt(K - 1)) + K - 1)``.
    """
    root = math.sqrt(num_classes - 1)
    return 1.0 / (num_classes * root) / (math.exp((a + b) / root) + num_classes - 1)


def signgd_coefficients(num_classes: int, lrs, weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """Iterate Theorem 4's recurrence; return ``a_t`` and ``b_t`` for t = 0..len(lrs).

    SignGD with coupled decay on the UFM with ``H = M*`` and ``W_0 = 0`` keeps
    ``W_t = (a_t + b_t) I - b_t J``, and with ``psi_t = ufm_gradient_scale(K, a_t, b_t)``::

        a_{t+1} = a_t + lrs[t] * sign((K - 1) psi_t - weight_decay * a_t)
        b_{t+1} = b_t + lrs[t] * sign(psi_t - weight_decay * b_t)

    ``sign(0) = 0``, as in ``torch.sign``.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    a = np.zeros(len(lrs) + 1)
    b = np.zeros(len(lrs) + 1)
    for t, lr in enumerate(lrs):
        psi = ufm_gradient_scale(num_classes, a[t], b[t])
        a[t + 1] = a[t] + lr * np.sign((num_classes - 1) * psi - weight_decay * a[t])
        b[t + 1] = b[t] + lr * np.sign(psi - weight_decay * b[t])
    return a, b


def signgd_alpha(num_classes: int, lrs, weight_decay: float) -> np.ndarray:
    """Return Theorem 4's ``alpha_t = (a_t - (K - 1) b_t)^2`` for t = 0..len(lrs)."""
    a, b = signgd_coefficients(num_classes, lrs, weight_decay)
    return (a - (num_classes - 1) * b) ** 2


def step_decay_lrs(lr: float, steps: int, milestones, gamma: float = 0.1) -> np.ndarray:
    """Return the learning rate of each step 0..steps-1, multiplied by ``gamma`` at each milestone.

    Matches ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per optimizer step.
    """
    t = np.arange(steps)
    passed = np.zeros(steps, dtype=int)
    for milestone in milestones:
        passed += t >= milestone
    return lr * gamma**passed


# --- simulators ----------------------------------------------------------------------------


def _mlp_problem(num_classes: int, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Build a float64 two-layer tanh MLP and random data, both drawn from ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed)
    input_dim, hidden_dim, num_samples = 10, 32, 60
    inputs = torch.randn(num_samples, input_dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    # The default initialization of nn.Linear draws from the global RNG; fork it so the
    # caller's random state stays as it was. Every value is then redrawn from ``generator``.
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, num_classes)
        ).double()
    with torch.no_grad():
        for param in model.parameters():
            fan_in = param.shape[1] if param.ndim == 2 else hidden_dim  # biases: 1/sqrt(hidden_dim)
            draw = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            param.copy_(draw / math.sqrt(fan_in))
    return model, inputs, labels


def simulate_mlp_row_sums(
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    steps: int,
    *,
    num_classes: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Train a small MLP with full-batch cross-entropy and return the last layer's row sums.

    The optimizer ``optimizer`` (a ``create_optimizer`` name) updates every parameter with
    the given hyperparameters and a constant ``lr``. Row ``t`` of the result is
    ``W_t^T 1_K`` after ``t`` steps, t = 0..steps; everything runs in float64.
    """
    model, inputs, labels = _mlp_problem(num_classes, seed)
    last_layer = model[-1]
    optimizer_instance = create_optimizer(
        optimizer, model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    row_sums = np.empty((steps + 1, last_layer.weight.shape[1]))
    row_sums[0] = last_layer.weight.detach().sum(dim=0).numpy()
    for t in range(steps):
        optimizer_instance.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer_instance.step()
        row_sums[t + 1] = last_layer.weight.detach().sum(dim=0).numpy()
    return row_sums


def simulate_ufm_weights(optimizer: str, num_classes: int, lrs, weight_decay: float) -> np.ndarray:
    """Run ``optimizer`` on the UFM with features fixed to ``M*``; return W_0..W_T (T = len(lrs)).

    One sample per class (N = p = K): sample n has feature column n of ``M*`` and label n.
    ``W_0 = 0`` and only W is trained, on the mean cross-entropy, with learning rate
    ``lrs[t]`` at step t.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    features = torch.from_numpy(simplex_etf(num_classes))
    labels = torch.arange(num_classes)
    weight = torch.zeros(num_classes, num_classes, dtype=torch.float64, requires_grad=True)
    optimizer_instance = create_optimizer(optimizer, [weight], lr=float(lrs[0]), weight_decay=weight_decay)

    weights = np.zeros((len(lrs) + 1, num_classes, num_classes))
    for t, lr in enumerate(lrs):
        optimizer_instance.param_groups[0]["lr"] = float(lr)
        optimizer_instance.zero_grad()
        logits = (weight @ features).T
        nn.functional.cross_entropy(logits, labels).backward()
        optimizer_instance.step()
        weights[t + 1] = weight.detach().numpy()
    return weights


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one intra-op torch thread, then restore the previous count.

    The simulations here use tensors of a few hundred entries. On a 2-core CPU busy with
    other jobs, a second intra-op thread made such steps about 7 times slower, and on the
    idle machine it gave no measurable speedup (1.73 s against 1.76 s for one test run).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- comparison of closed forms and simulations ---------------------------------------------


@dataclass(frozen=True)
class TheoremSetting:
    """Optimizer, hyperparameters and length of one theorem's check."""

    theorem: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    steps: int
    num_classes: int
    lr_milestones: tuple[float, ...] = ()  # fractions of ``steps`` where lr is multiplied by 0.1

    def lrs(self) -> np.ndarray:
        milestones = [round(fraction * self.steps) for fraction in self.lr_milestones]
        return step_decay_lrs(self.lr, self.steps, milestones)

    def title(self) -> str:
        schedule = ", lr x0.1 at 1/3 and 2/3" if self.lr_milestones else ""
        return (
            f"Theorem {self.theorem}: {self.optimizer}, K={self.num_classes}, lr={self.lr:g}, "
            f"momentum={self.momentum:g}, weight decay={self.weight_decay:g}{schedule}"
        )


# Theorems 1 and 2 run a tanh MLP, Theorems 3 and 4 the UFM. Theorem 3's sign pattern needs
# the wrong-class softmax outputs, about exp(-gap) for the true-class logit gap
# 2 |w_t| / sqrt(K - 1) < 2 / (weight_decay sqrt(K - 1)), to stay above float64 underflow,
# which happens near gap 740 (at K = 4, weight_decay 0.001 breaks it after 1028 steps).
THEOREM_SETTINGS = (
    TheoremSetting(1, "sgdw", lr=0.05, momentum=0.9, weight_decay=0.05, steps=300, num_classes=5),
    TheoremSetting(2, "sgd", lr=0.05, momentum=0.9, weight_decay=0.01, steps=300, num_classes=5),
    TheoremSetting(3, "signgdw", lr=0.05, momentum=0.0, weight_decay=0.05, steps=1000, num_classes=4),
    TheoremSetting(
        4, "signgd", lr=0.01, momentum=0.0, weight_decay=0.05, steps=1500, num_classes=4,
        lr_milestones=(1 / 3, 2 / 3),
    ),
)


def simulate_theorem(setting: TheoremSetting) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(alpha_predicted, alpha_simulated)`` for t = 0..setting.steps."""
    if setting.theorem in (1, 2):
        row_sums = simulate_mlp_row_sums(
            setting.optimizer,
            setting.lr,
            setting.momentum,
            setting.weight_decay,
            setting.steps,
            num_classes=setting.num_classes,
        )
        simulated = alpha_from_row_sums(row_sums, setting.num_classes)
        if setting.theorem == 1:
            predicted = sgdw_alpha(simulated[0], setting.lr, setting.weight_decay, setting.steps)
        else:
            predicted_row_sums = sgd_row_sums(
                row_sums[0], setting.lr, setting.momentum, setting.weight_decay, setting.steps
            )
            predicted = alpha_from_row_sums(predicted_row_sums, setting.num_classes)
        return predicted, simulated

    lrs = setting.lrs()
    weights = simulate_ufm_weights(setting.optimizer, setting.num_classes, lrs, setting.weight_decay)
    simulated = np.array([row_sum_alpha(weight) for weight in weights])
    if setting.theorem == 3:
        if setting.lr_milestones:
            raise ValueError("Theorem 3's closed form needs a constant lr: set lr_milestones=()")
        predicted = signgdw_alpha(setting.num_classes, setting.lr, setting.weight_decay, setting.steps)
    elif setting.theorem == 4:
        predicted = signgd_alpha(setting.num_classes, lrs, setting.weight_decay)
    else:
        raise ValueError(f"invalid theorem={setting.theorem!r}: expected 1, 2, 3 or 4")
    return predicted, simulated


def relative_errors(predicted: np.ndarray, simulated: np.ndarray) -> np.ndarray:
    """Return ``|simulated - predicted| / max(|predicted|, 1e-12 * max_t |predicted|)``.

    The floor keeps steps where the closed form is 0 (alpha_0 of Theorem 3, the roundoff
    level that Theorem 4 reaches) from dividing by zero or by roundoff.
    """
    floor = 1e-12 * np.max(np.abs(predicted))
    return np.abs(simulated - predicted) / np.maximum(np.abs(predicted), floor)


def theory_table(steps: int | None = None, settings=THEOREM_SETTINGS) -> pd.DataFrame:
    """Run every theorem's simulation next to its closed form, one row per theorem and step.

    Columns: theorem, optimizer, step, alpha_predicted, alpha_simulated, relative_error.
    ``steps`` overrides each setting's length (Theorem 4's lr milestones scale with it).
    """
    frames = []
    for setting in settings:
        if steps is not None:
            setting = TheoremSetting(**{**setting.__dict__, "steps": steps})
        with one_torch_thread():
            predicted, simulated = simulate_theorem(setting)
        errors = relative_errors(predicted, simulated)
        logger.info(
            "theorem=%d optimizer=%s steps=%d max_relative_error=%.3g",
            setting.theorem,
            setting.optimizer,
            setting.steps,
            errors.max(),
        )
        frames.append(
            pd.DataFrame(
                {
                    "theorem": setting.theorem,
                    "optimizer": setting.optimizer,
                    "step": np.arange(setting.steps + 1),
                    "alpha_predicted": predicted,
                    "alpha_simulated": simulated,
                    "relative_error": errors,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# --- figure and files --------------------------------------------------------------------------


def _theorem_panel(rows: pd.DataFrame, setting: TheoremSetting, marker_count: int) -> alt.Chart:
    """Draw one theorem: the simulated alpha_t as a line, the closed form as points over it."""
    peak = rows["alpha_predicted"].max()
    every = max(1, len(rows) // marker_count)
    simulated = rows[["step", "alpha_simulated"]].rename(columns={"alpha_simulated": "alpha"})
    simulated["curve"] = "simulated optimizer"
    predicted = rows[["step", "alpha_predicted"]].iloc[::every].rename(columns={"alpha_predicted": "alpha"})
    predicted["curve"] = "closed form"

    # Theorem 3 starts at 0 and rises to a limit, so a linear axis shows it best. The others
    # decay over orders of magnitude, so they get a log axis, cut 9 decades below the peak
    # because Theorem 4 reaches exact zeros and roundoff-level values.
    if setting.theorem == 3:
        y_scale = alt.Scale(type="linear")
    else:
        positive = rows["alpha_predicted"][rows["alpha_predicted"] > 0]
        floor = max(peak * 1e-9, positive.min() / 3)
        simulated = simulated[simulated["alpha"] > floor]
        predicted = predicted[predicted["alpha"] > floor]
        y_scale = alt.Scale(type="log", domain=[floor, peak * 3], clamp=True)

    color = alt.Color("curve:N", title=None, scale=alt.Scale(domain=["simulated optimizer", "closed form"]))
    y = alt.Y("alpha:Q", title="alpha_t = ||W_t^T 1||^2 / K", scale=y_scale)
    x = alt.X("step:Q", title="step")
    line = alt.Chart(simulated).mark_line(strokeWidth=2).encode(x=x, y=y, color=color)
    points = alt.Chart(predicted).mark_point(size=30, filled=False).encode(x=x, y=y, color=color)
    layers = [line, points]
    if setting.theorem == 3:
        limit = pd.DataFrame({"alpha": [signgdw_alpha_limit(setting.num_classes, setting.weight_decay)]})
        layers.append(alt.Chart(limit).mark_rule(strokeDash=[6, 4], color="gray").encode(y="alpha:Q"))
    return alt.layer(*layers).properties(
        title=alt.TitleParams(setting.title(), fontSize=11), width=320, height=220
    )


def theory_figure(
    table: pd.DataFrame | None = None, settings=THEOREM_SETTINGS, marker_count: int = 40
) -> alt.Chart:
    """Plot alpha_t per theorem: simulation as lines, closed forms as points, a 2 x 2 grid.

    ``table`` is the output of ``theory_table`` (computed here when None) for ``settings``.
    Theorem 3's dashed line marks the limit ``(K - 2)^2 / weight_decay^2``. Log panels leave
    out values more than 9 decades below the peak. After its fall, Theorem 4's alpha_t
    alternates between such roundoff-level values and ``((K - 2) lr_t)^2`` at every step,
    so its line traces the upper level.
    """
    if table is None:
        table = theory_table(settings=settings)
    panels = []
    for setting in settings:
        rows = table[table["theorem"] == setting.theorem]
        # Rebuild the setting's title and scales for the steps actually in the table.
        setting = TheoremSetting(**{**setting.__dict__, "steps": int(rows["step"].max())})
        panels.append(_theorem_panel(rows, setting, marker_count))
    rows_of_panels = [alt.hconcat(*panels[i : i + 2]) for i in range(0, len(panels), 2)]
    return alt.vconcat(*rows_of_panels).properties(
        title="Row-sum metric alpha_t of the last layer: simulation against closed form"
    )


def write_theory_outputs(
    table_path, figure_png_path, figure_html_path, *, steps: int | None = None
) -> pd.DataFrame:
    """Compute the theory table and write it and its figure; return the table.

    Writes the table as CSV to ``table_path`` and as Parquet next to it (same name, suffix
    ``.parquet``), and the figure as PNG and HTML. Parent folders are created.
    """
    table_path = Path(table_path)
    figure_png_path = Path(figure_png_path)
    figure_html_path = Path(figure_html_path)
    for path in (table_path, figure_png_path, figure_html_path):
        path.parent.mkdir(parents=True, exist_ok=True)

    logger.info("theory outputs: computing table steps=%s", steps)
    table = theory_table(steps=steps)
    table.to_csv(table_path, index=False)
    parquet_path = table_path.with_suffix(".parquet")
    table.to_parquet(parquet_path, index=False)

    chart = theory_figure(table)
    chart.save(str(figure_png_path))
    chart.save(str(figure_html_path))
    logger.info(
        "theory outputs: wrote table=%s parquet=%s png=%s html=%s",
        table_path,
        parquet_path,
        figure_png_path,
        figure_html_path,
    )
    return table
