# Two commands on a fresh clone:  `make shards`  and  `make test`.
# Real data:  make shards FACES=raw/faces LSUN=lsun/bedroom_train_lmdb
# CPU-only machines can avoid the multi-GB CUDA build of torch with, e.g.,
#   make test TORCH_SPEC='torch==2.13.0'   (any CPU build of torch 2.x works)
# A GPU node without internet (docs/training.md): `make wheelhouse FAISS=gpu` on a connected
# machine with the node's Python version, copy the folder over, then on the node
#   make install WHEELHOUSE=wheelhouse FAISS=gpu   (a venv that reuses the node's own torch)

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch>=2.4,<3
FAISS      ?= cpu
WHEELHOUSE ?=
WHEEL_OPTS ?=
DATA       ?= data
SIZE       ?= 64
WORKERS    ?=
FACES      ?=
LSUN       ?=
FACES_URLS ?=

# The FID/KID/PR references the tests compare with, beside the environment, never in it: their
# torchvision would fight the torch in use (tests/gan/quality/references.py imports them).
REFERENCES := 'pytorch-fid==0.3.0' 'torch-fidelity==0.4.0' 'torchvision<1'

BIN   := $(VENV)/bin
# One stamp per faiss build: switching FAISS reinstalls (and removes the other build first).
STAMP := $(VENV)/.installed-faiss-$(FAISS)
OTHER_FAISS := $(if $(filter gpu,$(FAISS)),faiss-cpu,faiss-gpu-cu12)
# Online: torch from TORCH_SPEC and everything for the tests. From a wheelhouse: no index, the
# runtime only, and the venv sees the system's site-packages, so the node's own torch is used.
VENV_OPTS   := $(if $(WHEELHOUSE),--system-site-packages,)
PIP_SOURCES := $(if $(WHEELHOUSE),--no-index --find-links '$(WHEELHOUSE)',)
PIP_WANTS   := $(if $(WHEELHOUSE),-e '.[$(FAISS)]','$(TORCH_SPEC)' -e '.[dev,$(FAISS)]')
WHEEL_DIR   := $(if $(WHEELHOUSE),$(WHEELHOUSE),wheelhouse)
DEMO  := $(DATA)/demo
# FACES_URLS (URL lists) are downloaded first and become the faces source.
FACES_SRC := $(if $(FACES_URLS),$(DATA)/downloads/faces,$(if $(FACES),$(FACES),$(DEMO)/scraped))
LSUN_SRC  := $(if $(LSUN),$(LSUN),$(DEMO)/lsun)
WORKERS_OPT := $(if $(WORKERS),--workers $(WORKERS),)

.PHONY: install wheelhouse shards demo test lint bench clean

install: $(STAMP)

# One install for everything (runtime, demo photos, tests); torch comes from TORCH_SPEC, the faiss
# build from FAISS (cpu, or gpu on a CUDA machine: the two builds must not share an environment).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_OPTS) $(VENV)
	$(BIN)/python -m pip uninstall -q -y $(OTHER_FAISS) 2>/dev/null || true
	$(BIN)/python -m pip install -q --disable-pip-version-check $(PIP_SOURCES) $(PIP_WANTS)
	$(if $(WHEELHOUSE),,$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps \
	    --upgrade --target $(VENV)/references $(REFERENCES))
	rm -f $(VENV)/.installed*
	touch $@

# Every wheel `make install WHEELHOUSE=...` needs but torch (the node brings its own): the
# runtime dependencies with the FAISS build, their dependencies, and the build backend for the
# project's own editable install. Run it with the node's Python version and architecture (or
# say them in WHEEL_OPTS, e.g. --python-version 3.11 --platform manylinux2014_x86_64
# --only-binary=:all:).
wheelhouse:
	mkdir -p '$(WHEEL_DIR)'
	$(PYTHON) -c "import importlib, sys; \
	    toml = importlib.import_module('tomllib' if sys.version_info >= (3, 11) else 'pip._vendor.tomli'); \
	    t = toml.load(open('pyproject.toml', 'rb')); p = t['project']; \
	    deps = p['dependencies'] + p['optional-dependencies']['$(FAISS)']; \
	    print('\n'.join([d for d in deps if not d.startswith('torch')] + t['build-system']['requires']))" \
	    > '$(WHEEL_DIR)/requirements.txt'
	$(PYTHON) -m pip download -q --disable-pip-version-check $(WHEEL_OPTS) -d '$(WHEEL_DIR)' \
	    -r '$(WHEEL_DIR)/requirements.txt' wheel
	@echo "wheelhouse: $(WHEEL_DIR) ($$(ls '$(WHEEL_DIR)' | grep -c '\.whl$$') wheels, no torch)"

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
