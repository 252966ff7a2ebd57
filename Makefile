# Two commands on a fresh clone:  `make shards`  and  `make test`.
# Real data:  make shards FACES=raw/faces LSUN=lsun/bedroom_train_lmdb
# CPU-only machines can avoid the multi-GB CUDA build of torch with, e.g.,
#   make test TORCH_SPEC='torch==2.13.0'   (any CPU build of torch 2.x works)

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch>=2.4,<3
FAISS      ?= cpu
DATA       ?= data
SIZE       ?= 64
WORKERS    ?=
FACES      ?=
LSUN       ?=
FACES_URLS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO  := $(DATA)/demo
# FACES_URLS (URL lists) are downloaded first and become the faces source.
FACES_SRC := $(if $(FACES_URLS),$(DATA)/downloads/faces,$(if $(FACES),$(FACES),$(DEMO)/scraped))
LSUN_SRC  := $(if $(LSUN),$(LSUN),$(DEMO)/lsun)
WORKERS_OPT := $(if $(WORKERS),--workers $(WORKERS),)

.PHONY: install shards demo test lint bench clean

install: $(STAMP)

# One install for everything (runtime, demo photos, tests); torch comes from TORCH_SPEC, the faiss
# build from FAISS (cpu, or gpu on a CUDA machine: the two builds must not share an environment).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check '$(TORCH_SPEC)' -e '.[dev,$(FAISS)]'
	touch $@

demo: $(STAMP)
	$(if $(and $(FACES),$(LSUN)),@echo "real data configured: no demo corpus needed",$(BIN)/pipeline demo $(DEMO))

# The demo LSUN set (237 images) trains its hash with small batches in one thread: its tiny batches
# gain nothing from more, and a busy machine would stall them. Real data uses the defaults.
shards: $(STAMP) demo
	$(if $(FACES_URLS),$(BIN)/pipeline download $(FACES_URLS) --out $(DATA)/downloads/faces --overwrite)
	$(BIN)/pipeline faces $(FACES_SRC) --out $(DATA)/shards/faces --size $(SIZE) --overwrite $(WORKERS_OPT)
	$(if $(LSUN),,OMP_NUM_THREADS=1) $(BIN)/pipeline dedup $(LSUN_SRC) --out $(DATA)/dedup/lsun --overwrite $(if $(LSUN),,--batch-size 64) $(WORKERS_OPT)
	$(BIN)/pipeline shards $(LSUN_SRC) --out $(DATA)/shards/lsun --exclude $(DATA)/dedup/lsun/duplicates.txt --size $(SIZE) --overwrite $(WORKERS_OPT)
	@echo "training shards: $(DATA)/shards/faces  $(DATA)/shards/lsun"

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DATA) .pytest_cache .ruff_cache
