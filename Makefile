# Two commands do all the set-up: `make lab` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Nothing is fetched from a model hub by the tests or the notebooks; a teacher who
# wants real weights downloaded runs `HF_HUB_OFFLINE=0 make lab`.
export HF_HUB_OFFLINE ?= 1
# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: venv lab test unit notebooks chromium browser html bench clean

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

test: unit notebooks browser

# The modules whose docstring examples need no model run as doctests.
DOCTESTED := anatomy/model.py anatomy/processor.py anatomy/capture/orders.py anatomy/capture/budget.py anatomy/lab \
             anatomy/vision/resize.py anatomy/vision/video.py anatomy/vision/patches.py anatomy/vision/windows.py \
             anatomy/vision/rotary.py anatomy/decoder/gqa.py anatomy/toy/example.py anatomy/toy/embedding.py

unit: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/browser
	$(PY) -m pytest -q --doctest-modules $(DOCTESTED)

notebooks: $(STAMP)
	$(PY) -m pytest -q --nbval-lax notebooks

# The browser test drives JupyterLab in Debian's headless Chromium (never a downloaded browser);
# CI runs as root, so the packages are installed here when missing.
chromium:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
	    (apt-get update && apt-get install -y chromium chromium-driver)

browser: $(STAMP) chromium
	$(PY) -m pytest -q tests/browser

# Every notebook executed (papermill) and rendered (nbconvert) to $(OUT)/index.html, for a teacher to
# browse before class; the executed copies stay in $(OUT)/executed. On another model source:
# `HF_HUB_OFFLINE=0 make html SOURCE=Qwen/Qwen2.5-VL-7B-Instruct DEVICE=cuda OUT=site-7b`.
OUT ?= site
html: $(STAMP)
	$(PY) -m anatomy.lab.site --out $(OUT) $(if $(SOURCE),--source $(SOURCE)) $(if $(DEVICE),--device $(DEVICE))

bench: $(STAMP)
	for script in benchmarks/capture_overhead.py benchmarks/vision_attention_memory.py \
	              benchmarks/attention_memory.py benchmarks/toy_training.py benchmarks/patching_sweep.py; do \
	    $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
