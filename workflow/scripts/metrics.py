"""Snakemake adapter of rule metrics."""

from pipeline.logs import configure_logging
from pipeline.run_metrics import write_run_metrics

configure_logging(snakemake.log[0])
write_run_metrics(snakemake.input.dumps, snakemake.output.metrics)
