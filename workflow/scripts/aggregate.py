"""Snakemake adapter of rule aggregate."""

from pipeline.logs import configure_logging
from pipeline.tables import write_aggregates

configure_logging(snakemake.log[0])
write_aggregates(snakemake.input.metrics, snakemake.input.histories, runs_path=snakemake.output.runs, history_path=snakemake.output.history)
