# isep — the two commands of the README are `make demo` and `make test`; both install first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
ISEP   := $(VENV)/bin/isep
# The CPU wheel on this machine's disk; a looser pin pulls several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-all bench gpu-check configs figures docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install          ## train Gaussian, λ = 0 and ISEP-FM on the toy bandit, write outputs/demo/figure1.png
	MPLBACKEND=Agg $(ISEP) demo --out outputs/demo

test: install          ## the default suite (CPU, 12-16 minutes on 2 cores, by CPU); CI runs this, then `make docs`
	$(PY) -m pytest -q

test-all: install      ## also the long checks marked `slow`
	$(PY) -m pytest -q -m "slow or not slow"

bench: install         ## updates/s vs a CORL-style step, eager/fast, loop/fit, stacked runs, a stack's drift from its runs alone; JSON + Markdown in bench-results/
	$(PY) benchmarks/throughput.py --out bench-results
	$(PY) benchmarks/stack_drift.py --out bench-results

gpu-check:             ## on a machine with a CUDA GPU: the GPU tests and `isep bench --device cuda --quick` in 8 minutes → gpu-check/
	python3 scripts/gpu_check.py

figures: install       ## Figures 2, 5, 6, 7 (sweeps on ../shared/data/minari and the toy bandit) → outputs/figures/
	$(ISEP) figure fig2
	MINARI_DATASETS_PATH=$(abspath ../shared/data/minari) $(ISEP) figure fig5 --spec configs/figures/fig5_local.yaml
	MINARI_DATASETS_PATH=$(abspath ../shared/data/minari) $(ISEP) figure fig6 --spec configs/figures/fig6_local.yaml
	MINARI_DATASETS_PATH=$(abspath ../shared/data/minari) $(ISEP) figure fig7 --spec configs/figures/fig7_local.yaml

docs: install          ## the site: README's guides, every command's --help, the API from the docstrings → site/ (warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

configs: install       ## regenerate configs/*.yaml from the Appendix C tables in configs/generate.py
	$(PY) configs/generate.py

clean:
	rm -rf outputs runs bench-results gpu-check .pytest_cache site
