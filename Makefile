# tug: one binary that embeds Lua 5.4 on a libuv loop and runs deployment playbooks.
#
#   make               build ./tug
#   make deps          install what the build and the tests need (vendor/install.sh; quick
#                      when present)
#   make test          deps + build + every test (the busted specs in tug)
#   make demo          the main job (see README.md)
#   make bench         benchmarks, figures printed beside the tools users would pick
#   make soak          10 minutes of load on `tug sim` and `tug run smoke --every 1s`: memory
#                      and descriptors at the start and the end must agree within 10%
#                      (SOAK_SECONDS=600; see spec/soak/run.sh)
#   make sanitize      the whole suite under ASan + UBSan
#   make fuzz          the parsers' fuzzer under ASan + UBSan (FUZZ_TIME=600 seconds in all)
#   make lint          clang-format in check mode
#   make install PREFIX=/usr/local
#   make deb           build/tug_VERSION_ARCH.deb (dpkg-deb), which installs as /usr/bin/tug
#
# Every library's flags come from pkg-config; there is no configure step.

PKGS     := lua5.4 libuv libcurl yaml-0.1 jansson libpq libcrypto libssl libwebsockets
CC       ?= cc
OPT      ?= -O2 -g
CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter $(OPT)
CPPFLAGS := -Iruntime $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# http-parser ships no pkg-config file.
LDLIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lm
# Debian's Lua C modules (busted's term and system) resolve the Lua API from the host.
LDFLAGS  := -Wl,-E
PREFIX   ?= /usr/local

RUNTIME_SRC := runtime/main.c runtime/host.c runtime/scheduler.c runtime/redact.c runtime/duration.c runtime/plan.c runtime/sys.c runtime/lockfile.c runtime/buf.c
MODULE_SRC  := $(wildcard modules/*/*.c)
# A module's entry point is modules/NAME/NAME.c (luaopen_tug_NAME).
NATIVES     := $(foreach f,$(MODULE_SRC),$(if $(filter $(notdir $(patsubst %/,%,$(dir $f))),\
                 $(basename $(notdir $f))),$(basename $(notdir $f))))
LUA_SRC     := $(wildcard runtime/lua/*.lua modules/*/*.lua)

BUILD ?= build
BIN   ?= tug
OBJS  := $(patsubst %.c,$(BUILD)/%.o,$(RUNTIME_SRC) $(MODULE_SRC)) $(BUILD)/embedded.o

SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_BUILD := build/asan

.PHONY: all deps test demo bench soak sanitize fuzz lint install deb clean
.DELETE_ON_ERROR:

all: $(BIN)

$(BIN): $(OBJS)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c runtime/tug.h runtime/scheduler.h runtime/host.h | deps-checked
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CPPFLAGS) -c -o $@ $<

$(BUILD)/embed: runtime/embed.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $<

# Regenerated when a Lua source or the set of native modules changes.
$(BUILD)/embedded.c: $(BUILD)/embed $(LUA_SRC) $(MODULE_SRC) Makefile
	$(BUILD)/embed $@ $(addprefix native:,$(NATIVES)) $(LUA_SRC)

$(BUILD)/embedded.o: $(BUILD)/embedded.c runtime/host.h
	$(CC) $(CFLAGS) $(CPPFLAGS) -c -o $@ $<

# pkg-config must know every library before anything compiles.
.PHONY: deps-checked
deps-checked:
	@pkg-config --exists $(PKGS) || { echo "missing libraries: run 'make deps'" >&2; exit 1; }

deps:
	@vendor/install.sh build test

# vendor/bin holds kubectl when install.sh had to fetch it.
TEST_PATH := PATH="$(CURDIR)/vendor/bin:$$PATH"

test: deps
	@$(MAKE) --no-print-directory tug
	$(TEST_PATH) ./tug test spec

SAN_MAKE := $(MAKE) --no-print-directory BUILD=$(SAN_BUILD) BIN=$(SAN_BUILD)/tug \
  OPT="-O1 -g $(SAN_FLAGS)" LDFLAGS="-Wl,-E $(SAN_FLAGS)"

sanitize: deps
	@$(SAN_MAKE)
	$(TEST_PATH) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  TUG_UNDER_TEST=$(abspath $(SAN_BUILD))/tug $(SAN_BUILD)/tug test spec

# Mutated inputs for every parser (spec/fuzz/fuzz.py), shared evenly among the targets;
# failures are saved in spec/fuzz/out/. `make test` runs a short pass (spec/fuzz_spec.lua).
FUZZ_TIME ?= 600
fuzz: deps
	@$(SAN_MAKE)
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  python3 spec/fuzz/fuzz.py --tug $(SAN_BUILD)/tug --time $(FUZZ_TIME) --hang 30

# The demo needs only the binary: it installs the build group, not the test servers.
demo:
	@vendor/install.sh build
	@$(MAKE) --no-print-directory tug
	spec/demo/demo.sh

bench: deps
	@vendor/install.sh bench
	@$(MAKE) --no-print-directory tug
	spec/bench/run.sh

soak: deps
	@$(MAKE) --no-print-directory tug
	spec/soak/run.sh

lint:
	clang-format --dry-run -Werror runtime/*.c runtime/*.h modules/*/*.c

# The binary, its man page and shell completions, all made by the binary itself.
install: tug
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
	  $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d \
	  $(DESTDIR)$(PREFIX)/share/tug/meta
	install -m 755 tug $(DESTDIR)$(PREFIX)/bin/tug
	install -m 644 meta/*.lua $(DESTDIR)$(PREFIX)/share/tug/meta/
	./tug help --man > $(DESTDIR)$(PREFIX)/share/man/man1/tug.1
	./tug completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/tug
	./tug completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_tug
	./tug completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/tug.fish

# A Debian package of `make install` (packaging/deb.sh says what it depends on).
deb: tug
	packaging/deb.sh

clean:
	rm -rf $(BUILD) tug
