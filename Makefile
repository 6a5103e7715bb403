# dispatchkit developer entry points. Everything runs from a local .venv
# that this Makefile creates and fills from the package registries.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-stamp
BUILD := build
# The extension's build directory (one per interpreter: see test-pythons).
PYBUILD ?= $(BUILD)/py
# What the installed package is made of: `install` reruns when one changes.
PKG_SOURCES := $(shell find src include python -type f -not -name '*.pyc') \
	meson.build meson_options.txt pyproject.toml
INSTALLED := $(VENV)/.install-stamp

.PHONY: all demo test test-c test-python test-pythons lint-python bench check check-python-asan stress soak lint install clean build-c fuzz

all: install

$(STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	touch $(STAMP)

# The C core, tests and benchmarks (not the extension).
$(BUILD)/c/build.ninja: $(STAMP)
	$(VENV)/bin/meson setup $(BUILD)/c -Dpython=disabled -Dbuildtype=debugoptimized

build-c: $(BUILD)/c/build.ninja
	$(VENV)/bin/ninja -C $(BUILD)/c

# The Python package, installed into .venv as a user would (pip install .),
# again only when one of its sources changed.
install: $(INSTALLED)

$(INSTALLED): $(STAMP) $(PKG_SOURCES)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PIP) install -q --no-build-isolation --no-deps \
	    -Cbuild-dir=$(PYBUILD) .
	touch $@

test-c: build-c
	$(BUILD)/c/dk-tests
	$(BUILD)/c/sync-demo
	$(BUILD)/c/zerobuffer-demo

# The suite runs on PYTEST_WORKERS processes (pytest-xdist; 0: in this
# one). Over a third of its serial wall time is tests waiting (timers,
# deadlines, children, "waits forever" checks), which two workers overlap
# with the other's work: on 2 cores it takes about two thirds of its
# serial time (73-85 s against 115-140 s), four fifths at load 7.
PYTEST_WORKERS ?= 2
PYTEST_ARGS = -o addopts="-p no:cacheprovider" -n $(PYTEST_WORKERS)

test-python: install
	$(PY) -m pytest tests/python $(PYTEST_ARGS)

test: test-c test-python lint-python

# Types: mypy --strict on the package sources, the stubs against the built
# extension (stubtest), no public name typed Any, and the atomics README's
# code under mypy and pyright as with the real atomics package.
LINT_STAMP := $(VENV)/.lint-stamp
$(LINT_STAMP): $(STAMP) requirements-lint.txt
	$(PIP) install -q -r requirements-lint.txt
	touch $@

lint-python: install $(LINT_STAMP)
	MYPYPATH=python $(PY) -m mypy --strict --cache-dir $(BUILD)/mypy -p dispatchkit
	$(PY) -m mypy.stubtest --allowlist stubtest-allowlist.txt dispatchkit
	$(PY) tests/typing/check_no_any.py
	$(PY) tests/typing/check_atomics_readme.py

# The Python suite on every CPython the package claims (3.9 to 3.13), each
# from pyenv's interpreters (tools/pythons.sh finds them), in its own venv
# and build directory (tools/test_pythons.sh). EXCEPT="3.11 ..." skips
# versions already tested. JOBS=2 runs two suites at a time, but some
# tests share fixed names in /dev/shm (the docs' examples; test_hostile's
# buffers in a namespace that makes only /tmp private) and test_docs counts
# /dev/shm's entries, so concurrent runs can collide: one at a time by
# default. The next version is not built while a suite runs either: the
# suite's timing-sensitive tests would share the two cores with a compiler.
test-pythons:
	EXCEPT="$(EXCEPT)" JOBS="$(or $(JOBS),1)" MAKE="$(MAKE)" BUILD="$(BUILD)" \
	    tools/test_pythons.sh

# The demo is Python only: no C tests or benchmarks to build first.
demo: install
	$(PY) examples/python/demo.py

# LIBDISPATCH_DIR=/path/to/swift-corelibs-libdispatch (a source tree with
# its build inside) adds libdispatch's column to the C dispatch benchmark.
bench: install build-c
	test ! -f requirements-bench.txt || $(PIP) install -q -r requirements-bench.txt
	LIBDISPATCH_DIR="$(LIBDISPATCH_DIR)" $(PY) bench/run.py

# C tests under ASan+UBSan, then under TSan. TSan sleeps atexit_sleep_ms
# (1000 by default) as each process ends, letting threads still running
# race with what exit does; every test (and stress case) runs in a child
# that leaves through _exit, so nothing runs at exit there: 100 ms still
# lets leftover threads run on after the test, and the 170 children no
# longer wait a second each (dk-tests under TSan: 110 s -> 50 s, loaded).
TSAN_EXIT = atexit_sleep_ms=100
check: $(STAMP)
	$(VENV)/bin/meson setup --reconfigure $(BUILD)/asan -Dpython=disabled \
	    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug \
	    || $(VENV)/bin/meson setup $(BUILD)/asan -Dpython=disabled \
	    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
	$(VENV)/bin/ninja -C $(BUILD)/asan
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    ASAN_OPTIONS=detect_leaks=1 $(BUILD)/asan/dk-tests
	DK_STRESS_ITERS=20000 UBSAN_OPTIONS=halt_on_error=1 $(BUILD)/asan/dk-stress
	DK_STRESS_ITERS=50000 UBSAN_OPTIONS=halt_on_error=1 $(BUILD)/asan/dk-stress-sync
	DK_STRESS_ITERS=100000 UBSAN_OPTIONS=halt_on_error=1 $(BUILD)/asan/dk-stress-zerobuffer
	$(VENV)/bin/meson setup --reconfigure $(BUILD)/tsan -Dpython=disabled \
	    -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug \
	    || $(VENV)/bin/meson setup $(BUILD)/tsan -Dpython=disabled \
	    -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug
	$(VENV)/bin/ninja -C $(BUILD)/tsan
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:$(TSAN_EXIT) \
	    $(BUILD)/tsan/dk-tests
	DK_STRESS_ITERS=5000 TSAN_OPTIONS=halt_on_error=1:$(TSAN_EXIT) $(BUILD)/tsan/dk-stress
	DK_STRESS_ITERS=20000 TSAN_OPTIONS=halt_on_error=1:die_after_fork=0:$(TSAN_EXIT) \
	    $(BUILD)/tsan/dk-stress-sync
	DK_STRESS_ITERS=10000 TSAN_OPTIONS=halt_on_error=1:die_after_fork=0:$(TSAN_EXIT) \
	    $(BUILD)/tsan/dk-stress-zerobuffer
	$(MAKE) check-python-asan
	$(MAKE) fuzz

