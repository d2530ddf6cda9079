"""Tests of pipeline.optimizers: agreement with torch, exact hand-checked steps, options,
state_dict round trips and input validation."""

import copy
import math

import pytest
import torch
from torch import nn

from pipeline.optim import Muon
from pipeline.optim.muon import orthogonalize
from pipeline.optimizers import COUPLING, OPTIMIZER_NAMES, PAPER_PAIRS, create_optimizer


# The tensors here are tiny: one intra-op thread is faster on a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


ZERO_MOMENTUM_NAMES = ("signgd", "signgdw", "adam0", "adamw0")


def _options_for(name: str, weight_decay: float) -> dict:
    return {"coupled_weight_decay": weight_decay / 2} if name == "adammix" else {}


def _momentum_for(name: str) -> float:
    return 0.0 if name in ZERO_MOMENTUM_NAMES else 0.9


def _small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).double()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(12, 1, 6, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (12,), generator=generator)
    return inputs, labels


def _train(model: nn.Module, optimizer, batch, steps: int) -> list[float]:
    inputs, labels = batch
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _max_parameter_difference(first: nn.Module, second: nn.Module) -> float:
    return max(
        (a - b).abs().max().item() for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )


def _run_pair(batch, make_first, make_second, steps=50) -> float:
    first = _small_convnet()
    second = copy.deepcopy(first)
    _train(first, make_first(first.parameters()), batch, steps)
    _train(second, make_second(second.parameters()), batch, steps)
    return _max_parameter_difference(first, second)


# --- agreement with torch.optim -------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4, 0.05])
def test_sgd_matches_torch_sgd(batch, momentum, weight_decay):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer("sgd", p, lr=0.05, momentum=momentum, weight_decay=weight_decay),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum, weight_decay=weight_decay, foreach=False),
    )
    assert difference < 1e-6


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4, 0.05])
def test_adam_matches_torch_adam(batch, momentum, weight_decay):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer("adam", p, lr=1e-2, momentum=momentum, weight_decay=weight_decay),
        lambda p: torch.optim.Adam(
            p, lr=1e-2, betas=(momentum, 0.999), weight_decay=weight_decay, foreach=False
        ),
    )
    assert difference < 1e-6


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4, 0.5])
def test_adamw_matches_torch_adamw(batch, momentum, weight_decay):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer("adamw", p, lr=1e-2, momentum=momentum, weight_decay=weight_decay),
        lambda p: torch.optim.AdamW(
            p, lr=1e-2, betas=(momentum, 0.999), weight_decay=weight_decay, foreach=False
        ),
    )
    assert difference < 1e-6


def test_adam_options_beta2_eps_match_torch(batch):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer("adamw", p, lr=1e-2, momentum=0.8, weight_decay=0.1, beta2=0.9, eps=1e-6),
        lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, foreach=False),
    )
    assert difference < 1e-6


def test_adam0_matches_torch_adam_zero_betas(batch):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer("adamw0", p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.0, 0.0), weight_decay=0.1, foreach=False),
    )
    assert difference < 1e-6


# --- agreement between variants -------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_adammix_without_decoupled_part_is_adam(batch, momentum):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer(
            "adammix", p, lr=1e-2, momentum=momentum, weight_decay=0.05, coupled_weight_decay=0.05
        ),
        lambda p: create_optimizer("adam", p, lr=1e-2, momentum=momentum, weight_decay=0.05),
    )
    assert difference == 0.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_adammix_without_coupled_part_is_adamw(batch, momentum):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer(
            "adammix", p, lr=1e-2, momentum=momentum, weight_decay=0.5, coupled_weight_decay=0.0
        ),
        lambda p: create_optimizer("adamw", p, lr=1e-2, momentum=momentum, weight_decay=0.5),
    )
    assert difference == 0.0


@pytest.mark.parametrize(("sign_name", "signum_name"), [("signgd", "signum"), ("signgdw", "signumw")])
def test_signgd_is_signum_without_momentum(batch, sign_name, signum_name):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer(sign_name, p, lr=1e-2, weight_decay=0.05),
        lambda p: create_optimizer(signum_name, p, lr=1e-2, momentum=0.0, weight_decay=0.05),
    )
    assert difference == 0.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgdw_without_weight_decay_is_sgd(batch, momentum):
    difference = _run_pair(
        batch,
        lambda p: create_optimizer("sgdw", p, lr=0.05, momentum=momentum, weight_decay=0.0),
        lambda p: create_optimizer("sgd", p, lr=0.05, momentum=momentum, weight_decay=0.0),
    )
    assert difference == 0.0


