"""Snakemake adapter of rule train: the unconstrained feature model (architecture ufm)
has its own training job, which reads no dataset."""

import torch

from pipeline.config import RunConfig
from pipeline.logs import configure_logging
from pipeline.training import train_run
from pipeline.ufm import UFM_NAME, train_ufm_run

configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
cfg = RunConfig.from_dict(snakemake.params.config)
outputs = {
    "history_path": snakemake.output.history,
    "dumps_path": snakemake.output.dumps,
    "checkpoint_path": snakemake.output.checkpoint,
}
if cfg.architecture == UFM_NAME:
    train_ufm_run(cfg, **outputs)
else:
    train_run(cfg, train_path=snakemake.input.train, test_path=snakemake.input.test, **outputs)
