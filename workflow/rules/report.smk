# Collect every run of the preset into one row per run and one row per evaluation.
rule aggregate:
    input:
        metrics=expand(f"{RESULTS}/runs/{{run_id}}/metrics.json", run_id=RUNS),
        histories=expand(f"{RESULTS}/runs/{{run_id}}/history.parquet", run_id=RUNS),
    output:
        runs=f"{RESULTS}/runs.parquet",
        history=f"{RESULTS}/history.parquet",
    log:
        f"logs/{PRESET}/aggregate.log",
    script:
        "../scripts/aggregate.py"


# Summary table in the shape of the paper's Table 2, the coupled-vs-decoupled check, the
# AdamW-to-Adam and AdamW-to-SGD ratios of NC0 and NC3 (header only without such pairs),
# and the figure of final NC0 and NC3 (and NC1, NC2 for UFM runs) against weight decay.
rule figures:
    input:
        runs=rules.aggregate.output.runs,
        history=rules.aggregate.output.history,
    output:
        table_md=f"{RESULTS}/figures/table2.md",
        table_csv=f"{RESULTS}/figures/table2.csv",
        claims=f"{RESULTS}/figures/claims.csv",
        claims_summary=f"{RESULTS}/figures/claims.json",
        adamw_ratios=f"{RESULTS}/figures/adamw_ratios.csv",
        figure_png=f"{RESULTS}/figures/nc_vs_weight_decay.png",
        figure_html=f"{RESULTS}/figures/nc_vs_weight_decay.html",
        dynamics_png=f"{RESULTS}/figures/nc_dynamics.png",
        dynamics_html=f"{RESULTS}/figures/nc_dynamics.html",
    params:
        setting=PRESET_CONFIG.get("figure_setting", {}),
    log:
        f"logs/{PRESET}/figures.log",
    script:
        "../scripts/figures.py"
