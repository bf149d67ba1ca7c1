# epollmux: install, test, benchmark.
#   sudo make install run     install into $(PREFIX) (a private venv under $(PREFIX)/lib/epollmux) and run
#   sudo make test            install what the tests need (Debian packages + a test venv) and run them all
PREFIX   ?= /usr/local
PYTHON   ?= python3
VENV      = $(DESTDIR)$(PREFIX)/lib/epollmux
CONFDIR   = $(DESTDIR)$(PREFIX)/etc/epollmux
UNITDIR   = $(DESTDIR)$(PREFIX)/lib/systemd/system
BINDIR    = $(DESTDIR)$(PREFIX)/bin
TESTVENV  = build/test-venv
# Real peers the tests drive (Debian package names)
DEB_TEST  = python3-venv openssh-server openssh-client nginx-light curl openssl iperf3 openvpn \
            bsdutils procps iproute2 socat haproxy systemd chromium prometheus
DEB_BENCH = sslh haproxy stunnel4 socat nginx-light iperf3 wrk strace linux-perf

.PHONY: all install uninstall run test test-deps deb-deps bench bench-deps bench-profile clean

all:
	@echo "targets: install uninstall run test bench bench-deps clean (PREFIX=$(PREFIX))"

deb-deps:
	@if command -v apt-get >/dev/null && ! dpkg -s $(PKGS) >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PKGS) >/dev/null; \
	fi

install:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || $(MAKE) --no-print-directory deb-deps PKGS=python3-venv
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check .
	install -d $(BINDIR) $(CONFDIR) $(UNITDIR)
	ln -sf ../lib/epollmux/bin/epollmux $(BINDIR)/epollmux
	test -e $(CONFDIR)/epollmux.conf || install -m 644 etc/epollmux.conf $(CONFDIR)/epollmux.conf
	install -m 644 epollmux/configspec.ini $(CONFDIR)/configspec.ini
	for unit in epollmux.service epollmux.socket; do \
	  test -e etc/$$unit && sed 's|@PREFIX@|$(PREFIX)|g' etc/$$unit > $(UNITDIR)/$$unit || true; \
	done
	@echo "installed: $(BINDIR)/epollmux, config $(CONFDIR)/epollmux.conf"

uninstall:
	rm -rf $(VENV)
	rm -f $(BINDIR)/epollmux $(UNITDIR)/epollmux.service $(UNITDIR)/epollmux.socket $(CONFDIR)/configspec.ini
	@if cmp -s etc/epollmux.conf $(CONFDIR)/epollmux.conf; then rm -f $(CONFDIR)/epollmux.conf; \
	 elif test -e $(CONFDIR)/epollmux.conf; then echo "kept $(CONFDIR)/epollmux.conf: it differs from the example"; fi
	-rmdir $(CONFDIR) 2>/dev/null

run:
	$(BINDIR)/epollmux -c $(CONFDIR)/epollmux.conf

$(TESTVENV)/.ok: requirements-test.txt setup.py
	$(PYTHON) -m venv $(TESTVENV)
	$(TESTVENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

test-deps:
	@$(MAKE) --no-print-directory deb-deps PKGS="$(DEB_TEST)"
	@$(MAKE) --no-print-directory $(TESTVENV)/.ok

test: test-deps
	$(TESTVENV)/bin/python -m pytest

bench-deps: test-deps
	@$(MAKE) --no-print-directory deb-deps PKGS="$(DEB_BENCH)"
	$(TESTVENV)/bin/pip install --quiet --disable-pip-version-check matplotlib py-spy

# BENCH_ARGS: --quick, --sections bulk,connrate,idle, --subjects ..., --repeat N (see bench/README.md)
bench: bench-deps
	$(TESTVENV)/bin/python -m bench.harness.run $(BENCH_ARGS)

bench-profile: bench-deps
	$(TESTVENV)/bin/python -m bench.tools.hotpaths

clean:
	rm -rf build *.egg-info .pytest_cache
