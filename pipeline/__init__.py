"""Neural collapse under coupled and decoupled weight decay: data, models,
optimizers, training, NC metrics and reports of the study pipeline."""

__version__ = "0.1.0"
