# The two commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CHROMIUM := /usr/bin/chromium

.PHONY: run test test-fast bench soak chromium clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/python -m jobs.run_all

# Browser tests need Debian's chromium, and an emoji font so names with emoji render (not as empty boxes) in the
# screenshots; install each when it is missing.
chromium:
	@test -x $(CHROMIUM) || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)
	@fc-list | grep -qi "Noto Color Emoji" || ($(SUDO) apt-get update && $(SUDO) apt-get install -y fonts-noto-color-emoji)

# The suite mostly waits (real processes, a broker with latency): three pytest workers keep its ~470 tests
# near 11-12 minutes on 2 cores (two took ~14). Each worker has its own redis-server and databases.
TEST_WORKERS ?= 3

test: $(STAMP) chromium
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# Everything but the slow suites, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser"

# Benchmarks print figures (median, p99, throughput) and the machine; they assert nothing.
bench: $(STAMP)
	$(BIN)/python -m tests.bench

# 1,000 users × 5 strategies through a compressed trading day (~6 min); prints a table, stops by itself.
soak: $(STAMP)
	$(BIN)/python -m tests.soak

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
