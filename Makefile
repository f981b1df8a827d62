# Two commands do all the set-up: `make lab` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Nothing is fetched from a model hub by the tests or the notebooks; a teacher who
# wants real weights downloaded runs `HF_HUB_OFFLINE=0 make lab`.
export HF_HUB_OFFLINE ?= 1
# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: venv lab test unit notebooks bench clean

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

test: unit notebooks

# The modules whose docstring examples need no model run as doctests.
DOCTESTED := anatomy/model.py anatomy/processor.py anatomy/capture/orders.py anatomy/capture/budget.py anatomy/lab \
             anatomy/vision/resize.py anatomy/vision/video.py anatomy/vision/patches.py anatomy/vision/windows.py \
             anatomy/vision/rotary.py anatomy/decoder/gqa.py anatomy/toy/embedding.py

unit: $(STAMP)
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --doctest-modules $(DOCTESTED)

notebooks: $(STAMP)
	$(PY) -m pytest -q --nbval-lax notebooks

bench: $(STAMP)
	for script in benchmarks/capture_overhead.py benchmarks/vision_attention_memory.py \
	              benchmarks/attention_memory.py benchmarks/toy_training.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
