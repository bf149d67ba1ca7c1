# epollmux: install, test, benchmark, package.
#   make install run          as root: install into $(PREFIX) (a private venv under $(PREFIX)/lib/epollmux),
#                             create the system user $(SYSUSER) (SYSUSER= to skip) and run
#   make install DESTDIR=D    a relocatable staged tree (no D in any shebang; no user created)
#   make deb                  build/epollmux_<version>_all.deb (Debian 12: apt-get install ./build/epollmux_*.deb)
#   make test                 as root: install what the tests need (Debian packages + a test venv), run them all
PREFIX   ?= /usr/local
PYTHON   ?= python3
VENV      = $(DESTDIR)$(PREFIX)/lib/epollmux
CONFDIR   = $(DESTDIR)$(PREFIX)/etc/epollmux
UNITDIR   = $(DESTDIR)$(PREFIX)/lib/systemd/system
BINDIR    = $(DESTDIR)$(PREFIX)/bin
MANDIR    = $(DESTDIR)$(PREFIX)/share/man
COMPDIR   = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
SYSUSER  ?= epollmux
TESTVENV  = build/test-venv
# Real peers the tests drive (Debian package names)
DEB_TEST  = python3-venv openssh-server openssh-client nginx-light curl openssl iperf3 openvpn \
            bsdutils procps iproute2 socat haproxy systemd chromium \
            dpkg-dev fakeroot lintian adduser man-db util-linux libcap2-bin \
            python3-configobj python3-daemon python3-sdnotify python3-libconf python3-cryptography prometheus nftables
DEB_BENCH = sslh haproxy stunnel4 socat nginx-light iperf3 wrk strace linux-perf

.PHONY: all install uninstall run test stress test-deps deb-deps deb man bench bench-deps bench-profile clean

all:
	@echo "targets: install uninstall run deb man test stress bench bench-deps clean (PREFIX=$(PREFIX))"

deb-deps:
	@if command -v apt-get >/dev/null && ! dpkg -s $(PKGS) >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PKGS) >/dev/null; \
	fi

install:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || $(MAKE) --no-print-directory deb-deps PKGS=python3-venv
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-compile .
	@# DESTDIR is a staging root: the venv must name its final place, not the staging one
	if [ -n "$(DESTDIR)" ]; then \
	  grep -rlI -- "$(DESTDIR)" $(VENV)/bin $(VENV)/pyvenv.cfg | xargs -r sed -i "s|$(DESTDIR)||g"; \
	fi
	$(VENV)/bin/python -m compileall -q $(if $(DESTDIR),-f -s "$(DESTDIR)" -p /) $(VENV)/lib
	install -d $(BINDIR) $(CONFDIR) $(UNITDIR) $(MANDIR)/man8 $(MANDIR)/man5 $(COMPDIR)
	ln -sf ../lib/epollmux/bin/epollmux $(BINDIR)/epollmux
	test -e $(CONFDIR)/epollmux.conf || install -m 644 etc/epollmux.conf $(CONFDIR)/epollmux.conf
	install -m 644 epollmux/configspec.ini $(CONFDIR)/configspec.ini
	install -m 644 doc/epollmux.8 $(MANDIR)/man8/epollmux.8
	install -m 644 doc/epollmux.conf.5 $(MANDIR)/man5/epollmux.conf.5
	install -m 644 doc/epollmux.bash-completion $(COMPDIR)/epollmux
	for unit in epollmux.service epollmux.socket; do \
	  test -e etc/$$unit && sed 's|@PREFIX@|$(PREFIX)|g' etc/$$unit > $(UNITDIR)/$$unit || true; \
	done
	@# the workers' user (the example's `user = epollmux`); not in a staged (DESTDIR) tree
	@if [ -z "$(DESTDIR)" ] && [ -n "$(SYSUSER)" ] && [ "$$(id -u)" = 0 ] && ! getent passwd $(SYSUSER) >/dev/null; then \
	  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
	    --comment "epollmux workers" $(SYSUSER) && echo "created system user $(SYSUSER)"; \
	fi
	@echo "installed: $(BINDIR)/epollmux, config $(CONFDIR)/epollmux.conf"

uninstall:
	rm -rf $(VENV)
	rm -f $(BINDIR)/epollmux $(UNITDIR)/epollmux.service $(UNITDIR)/epollmux.socket $(CONFDIR)/configspec.ini
	rm -f $(MANDIR)/man8/epollmux.8 $(MANDIR)/man5/epollmux.conf.5 $(COMPDIR)/epollmux
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

# The stress suite (tests/stress, not part of `make test`): a few minutes of hostile and faulty load; each test
# prints one STRESS line of figures, collected in build/stress.txt. STRESS_SCALE multiplies the client counts;
# STRESS_GIB is the volume the kernel relay stress moves (bulk runs are added until it is planned).
STRESS_SCALE ?= 1
STRESS_GIB ?= 1
stress: test-deps
	@mkdir -p build && rm -f build/stress.txt
	EPOLLMUX_STRESS=1 EPOLLMUX_STRESS_SCALE=$(STRESS_SCALE) EPOLLMUX_STRESS_GIB=$(STRESS_GIB) EPOLLMUX_STRESS_OUT=$(CURDIR)/build/stress.txt \
	  $(TESTVENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/stress
	@cat build/stress.txt

bench-deps: test-deps
	@$(MAKE) --no-print-directory deb-deps PKGS="$(DEB_BENCH)"
	$(TESTVENV)/bin/pip install --quiet --disable-pip-version-check matplotlib py-spy

# BENCH_ARGS: --quick, --sections bulk,connrate,idle, --subjects ..., --repeat N (see bench/README.md)
bench: bench-deps
	$(TESTVENV)/bin/python -m bench.harness.run $(BENCH_ARGS)

bench-profile: bench-deps
	$(TESTVENV)/bin/python -m bench.tools.hotpaths

# the Debian package (plain dpkg-deb; see packaging/deb/build.sh)
deb:
	packaging/deb/build.sh build

# man pages and bash completion, from the argparse parser and the configspec
man:
	$(PYTHON) -m epollmux.tools.manpage doc

clean:
	rm -rf build *.egg-info .pytest_cache
