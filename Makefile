# Two commands do all the set-up: `make lab` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Nothing is fetched from a model hub by the tests or the notebooks; a teacher who
# wants real weights downloaded runs `HF_HUB_OFFLINE=0 make lab`.
export HF_HUB_OFFLINE ?= 1
# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: venv lab test unit doctests notebooks chromium browser hub-test html bench class clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[lab,test]'
	touch $(STAMP)

# The notebooks' default model, the toy, ships in the package: nothing here trains it.
# A relative ANATOMY_CACHE (where retrained toys go) is made absolute once, for every kernel and test.
ifdef ANATOMY_CACHE
export ANATOMY_CACHE := $(abspath $(ANATOMY_CACHE))
endif

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_FLAGS)

# The suite runs marked (ANATOMY_SUITE=<run id> in every process it starts) in its own TMPDIR; its last step
# fails, naming them, on any process still running or file left outside pytest's temporary root.
# -k: every part runs and reports, even after one failed. The four parts run side by side (-j4): the browser
# test mostly waits on JupyterLab and Chromium, and the cores stay busy until the last part ends; each part's
# report is printed whole when it ends (--output-sync). `make test PARTS=1` runs them one after another.
PARTS ?= 4
test: $(STAMP) chromium
	@echo "make test: unit tests, doctests, notebooks and the browser test, $(PARTS) at a time; each part's report comes when it ends"
	$(PY) -m anatomy.processes suite -- $(MAKE) --no-print-directory -k -j$(PARTS) --output-sync=target \
	    unit doctests notebooks browser

# The modules whose docstring examples need no model run as doctests.
DOCTESTED := anatomy/model.py anatomy/processor.py anatomy/capture/orders.py anatomy/capture/budget.py anatomy/lab \
             anatomy/vision/resize.py anatomy/vision/video.py anatomy/vision/patches.py anatomy/vision/windows.py \
             anatomy/vision/rotary.py anatomy/decoder/gqa.py anatomy/toy/example.py anatomy/toy/embedding.py \
             anatomy/processes.py

# Each test has a time limit (pytest-timeout, pyproject.toml); a notebook cell has its own, after which nbval
# interrupts the kernel and the notebook's later cells are not blamed. Unit tests and notebooks run in JOBS
# pytest-xdist workers, one file each at a time (a notebook's cells share one kernel); each worker's torch gets
# its share of the cores. More cores: `make test JOBS=4` (a notebook's kernel peaks at 1.4 GiB at most).
JOBS ?= 2
XDIST := -n $(JOBS) --dist loadfile
# Each part's report starts with its name: the suite's stability benchmark reads the parts by it.
unit: $(STAMP)
	@echo "== part: unit =="
	$(PY) -m pytest -q $(XDIST) --durations=10 tests --ignore=tests/browser --ignore=tests/hub

doctests: $(STAMP)
	@echo "== part: doctests =="
	$(PY) -m pytest -q --durations=10 --doctest-modules $(DOCTESTED)

notebooks: $(STAMP)
	@echo "== part: notebooks =="
	OMP_NUM_THREADS=$$($(PY) -c 'import os; print(max(1, os.cpu_count() // $(JOBS)))') \
	$(PY) -m pytest -q $(XDIST) --durations=10 --nbval-lax --nbval-cell-timeout=600 --nbval-kernel-startup-timeout=180 \
	    --timeout=900 notebooks

# The browser test drives JupyterLab in a Chrome or Chromium found on the machine (`python -m anatomy.browser`
# says which), never a downloaded one. None found: where apt-get runs as root (CI, Debian), Debian's packages
# are installed; elsewhere the browser test is skipped with the reason (under CI=true it fails instead).
chromium: $(STAMP)
	@$(PY) -m anatomy.browser >/dev/null 2>&1 || \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update && apt-get install -y chromium chromium-driver; \
	else $(PY) -m anatomy.browser || true; fi

browser: $(STAMP) chromium
	@echo "== part: browser =="
	$(PY) -m pytest -q --durations=10 tests/browser

# Every notebook executed (papermill) and rendered (nbconvert) to $(OUT)/index.html, for a teacher to
# browse before class; the executed copies stay in $(OUT)/executed. On another model source:
# `HF_HUB_OFFLINE=0 make html SOURCE=Qwen/Qwen2.5-VL-7B-Instruct DEVICE=cuda OUT=site-7b`.
OUT ?= site
html: $(STAMP)
	$(PY) -m anatomy.lab.site --out $(OUT) $(if $(SOURCE),--source $(SOURCE)) $(if $(DEVICE),--device $(DEVICE))

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'  # nnsight, for patching_comparison.py
	for script in benchmarks/capture_overhead.py benchmarks/vision_attention_memory.py \
	              benchmarks/attention_memory.py benchmarks/toy_training.py benchmarks/patching_sweep.py \
	              benchmarks/attribution_agreement.py benchmarks/plan_memory.py benchmarks/plan_time.py \
	              benchmarks/patching_comparison.py benchmarks/kernel_memory.py; do \
	    $(PY) $$script || exit 1; done

# A class on this machine (docs/class.md): JupyterHub for STUDENTS system users who log in with PASSWORD (a
# generated one is printed if unset), on PORT; each kernel capped at MEMORY_GIB (default: anatomy.hub.CAP_GIB). As
# root, on Linux, with node.
# JupyterHub comes from PyPI (the `class` extra), its proxy from npm into .class/; Ctrl-C stops everything.
STUDENTS ?= 3
PORT ?= 8000
CLASS := .class
CLASS_STAMP := $(VENV)/.class-stamp
PROXY := $(CLASS)/node_modules/.bin/configurable-http-proxy

$(CLASS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[lab,test,class]'
	touch $(CLASS_STAMP)

$(PROXY):
	@command -v npm >/dev/null 2>&1 || { echo "make class: no npm: install Node.js (Debian: apt-get install nodejs npm), then run make class again" >&2; exit 2; }
	npm install --prefix $(CLASS) --no-save --no-audit --no-fund configurable-http-proxy

class: $(CLASS_STAMP) $(PROXY)
	$(PY) -m anatomy.hub --students $(STUDENTS) --port $(PORT) $(if $(MEMORY_GIB),--memory-gib $(MEMORY_GIB)) --proxy $(PROXY) \
	    --notebooks notebooks --state $(CLASS)/state --python-dir $(CLASS)/python

# The class test (tests/hub): three students run notebook 07 at once through the hub in Chromium, and a fourth
# kernel over the memory cap is killed without harming them. Root and Linux; about 80 s on 2 cores. Not part of
# make test: it installs JupyterHub and the npm proxy first, and runs four kernels at once.
hub-test: $(CLASS_STAMP) $(PROXY) chromium
	$(PY) -m pytest -q --durations=5 tests/hub

clean:
	rm -rf $(VENV) build *.egg-info $(CLASS)
