"""Snakemake adapter of rule figures."""

from pipeline.figures import write_report
from pipeline.logs import configure_logging

configure_logging(snakemake.log[0])
write_report(
    snakemake.input.runs,
    {**dict(snakemake.output), "history": snakemake.input.history},
    setting=dict(snakemake.params.setting),
)
