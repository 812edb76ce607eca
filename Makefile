# Two commands on a fresh machine:
#   make train   set up, build the CPU training set (./data/cpu) and train: python -m golf.train --preset cpu
#   make test    set up (venv, torch if missing, build golf._C) and run the test suite
# An existing torch, CUDA or not, is used as it is (the venv sees system site-packages);
# without one, $(TORCH) is installed (the CPU wheel by default).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared/data)
export GOLF_TEST_DATA ?= $(SHARED)
export DATA_PATH ?= $(SHARED)/fineweb10B_sp1024_sample
export TOKENIZER_PATH ?= $(SHARED)/tokenizers/fineweb_1024_bpe.model

.PHONY: setup test train data download bench clean

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

setup: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH)"; $(PY) -m pip install -q "$(TORCH)"; }
	$(PY) -m pip install -q "scikit-build-core>=0.10" ninja
	$(PY) -m pip install -q --no-build-isolation \
	    -Cbuild-dir=build/$$($(PY) -c "import torch; print('cuda' if torch.version.cuda else 'cpu')") ".[test,download]"
	$(PY) -m golf.info

test: setup
	$(PY) -m pytest -q

# The CPU training set: the challenge's train head shard + the 2,997 FineWeb pilot docs (pilot_train_*),
# and the val prefix shard for evaluation only.
data: setup data/cpu/pilot_train_000000.bin
	$(PY) -m golf.datatools stats data/cpu --tokenizer $(TOKENIZER_PATH)

data/cpu/pilot_train_000000.bin:
	mkdir -p data/cpu
	ln -sf $(DATA_PATH)/fineweb_train_000000.bin $(DATA_PATH)/fineweb_val_000000.bin data/cpu/
	$(PY) -m golf.datatools prepare --docs $(SHARED)/fineweb10BT_legal_pilot/fineweb10BT_legal_annotated_batches001-030.jsonl \
	    --tokenizer $(TOKENIZER_PATH) --out data/cpu --val-docs 0 --prefix pilot

# ARGS reach golf.train, e.g. make train ARGS=--baseline
train: data
	DATA_PATH=data/cpu $(PY) -m golf.train --preset cpu $(ARGS)

# The challenge's shards (network): TRAIN_SHARDS=80 by default, into ./data as the challenge lays it out.
TRAIN_SHARDS ?= 80
download: setup
	$(PY) -m golf.datatools download --variant sp1024 --train-shards $(TRAIN_SHARDS) --dest data

bench: data
	$(PY) -m bench.loader_throughput
	$(PY) -m bench.target_bytes
	DATA_PATH=data/cpu $(PY) -m bench.tiers

clean:
	rm -rf build $(VENV)
