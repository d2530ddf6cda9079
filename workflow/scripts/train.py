"""Snakemake adapter of rule train."""

import torch

from pipeline.config import RunConfig
from pipeline.logs import configure_logging
from pipeline.training import train_run

configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
train_run(
    RunConfig.from_dict(snakemake.params.config),
    train_path=snakemake.input.train,
    test_path=snakemake.input.test,
    history_path=snakemake.output.history,
    dumps_path=snakemake.output.dumps,
    checkpoint_path=snakemake.output.checkpoint,
)
