# Closed forms of the four row-sum theorems against simulations with the real optimizers.
rule theory:
    output:
        table="results/theory/theory.csv",
        parquet="results/theory/theory.parquet",
        png="results/theory/theory.png",
        html="results/theory/theory.html",
    log:
        "logs/theory.log",
    script:
        "../scripts/theory.py"


# NC0 through training of a small MLP on linearly separable data, for seven optimizers.
rule separable:
    output:
        table="results/separable/separable.csv",
        parquet="results/separable/separable.parquet",
        png="results/separable/separable.png",
        html="results/separable/separable.html",
    log:
        "logs/separable.log",
    script:
        "../scripts/separable.py"
