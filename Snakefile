# Neural collapse under coupled and decoupled weight decay: the study's grid.
#
#   snakemake --cores all                                  # the preset named in params.yaml (quick)
#   snakemake --cores all --config preset=paper --resources gpu=5
#
# The preset's grid expands into one `train` job per point; `metrics` recomputes the
# NC metrics from each job's dumps; `aggregate` and `figures` write the tables and plots.

import sys

from pipeline.config import ConfigError, expand_grid, validate_params
from pipeline.data import DATASETS, DatasetError, check_sources

configfile: "params.yaml"

try:
    PARAMS = validate_params(config, "params.yaml (with --config overrides)")
except ConfigError as error:
    sys.exit(f"error: {error}")

PRESET = PARAMS["preset"]
PRESET_CONFIG = PARAMS["presets"][PRESET]
RUNS = expand_grid(PARAMS)
DATA_ROOT = PARAMS["data"]["root"]

try:
    check_sources(
        PRESET_CONFIG["datasets"],
        data_root=DATA_ROOT,
        fashion_mnist_dir=PARAMS["data"]["fashion_mnist_dir"],
        download=PARAMS["data"]["download"],
    )
except DatasetError as error:
    sys.exit(f"error: {error}")
RESULTS = f"results/{PRESET}"

wildcard_constraints:
    dataset="|".join(DATASETS),
    run_id=".+",

include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/theory.smk"


# Default target: the preset's run table, its history, the summary tables and the figures.
rule all:
    input:
        rules.aggregate.output,
        rules.figures.output,


# The experiments that need no dataset: theorem checks and the separable-data MLP.
rule theory_all:
    input:
        rules.theory.output,
        rules.separable.output,