def test_sgdw_without_momentum_equals_sgd(batch):
    # Without momentum, lr * (grad + wd * param) is the same step either way, up to roundoff.
    difference = _run_pair(
        batch,
        lambda p: create_optimizer("sgdw", p, lr=0.05, weight_decay=0.05),
        lambda p: create_optimizer("sgd", p, lr=0.05, weight_decay=0.05),
    )
    assert difference < 1e-12


# --- hand-checked single steps --------------------------------------------------------

def _step_with_gradients(name, start, gradients, **kwargs):
    """Run one step per gradient on a copy of ``start``; return the parameter after each."""
    param = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = create_optimizer(name, [param], **kwargs)
    values = []
    for gradient in gradients:
        param.grad = torch.tensor(gradient, dtype=torch.float64)
        optimizer.step()
        values.append(param.detach().clone())
    return values


def test_signum_two_steps_by_hand():
    # lr 0.1, momentum 0.5, coupled decay 0.5 on param [1, -2, 0].
    # step 1: g = [0.2, 0.5, -0.3] + 0.5 * [1, -2, 0] = [0.7, -0.5, -0.3];
    #   m = 0.5 * g = [0.35, -0.25, -0.15]; param = [1, -2, 0] - 0.1 * [1, -1, -1] = [0.9, -1.9, 0.1].
    # step 2: g = [-1, 0.8, 0] + 0.5 * [0.9, -1.9, 0.1] = [-0.55, -0.15, 0.05];
    #   m = 0.5 * m + 0.5 * g = [-0.1, -0.2, -0.05]; param = [0.9, -1.9, 0.1] + 0.1 = [1.0, -1.8, 0.2].
    first, second = _step_with_gradients(
        "signum", [1.0, -2.0, 0.0], [[0.2, 0.5, -0.3], [-1.0, 0.8, 0.0]],
        lr=0.1, momentum=0.5, weight_decay=0.5,
    )
    torch.testing.assert_close(first, torch.tensor([0.9, -1.9, 0.1], dtype=torch.float64))
    torch.testing.assert_close(second, torch.tensor([1.0, -1.8, 0.2], dtype=torch.float64))


def test_signumw_two_steps_by_hand():
    # lr 0.1, momentum 0.5, decoupled decay 0.5, so the decay factor is 1 - 0.05 = 0.95.
    # step 1: m = 0.5 * [0.2, 0.5, -0.3]; param = 0.95 * [1, -2, 0] - 0.1 * [1, 1, -1]
    #   = [0.85, -2.0, 0.1].
    # step 2: m = [0.05, 0.125, -0.075] + 0.5 * [-1, 0.8, 0] = [-0.45, 0.525, -0.075];
    #   param = 0.95 * [0.85, -2.0, 0.1] - 0.1 * [-1, 1, -1] = [0.9075, -2.0, 0.195].
    first, second = _step_with_gradients(
        "signumw", [1.0, -2.0, 0.0], [[0.2, 0.5, -0.3], [-1.0, 0.8, 0.0]],
        lr=0.1, momentum=0.5, weight_decay=0.5,
    )
    torch.testing.assert_close(first, torch.tensor([0.85, -2.0, 0.1], dtype=torch.float64))
    torch.testing.assert_close(second, torch.tensor([0.9075, -2.0, 0.195], dtype=torch.float64))


def test_signum_zero_gradient_gives_no_step():
    (value,) = _step_with_gradients("signgd", [0.0, 3.0], [[0.0, 0.0]], lr=0.1)
    torch.testing.assert_close(value, torch.tensor([0.0, 3.0], dtype=torch.float64))


