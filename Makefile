# Set-up and the two main commands. Each target installs what it needs first, so
# `make quick` and `make test` work on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
CORES ?= all
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install quick test smoke paper-dry-run

install:
	@if [ ! -d "$(FASHION_MNIST_DIR)" ]; then \
		$(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	fi
	$(PYTHON) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install -q -e ".[test]"

# The quick preset on real Fashion-MNIST, CPU: results/quick/{runs.parquet,figures/}.
quick: install
	$(PYTHON) -m snakemake --cores $(CORES) --config preset=quick

# The test suite, end-to-end Snakemake and DVC runs included.
test: install
	$(PYTHON) -m pytest

smoke: install
	$(PYTHON) -m snakemake --cores $(CORES) --config preset=smoke

paper-dry-run:
	$(PYTHON) -m snakemake -n --quiet rules --config preset=paper
