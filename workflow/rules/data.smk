# Import one dataset into cached tensor files, from local IDX files or through torchvision.
rule prepare_data:
    output:
        train=f"{DATA_ROOT}/{{dataset}}/train.pt",
        test=f"{DATA_ROOT}/{{dataset}}/test.pt",
    params:
        raw_root=f"{DATA_ROOT}/raw",
        fashion_mnist_dir=PARAMS["data"]["fashion_mnist_dir"],
        download=PARAMS["data"]["download"],
    log:
        "logs/prepare_data/{dataset}.log",
    script:
        "../scripts/prepare_data.py"


# Every dataset that the selected preset trains on.
rule data:
    input:
        expand(f"{DATA_ROOT}/{{dataset}}/{{split}}.pt", dataset=[d for d in PRESET_CONFIG["datasets"] if d != "ufm"], split=["train", "test"]),
