# Every target sets itself up: a fresh clone needs only Python >= 3.10 (and apt as root for
# the Xvfb/libxcb packages of the GUI tests).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_output

.PHONY: test demo bench bench-gpu bench-gpu-anomaly lint sysdeps sample-data screenshots clean

$(STAMP): pyproject.toml constraints.txt
	bash scripts/setup_env.sh

sysdeps:
	@bash scripts/install_sysdeps.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

test: $(STAMP) sysdeps lint
	$(BIN)/python -m pytest -ra

demo: $(STAMP)
	$(BIN)/latentseg demo --output $(OUT)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py
	$(BIN)/python benchmarks/bench_gpu_quality.py

# The anomaly benchmark's model-free methods on a GPU; a device call runs at most 10 min, so
# run it in parts, e.g. CASES="brain1* phantom" TAG=-gpu-a, then CASES="brain2* lung*" TAG=-gpu-b.
CASES ?=
TAG ?= -gpu
bench-gpu-anomaly: $(STAMP)
	$(BIN)/python benchmarks/bench_anomaly.py --no-vae --device cuda --tag=$(TAG) \
		$(if $(CASES),--cases $(foreach c,$(CASES),'$(c)'))

sample-data: $(STAMP)
	$(BIN)/python -m napari_latentseg.data.phantom src/napari_latentseg/sample_data

screenshots: $(STAMP) sysdeps
	$(BIN)/python scripts/make_screenshots.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache demo_output
