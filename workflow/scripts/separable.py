"""Snakemake adapter of rule separable: outputs ``table`` (CSV; the Parquet copy is written
next to it with suffix .parquet), ``png`` and ``html``."""

from pipeline.logs import configure_logging
from pipeline.separable import write_separable_outputs

configure_logging(snakemake.log[0])
write_separable_outputs(snakemake.output.table, snakemake.output.png, snakemake.output.html)
