# Every target sets itself up: a fresh clone needs only Python >= 3.10 (and apt as root for
# the Xvfb/libxcb packages of the GUI tests).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_output

.PHONY: test demo bench bench-gpu lint sysdeps sample-data screenshots clean

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

sample-data: $(STAMP)
	$(BIN)/python -m napari_latentseg.data.phantom src/napari_latentseg/sample_data

screenshots: $(STAMP) sysdeps
	$(BIN)/python scripts/make_screenshots.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache demo_output
