from pipeline.ufm import UFM_NAME


def run_config(wildcards):
    return RUNS[wildcards.run_id]


def prepared_split(split):
    """Input function of one prepared split; the unconstrained feature model (dataset ufm) has none."""

    def split_path(wildcards):
        dataset = run_config(wildcards).dataset
        return [] if dataset == UFM_NAME else f"{DATA_ROOT}/{dataset}/{split}.pt"

    return split_path


# Train one grid point; its whole configuration is a param, so editing a value reruns only the runs it touches.
rule train:
    input:
        train=prepared_split("train"),
        test=prepared_split("test"),
    output:
        history=f"{RESULTS}/runs/{{run_id}}/history.parquet",
        dumps=f"{RESULTS}/runs/{{run_id}}/dumps.pt",
        checkpoint=f"{RESULTS}/runs/{{run_id}}/checkpoint.pt",
    params:
        config=lambda wildcards: run_config(wildcards).to_dict(),
    threads: 1
    resources:
        gpu=1,
    log:
        f"logs/{PRESET}/train/{{run_id}}.log",
    script:
        "../scripts/train.py"


# Recompute the initial and final NC metrics from the training dumps. The metric code
# is an input, so editing it reruns this rule and aggregation, never training.
rule metrics:
    input:
        dumps=rules.train.output.dumps,
        code=["pipeline/metrics.py", "pipeline/stats.py", "pipeline/run_metrics.py"],
    output:
        metrics=f"{RESULTS}/runs/{{run_id}}/metrics.json",
    log:
        f"logs/{PRESET}/metrics/{{run_id}}.log",
    script:
        "../scripts/metrics.py"
