# The two commands of README.md: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-avx2 lint bench bench-gpu bench-farm soak clean wheelhouse image

# A GPU host keeps its CUDA build of torch: TORCH_INDEX installs one first (e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cu126), and a venv that already has one (README,
# GPU hosts) installs with constraints-gpu.txt, which does not pin torch; constraints.txt's
# torch==2.13.0 would replace it with the registry's build of that version.
TORCH_INDEX ?=
$(STAMP): pyproject.toml constraints.txt constraints-gpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_INDEX)" ]; then $(BIN)/python -m pip install --quiet torch --index-url "$(TORCH_INDEX)"; fi
	if $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	  $(BIN)/python -m pip install --quiet -c constraints-gpu.txt -e '.[dev]'; \
	else \
	  $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'; \
	fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dropbox-daemon demo --config config.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the suite as an AVX2-only host runs it: torch's kernels capped at AVX2, so wav2lip's
# automatic precision is fp32 (README "Tests and figures"); TESTS narrows it
TESTS ?=
test-avx2: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q -rs $(TESTS)

lint: $(STAMP)
	$(BIN)/ruff check dropbox_daemon tests bench
	$(BIN)/ruff format --check dropbox_daemon tests bench

bench: $(STAMP)
	$(BIN)/python bench/pickup.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/frames.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/wav2lip.py
	$(BIN)/python bench/web.py

bench-gpu: $(STAMP)  # on a host with an NVIDIA GPU and a CUDA build of torch
	$(BIN)/python bench/wav2lip_gpu.py

bench-farm: $(STAMP)  # needs PostgreSQL server binaries (apt-get install postgresql)
	$(BIN)/python bench/farm.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Containers (docs/operations.md "Containers"). The wheelhouse: every wheel the image
# installs, for a build without the package index (docker build --build-arg WHEELS=local);
# made with the image's Python version (3.11).
WHEEL_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
wheelhouse:
	$(WHEEL_PYTHON) -m pip download --quiet --dest .wheelhouse -c constraints.txt . dumb-init 'setuptools>=68' wheel

image:
	docker build -t dropbox-daemon .

clean:
	rm -rf $(VENV) .state
