"""Snakemake adapter of rule theory: outputs ``table`` (CSV; the Parquet copy is written
next to it with suffix .parquet), ``png`` and ``html``."""

from pipeline.logs import configure_logging
from pipeline.theory import write_theory_outputs

configure_logging(snakemake.log[0])
write_theory_outputs(snakemake.output.table, snakemake.output.png, snakemake.output.html)
