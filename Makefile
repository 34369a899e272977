# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: demo test bench sample install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/mosaic info sample_tiles/navcam_360
	$(BIN)/mosaic stitch sample_tiles/navcam_360 -o $(OUT)/navcam_360
	$(BIN)/mosaic terrain sample_tiles/navcam_stereo -o $(OUT)/navcam_stereo --register
	@echo ""
	@echo "demo: results"
	@echo "  panorama:      $(OUT)/navcam_360/panorama.tif (preview.jpg; open index.html in a browser, or: $(BIN)/mosaic view $(OUT)/navcam_360)"
	@echo "  quality:       $(OUT)/navcam_360/quality.png (which frame fills each pixel, seams, residual per frame)"
	@echo "  Hugin project: $(OUT)/navcam_360/panorama.pto"
	@echo "  terrain map:   $(OUT)/navcam_stereo/dem.tif and ortho.tif (open $(OUT)/navcam_stereo/index.html in a browser)"
	@echo "  next steps:    docs/getting-started.md"

# Regenerate the committed synthetic scenes (docs/synthetic-scenes.md): same arguments, same bytes.
sample: install
	rm -rf sample_tiles/navcam_360 sample_tiles/navcam_stereo
	$(BIN)/mosaic synth sample_tiles/navcam_360 --scene navcam-360 --seed 1 --scale 4
	$(BIN)/mosaic synth sample_tiles/navcam_stereo --scene navcam-stereo --seed 1 --scale 8

test: install-test
	$(BIN)/python -m pytest -q

# Benchmarks against cv2.Stitcher and Hugin -> docs/benchmarks.md (docs/benchmarks.md, benchmarks/README.md).
# Installs hugin-tools + enblend from Debian when root and missing. Saved rows are reused:
# `make bench BENCH_ARGS=--fresh` measures everything again; BENCH_ARGS="--runs 1 --sets boat" for a subset.
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache
