# Two commands do all the set-up: `make lab` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Nothing is ever fetched from a model hub by the tests or the notebooks.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv lab test unit notebooks bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[lab,test]'
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

test: unit notebooks

unit: $(STAMP)
	$(PY) -m pytest -q tests

notebooks: $(STAMP)
	$(PY) -m pytest -q --nbval-lax notebooks

bench: $(STAMP)
	for script in benchmarks/capture_overhead.py benchmarks/vision_attention_memory.py \
	              benchmarks/attention_memory.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
