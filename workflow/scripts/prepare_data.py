"""Snakemake adapter of rule prepare_data."""

from pathlib import Path

from pipeline.data import prepare_dataset
from pipeline.logs import configure_logging

configure_logging(snakemake.log[0])
prepare_dataset(
    snakemake.wildcards.dataset,
    Path(snakemake.output.train).parent,
    raw_root=Path(snakemake.params.raw_root),
    fashion_mnist_dir=snakemake.params.fashion_mnist_dir,
    download=snakemake.params.download,
)
