"""Optimizer classes of the study, one module per family; build them by name with
``pipeline.optimizers.create_optimizer``."""

from pipeline.optim.adam import Adam, AdamMix, AdamW
from pipeline.optim.lion import Lion
from pipeline.optim.muon import Muon
from pipeline.optim.sgd import SGD, SGDW
from pipeline.optim.signum import Signum, SignumW

__all__ = ["SGD", "SGDW", "Adam", "AdamW", "AdamMix", "Signum", "SignumW", "Lion", "Muon"]