def test_lion_two_steps_by_hand():
    # lr 0.1, beta1 0.5, beta2 0.75, decoupled decay 0.5 (factor 0.95), exp_avg starts at 0.
    # step 1: update = 0.5 * [0.2, -0.4] -> sign [1, -1]; param = 0.95 * [1, 1] - 0.1 * [1, -1]
    #   = [0.85, 1.05]; exp_avg = 0.25 * [0.2, -0.4] = [0.05, -0.1].
    # step 2: update = 0.5 * [0.05, -0.1] + 0.5 * [-0.08, -0.3] = [-0.015, -0.2] -> sign [-1, -1];
    #   param = 0.95 * [0.85, 1.05] + 0.1 = [0.9075, 1.0975].
    first, second = _step_with_gradients(
        "lion", [1.0, 1.0], [[0.2, -0.4], [-0.08, -0.3]],
        lr=0.1, momentum=0.5, weight_decay=0.5, beta2=0.75,
    )
    torch.testing.assert_close(first, torch.tensor([0.85, 1.05], dtype=torch.float64))
    torch.testing.assert_close(second, torch.tensor([0.9075, 1.0975], dtype=torch.float64))


def test_lion_stores_beta2_average():
    param = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    optimizer = create_optimizer("lion", [param], lr=0.1, momentum=0.5, beta2=0.75)
    param.grad = torch.tensor([0.2, -0.4], dtype=torch.float64)
    optimizer.step()
    torch.testing.assert_close(
        optimizer.state[param]["exp_avg"], torch.tensor([0.05, -0.1], dtype=torch.float64)
    )


def test_adam0_step_is_normalized_gradient():
    # beta1 = beta2 = 0: the step is lr * grad / (|grad| + eps), and 0 where grad is 0.
    (value,) = _step_with_gradients(
        "adam0", [1.0, -1.0], [[0.5, 0.0]], lr=0.1, weight_decay=0.0, eps=1e-8
    )
    expected = torch.tensor([1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -1.0], dtype=torch.float64)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-15)