# The Python suite against an ASan+UBSan build of the extension, with the
# interpreter's allocator set to malloc so ASan sees Python objects.
ASAN_RT = $$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)
check-python-asan: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PIP) install -q --no-build-isolation --no-deps \
	    --upgrade --target $(BUILD)/asan-site -Cbuild-dir=$(BUILD)/py-asan \
	    -Csetup-args=-Db_sanitize=address,undefined -Csetup-args=-Db_lundef=false \
	    -Csetup-args=-Dbuildtype=debug .
	rm -f $(BUILD)/asan-py.log*
	cd $(BUILD) && DK_SANITIZER_RUN=1 LD_PRELOAD="$(ASAN_RT)" PYTHONMALLOC=malloc \
	    ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$(CURDIR)/$(BUILD)/asan-py.log \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(CURDIR)/$(BUILD)/asan-py.log \
	    PYTHONPATH=$(CURDIR)/$(BUILD)/asan-site $(CURDIR)/$(PY) -m pytest $(CURDIR)/tests/python \
	    $(PYTEST_ARGS) -q
	@if ls $(BUILD)/asan-py.log* >/dev/null 2>&1; then \
	    $(PY) tools/asan_reports.py $(BUILD)/asan-py.log*; fi

# libFuzzer targets (tests/fuzz/) built with clang under ASan+UBSan, and the
# atheris target on the Python constructors; each runs FUZZ_SECONDS on its
# committed corpus (new inputs go to $(BUILD)/fuzz/scratch). Any crash fails.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= zerobuffer data sync atomic python
fuzz: install
	mkdir -p $(BUILD)
	echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' \
	    > $(BUILD)/fuzz-probe.c
	clang -fsanitize=fuzzer,address,undefined $(BUILD)/fuzz-probe.c \
	    -o $(BUILD)/fuzz-probe 2>/dev/null || { apt-get update -qq && \
	    apt-get install -y -qq clang libclang-rt-14-dev; }
	$(PY) -c 'import atheris' 2>/dev/null || $(PIP) install -q -r requirements-fuzz.txt
	CC=clang $(VENV)/bin/meson setup --reconfigure $(BUILD)/fuzz $(FUZZ_MESON) \
	    || CC=clang $(VENV)/bin/meson setup $(BUILD)/fuzz $(FUZZ_MESON)
	$(VENV)/bin/ninja -C $(BUILD)/fuzz
	tests/fuzz/run.sh $(BUILD)/fuzz $(FUZZ_SECONDS) $(PY) $(FUZZ_TARGETS)
# clang, unlike gcc, flags nested designated initializers that leave
# fields out, which the core uses on purpose.
FUZZ_MESON = -Dpython=disabled -Dtests=false -Dfuzz=true -Db_lundef=false \
	-Db_sanitize=address,undefined -Dbuildtype=debugoptimized \
	-Dc_args='-fsanitize=fuzzer-no-link -fno-sanitize-recover=all -Wno-missing-field-initializers'

# 10 million dispatched tasks and 1 million zerobuffer frames, resident
# memory sampled.
soak: install
	$(PY) tests/soak/soak_dispatch.py
	$(PY) tests/soak/soak_zerobuffer.py

# Long randomized stress runs (DK_STRESS_ITERS per producer thread).
# dk-stress-sync: DK_STRESS_SYNC_ITERS per thread of 4 processes x 2;
# dk-stress-zerobuffer: DK_STRESS_ZB_ITERS frames in each of 2 rounds.
stress: build-c
	DK_STRESS_ITERS=$${DK_STRESS_ITERS:-2000000} $(BUILD)/c/dk-stress
	DK_STRESS_ITERS=$${DK_STRESS_SYNC_ITERS:-2000000} $(BUILD)/c/dk-stress-sync
	DK_STRESS_ITERS=$${DK_STRESS_ZB_ITERS:-5000000} $(BUILD)/c/dk-stress-zerobuffer

lint: lint-python
	command -v clang-format >/dev/null && command -v clang-tidy >/dev/null || \
	    { apt-get update -qq && apt-get install -y -qq clang-format clang-tidy; }
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')
	# One file per clang-tidy run: its va_list checker carries state from one
	# translation unit to the next and then flags correct va_start/vsnprintf.
	for f in $$(git ls-files 'src/*.c' | grep -v '^src/python/'); do \
	    clang-tidy --quiet $$f -- -Iinclude -Isrc -D_GNU_SOURCE -std=c11 || exit 1; \
	done
	clang-tidy --quiet $$(git ls-files 'src/python/*.c') -- -Iinclude -Isrc \
	    -D_GNU_SOURCE -std=c11 -I$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')

clean:
	rm -rf $(BUILD)
