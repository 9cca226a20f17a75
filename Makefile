# podmgr: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
BOX_ID ?= test-$(shell echo $$$$)
PYTEST ?= $(PYTHON) -m pytest

.PHONY: test lint unit test-system test-host install install-deps demo bench debian13-root clean shim

## Everything: lint, unit tests on the host, box tests, system tests inside one box.
test: shim lint unit test-host test-system

## podmgr-exec, the static program that starts every app (podmgr/execshim.py says why C).
SHIM := podmgr/libexec/podmgr-exec
CC ?= cc
# Static (it runs in the image's root, whose libc must not be loaded while it holds
# CAP_SYS_ADMIN), position-independent for ASLR, with the usual hardening.
SHIM_CFLAGS := -static-pie -fPIE -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2 -Wall -Wextra -Werror
shim: $(SHIM)
$(SHIM): shim/podmgr-exec.c
	mkdir -p $(dir $@)
	$(CC) $(SHIM_CFLAGS) $(CFLAGS) -o $@.tmp $<
	mv $@.tmp $@

## The README's first command: install podmgr, then run a two-app demo pod on a real systemd.
demo: install
	demo/demo.sh

## Debian packages the project needs (also what .ci/run installs), then podmgr itself.
install-deps:
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$(cat .ci/apt-packages) >/dev/null

install: install-deps shim
	$(PYTHON) -m pip install -q -e '.[test]' --config-settings editable_mode=compat

lint:
	$(PYTHON) -m ruff check podmgr tests bench
	$(PYTHON) -m mypy

unit:
	$(PYTEST) -m unit tests/unit

## Tests of the box itself (boot, two at once, no leftovers); root on the host.
test-host:
	$(PYTEST) tests/host

## System tests in one throwaway box; T= picks tests, e.g. make test-system T=tests/system/test_bus.py
test-system: shim
	$(PYTHON) tests/box.py run $(BOX_ID) -- $(PYTEST) -m system $(or $(T),tests/system)

bench:
	$(PYTHON) bench/cli_startup
	$(PYTHON) bench/image_import

## A Debian 13 tree for booting systemd 257 in the box (needs network to the Debian mirror).
debian13-root: build/trixie-root/usr/lib/systemd/systemd
build/trixie-root/usr/lib/systemd/systemd:
	mkdir -p build
	debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2 trixie build/trixie-root.tmp
	mv build/trixie-root.tmp build/trixie-root

## The Debian 13 package, build/deb/podmgr_*.deb, built in a copy of the trixie tree (lintian
## errors fail it), then installed with apt into a fresh copy that boots in the box.
.PHONY: deb deb-test bench-deb
deb: debian13-root
	packaging/deb build
deb-test: deb
	packaging/deb test
## bench/pod_start against the installed package (Debian 13's python3), with podman beside it.
bench-deb: deb
	packaging/deb bench

clean:
	rm -rf build $(SHIM) .pytest_cache .mypy_cache .ruff_cache