def test_sgdw_decay_follows_scheduled_lr():
    param = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = create_optimizer("sgdw", [param], lr=0.1, weight_decay=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    expected = 1.0
    for lr in (0.1, 0.05, 0.025):
        param.grad = torch.zeros(3, dtype=torch.float64)
        optimizer.step()
        scheduler.step()
        expected *= 1 - lr * 0.5
        assert param[0].item() == pytest.approx(expected, rel=1e-15)


# --- options ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_exclude_1d_leaves_biases_undecayed(name):
    model = _small_convnet()
    optimizer = create_optimizer(
        name,
        model.parameters(),
        lr=0.1,
        momentum=_momentum_for(name),
        weight_decay=0.5,
        exclude_1d_from_weight_decay=True,
        **_options_for(name, 0.5),
    )
    before = [param.detach().clone() for param in model.parameters()]
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()

    for old, param in zip(before, model.parameters(), strict=True):
        if param.ndim < 2:
            assert torch.equal(param, old), f"{name}: 1-D parameter of shape {tuple(param.shape)} changed"
    weight = model[0].weight
    assert not torch.equal(weight, before[0]), f"{name}: conv weight was not decayed"


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_weight_decay_reaches_biases_by_default(name):
    model = _small_convnet()
    optimizer = create_optimizer(
        name, model.parameters(), lr=0.1, momentum=_momentum_for(name), weight_decay=0.5,
        **_options_for(name, 0.5),
    )
    bias_before = model[5].bias.detach().clone()
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    assert not torch.equal(model[5].bias, bias_before)


def test_param_groups_keep_their_own_lr():
    first = torch.ones(2, dtype=torch.float64, requires_grad=True)
    second = torch.ones(2, dtype=torch.float64, requires_grad=True)
    optimizer = create_optimizer("sgd", [{"params": [first]}, {"params": [second], "lr": 0.5}], lr=0.1)
    first.grad = torch.ones(2, dtype=torch.float64)
    second.grad = torch.ones(2, dtype=torch.float64)
    optimizer.step()
    assert first[0].item() == pytest.approx(0.9)
    assert second[0].item() == pytest.approx(0.5)


def test_muon_sends_classifier_and_vectors_to_adamw():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = create_optimizer("muon", model.parameters(), lr=0.01, momentum=0.9)
    muon_ids = {id(p) for group in optimizer.param_groups if group["use_muon"] for p in group["params"]}
    assert muon_ids == {id(model[0].weight), id(model[2].weight)}


def test_muon_exclude_option_chooses_adamw_tensors():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = create_optimizer("muon", model.parameters(), lr=0.01, muon_exclude=[model[0].weight])
    muon_ids = {id(p) for group in optimizer.param_groups if group["use_muon"] for p in group["params"]}
    assert muon_ids == {id(model[2].weight)}


def test_muon_adamw_part_equals_adamw(batch):
    # One step only: afterwards the gradients of the two models differ through the matrices.
    model = _small_convnet()
    reference = copy.deepcopy(model)
    muon = create_optimizer("muon", model.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1, muon_exclude=())
    adamw = create_optimizer("adamw", reference.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1)
    _train(model, muon, batch, 1)
    _train(reference, adamw, batch, 1)
    for param, reference_param in zip(model.parameters(), reference.parameters(), strict=True):
        if param.ndim < 2:
            assert torch.equal(param, reference_param)
        else:
            assert not torch.allclose(param, reference_param)


def test_orthogonalize_brings_singular_values_near_one():
    generator = torch.Generator().manual_seed(3)
    for shape in [(8, 20), (20, 8), (10, 10)]:
        matrix = torch.randn(*shape, generator=generator, dtype=torch.float64)
        singular_values = torch.linalg.svdvals(orthogonalize(matrix, steps=5))
        assert singular_values.min().item() > 0.5, shape
        assert singular_values.max().item() < 1.5, shape


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_muon_matrix_step_matches_torch_muon():
    # torch.optim.Muon iterates in bfloat16, this implementation in float64, so the
    # updates agree only to bfloat16 precision.
    generator = torch.Generator().manual_seed(4)
    start = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    gradients = [torch.randn(6, 10, generator=generator, dtype=torch.float64) for _ in range(3)]
    ours = start.clone().requires_grad_()
    theirs = start.clone().requires_grad_()
    ours_optimizer = Muon([{"params": [ours], "use_muon": True}], lr=0.02, momentum=0.95,
                          weight_decay=0.1, lr_adjustment="original")
    theirs_optimizer = torch.optim.Muon([theirs], lr=0.02, momentum=0.95, weight_decay=0.1)
    for gradient in gradients:
        ours.grad = gradient.clone()
        theirs.grad = gradient.clone()
        ours_optimizer.step()
        theirs_optimizer.step()
    moved = (theirs - start).abs().max().item()
    assert (ours - theirs).abs().max().item() < 0.05 * moved


# --- state_dict, loss and tables -------------------------------------------------------

@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_state_dict_round_trip_reproduces_run(batch, name):
    kwargs = {"lr": 1e-2, "momentum": _momentum_for(name), "weight_decay": 0.05, **_options_for(name, 0.05)}
    model = _small_convnet()
    optimizer = create_optimizer(name, model.parameters(), **kwargs)
    _train(model, optimizer, batch, 5)
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    _train(model, optimizer, batch, 5)

    restored = _small_convnet()
    restored.load_state_dict(saved_model)
    restored_optimizer = create_optimizer(name, restored.parameters(), **kwargs)
    restored_optimizer.load_state_dict(saved_optimizer)
    _train(restored, restored_optimizer, batch, 5)
    assert _max_parameter_difference(model, restored) == 0.0


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_loss_falls_for_every_optimizer(batch, name):
    model = _small_convnet()
    lr = {"sgd": 0.1, "sgdw": 0.1, "muon": 0.02}.get(name, 0.01)
    optimizer = create_optimizer(
        name, model.parameters(), lr=lr, momentum=_momentum_for(name), weight_decay=5e-4,
        **_options_for(name, 5e-4),
    )
    losses = _train(model, optimizer, batch, 30)
    assert losses[-1] < 0.7 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_state_keys_are_named(batch, name):
    model = _small_convnet()
    optimizer = create_optimizer(
        name, model.parameters(), lr=1e-2, momentum=_momentum_for(name), **_options_for(name, 0.0)
    )
    _train(model, optimizer, batch, 1)
    keys = set().union(*(set(state) for state in optimizer.state.values()))
    assert keys <= {"momentum_buffer", "exp_avg", "exp_avg_sq", "step"}


def test_tables_cover_every_name():
    assert set(COUPLING) == set(OPTIMIZER_NAMES)
    assert set(COUPLING.values()) <= {"coupled", "decoupled", "mixed", "none"}
    for coupled, decoupled in PAPER_PAIRS:
        assert COUPLING[coupled] == "coupled"
        assert COUPLING[decoupled] == "decoupled"


def test_name_is_case_insensitive():
    param = torch.zeros(2, requires_grad=True)
    assert type(create_optimizer("AdamW", [param], lr=1e-3)).__name__ == "AdamW"


# --- validation ------------------------------------------------------------------------

def _param():
    return [torch.zeros(2, requires_grad=True)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "sgd", "lr": -0.1}, r"invalid lr=-0.1: expected a value in \[0, inf\)"),
        ({"name": "sgd", "lr": math.nan}, r"invalid lr=nan: expected a finite number in \[0, inf\)"),
        ({"name": "sgd", "lr": 0.1, "momentum": 1.0}, r"invalid momentum=1.0: expected a value in \[0, 1\)"),
        ({"name": "adam", "lr": 0.1, "momentum": -0.5}, r"invalid momentum=-0.5: expected a value in \[0, 1\)"),
        ({"name": "adamw", "lr": 0.1, "weight_decay": -1.0}, r"invalid weight_decay=-1.0: expected a value in \[0, inf\)"),
        ({"name": "adam", "lr": 0.1, "beta2": 1.0}, r"invalid beta2=1.0: expected a value in \[0, 1\)"),
        ({"name": "adam", "lr": 0.1, "eps": -1e-8}, r"invalid eps=-1e-08: expected a value in \[0, inf\)"),
        ({"name": "rmsprop", "lr": 0.1}, r"unknown optimizer name 'rmsprop': expected one of sgd, sgdw, adam"),
        ({"name": "sgd", "lr": 0.1, "nesterov": True}, r"unknown option 'nesterov' for optimizer 'sgd': valid options are exclude_1d_from_weight_decay"),
        ({"name": "adam0", "lr": 0.1, "beta2": 0.9}, r"unknown option 'beta2' for optimizer 'adam0'"),
        ({"name": "signgd", "lr": 0.1, "momentum": 0.9}, r"invalid momentum=0.9 for 'signgd': expected 0, .* use 'signum'"),
        ({"name": "adamw0", "lr": 0.1, "momentum": 0.5}, r"invalid momentum=0.5 for 'adamw0': expected 0, .* use 'adamw'"),
        ({"name": "adammix", "lr": 0.1, "weight_decay": 1e-3}, r"missing option coupled_weight_decay for 'adammix'"),
        (
            {"name": "adammix", "lr": 0.1, "weight_decay": 1e-3, "coupled_weight_decay": 2e-3},
            r"invalid coupled_weight_decay=0.002: expected a value in \[0, weight_decay=0.001\]",
        ),
        (
            {"name": "adammix", "lr": 0.1, "weight_decay": 1e-3, "coupled_weight_decay": -1e-3},
            r"invalid coupled_weight_decay=-0.001: expected a value in \[0, inf\)",
        ),
        ({"name": "muon", "lr": 0.1, "ns_steps": 0}, r"invalid ns_steps=0: expected an integer >= 1"),
        ({"name": "muon", "lr": 0.1, "lr_adjustment": "x"}, r"invalid lr_adjustment='x': expected one of original"),
    ],
)
def test_invalid_hyperparameter_raises(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        create_optimizer(name, _param(), **kwargs)


def test_invalid_group_lr_raises():
    with pytest.raises(ValueError, match=r"invalid lr=-1: expected a value in \[0, inf\)"):
        create_optimizer("sgdw", [{"params": _param(), "lr": -1}], lr=0.1)


def test_empty_params_raise():
    with pytest.raises(ValueError, match="params is empty"):
        create_optimizer("sgd", [], lr=0.1)


def test_muon_rejects_vector_in_muon_group():
    with pytest.raises(ValueError, match=r"invalid parameter of shape \(2,\) in a group with use_muon=True"):
        Muon([{"params": _param(), "use_muon": True}])
