# deepfeat: the two set-up commands are `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo

.PHONY: setup demo test test-slow test-unit test-integration test-e2e lint docs bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/deepfeat datasets fashion-mnist $(DEMO)/fm --per-class 200
	$(PY) -c "from skimage import data; from PIL import Image; Image.fromarray(data.chelsea()).save('$(DEMO)/cat.jpg')"
	$(VENV)/bin/deepfeat predict efficientnet_lite0 $(DEMO)/cat.jpg --top-k 3
	$(VENV)/bin/deepfeat extract $(DEMO)/fm --model efficientnet_lite0 --layers blocks.4,pre_logits --pool avg \
		--dtype float16 --input-size 96 --out $(DEMO)/feats
	$(VENV)/bin/deepfeat info $(DEMO)/feats
	$(VENV)/bin/deepfeat train $(DEMO)/feats --layers blocks.4,pre_logits --head logreg --solver stream \
		--out $(DEMO)/model.dfm --overwrite
	$(VENV)/bin/deepfeat evaluate $(DEMO)/model.dfm $(DEMO)/feats --split test --out $(DEMO)/report

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# the tiers of the default run (tests/conftest.py marks every test): seconds, minutes, the child-process tests
test-unit test-integration test-e2e: setup
	$(PY) -m pytest -q -m "$(@:test-%=%) and not slow"

# ruff (pyflakes, pycodestyle, bugbear, import order; the format check), mypy strict on the contract packages, the layer contract
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy
	$(PY) scripts/check_layers.py

# the docs site (mkdocs-material + mkdocstrings; the CLI and API references are generated) into build/site
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench:
	$(PY) benchmarks/extract_throughput.py

clean:
	rm -rf $(DEMO) .pytest_cache build/site
