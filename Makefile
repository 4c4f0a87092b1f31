# Quiver build. giouring links syscall.munmap with go:linkname, which Go 1.23+
# refuses unless the linker is told -checklinkname=0: every build, test and
# benchmark of a package that imports ioengine needs it. sdk/ never does.
GO       ?= go
LDFLAGS  := -ldflags=-checklinkname=0
PKGS     := ./...
BIN      := bin

.PHONY: all build test crossbuild release-config release-check release-snapshot browser console-shots bench-console bench-topics test-race vet fmt-check run crash soak chaos fuzz bench-storage bench-e2e bench bench-compare bench-replication bench-controller bench-delay clean

all: build

# -buildvcs=auto: --version prints the commit Go stamps from the checkout,
# even where GOFLAGS turns stamping off.
build:
	@mkdir -p $(BIN)
	$(GO) build -buildvcs=auto $(LDFLAGS) -o $(BIN)/ ./daemon/cmd/quiverd
	$(GO) build -buildvcs=auto $(LDFLAGS) -o $(BIN)/ ./tools/quiver
	cd benchmarks && $(GO) build -buildvcs=auto -o $(abspath $(BIN))/ ./cmd/quiver-bench

# The test command that README.md and .ci/run use: vet, format check, the
# cross-platform builds (crossbuild), and the whole suite with the race
# detector, crash tests included; then the benchmarks module (its own
# go.mod, so that the broker does not depend on nats-server): unit tests and
# a short smoke run of quiver-bench against a quiverd and both NATS
# configurations. release-config checks .goreleaser.yaml.
test: vet fmt-check crossbuild release-config browser
	$(GO) test $(LDFLAGS) -race -count=1 -timeout 12m $(PKGS)
	$(GO) test $(LDFLAGS) -count=1 -run 'Alloc' $(PKGS)
	cd benchmarks && $(GO) test -race -count=1 -timeout 5m ./...

# Builds and vets the SDK and the CLI for linux, darwin, windows and freebsd
# (amd64, arm64), quiverd for linux and darwin, and compiles the SDK's tests
# for windows and darwin: see tools/crossbuild.sh. Seconds with a warm build
# cache; 324 s on two cores with an empty one (a clean clone's .ci/run with a
# fresh GOCACHE, 2026-12-02), 5.4 of its 15 minutes.
crossbuild:
	GO=$(GO) tools/crossbuild.sh

# Release archives with goreleaser (.goreleaser.yaml). release-config (in
# make test) loads the file with goreleaser's own strict loader and checks
# the archives against what each platform is promised, and replays the
# README's go install of quiver and quiverd from a module proxy on disk
# serving HEAD (tools/release, a module of its own: it builds goreleaser's
# config package only). release-check runs the whole
# `goreleaser check`, release-snapshot builds every archive into dist/
# (nothing is published): both need the goreleaser binary, built once into
# bin/tools from the module proxy (the version tools/release/go.mod pins;
# 3.5 minutes on two cores, which is why make test does not build it).
release-config:
	cd tools/release && $(GO) test -count=1 ./...

GORELEASER_VERSION := $(shell awk '{for (i = 1; i < NF; i++) if ($$i == "github.com/goreleaser/goreleaser/v2") print $$(i+1)}' tools/release/go.mod)
GORELEASER := $(abspath $(BIN))/tools/goreleaser-$(GORELEASER_VERSION)
$(GORELEASER):
	@mkdir -p $(BIN)/tools
	cd $$(mktemp -d) && GOBIN=$$PWD $(GO) install github.com/goreleaser/goreleaser/v2@$(GORELEASER_VERSION) && mv goreleaser $@

release-check: $(GORELEASER)
	$(GORELEASER) check

release-snapshot: $(GORELEASER)
	$(GORELEASER) release --snapshot --clean
	@ls -l dist/*.tar.gz dist/*.zip dist/checksums.txt

# The web console's tests drive a headless chromium: installed here where
# that is possible (root with apt-get); elsewhere they skip, saying so (CI
# sets QUIVER_BROWSER=require, which makes a missing browser a failure).
browser:
	@tools/install-browser.sh || echo "the console's browser tests will skip"

vet:
	$(GO) vet $(LDFLAGS) $(PKGS)
	$(GO) vet $(LDFLAGS) -tags chaos ./daemon/itest/
	cd benchmarks && $(GO) vet ./...
	cd tools/release && $(GO) vet ./...

# Every tracked .go file, the benchmarks module's included.
fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# A working demo: starts a broker on ./quiver-data, sends and consumes
# with the CLI, prints the status, and keeps the broker running (Ctrl-C).
run: build
	BIN=$(BIN) ./tools/demo.sh

# Long crash soak: many SIGKILL rounds per backend, and POWERCUTS simulated
# power cuts (unsynced writes kept, dropped or torn; unsynced names lost) of
# the log alone and of the whole store (log, checkpoints, indexes).
crash:
	QUIVER_CRASH_ROUNDS=$${ROUNDS:-200} QUIVER_POWERCUT_ROUNDS=$${POWERCUTS:-2000} $(GO) test $(LDFLAGS) -count=1 -timeout 80m \
		-run 'Crash|PowerCut' -v ./log/ ./index/ ./daemon/...

# Incident 003's replay for minutes instead of seconds: sustained sync load
# with a consumer group; the consume-visible lag must stay bounded.
soak:
	QUIVER_SOAK=$${SOAK:-5m} $(GO) test $(LDFLAGS) -count=1 -timeout 30m -run 'TestVisibleLagUnderSustainedLoad' -v ./daemon/itest/

# The fault-injection suite: three broker groups run by hand under steady
# load, one fault at a time on one broker (SIGKILL, SIGSTOP, 300 ms delay
# through a UDP relay in front of it, stalled send queue), each with fault
# avoidance adaptive, table and off; then automatic failover: one group of
# three under a controller with its leader killed, stopped and cut off
# (TestChaosFailover), and 20 rounds of kill -9 of the leader under
# min-insync sends (failover times in CHAOS_OUT/failover-rounds.txt);
# then incident 004 replayed for a minute. Needs no root and no tc. About
# 15 minutes. CHAOS_FAULTS, CHAOS_MODES, CHAOS_FAILOVER_FAULTS,
# CHAOS_FAILOVER_MODES, CHAOS_RATE, CHAOS_FAULT, FAILOVER_ROUNDS narrow or
# change it; results go to CHAOS_OUT (chaos.*, failover.*) and the whole
# log to chaos.txt.
CHAOS_OUT ?= benchmarks/results/chaos
FAILOVER_ROUNDS ?= 20
chaos: SHELL := /bin/bash
chaos: build
	mkdir -p $(CHAOS_OUT)
	set -o pipefail; CHAOS_OUT=$(abspath $(CHAOS_OUT)) QUIVER_FAILOVER_ROUNDS=$(FAILOVER_ROUNDS) \
		QUIVER_FAILOVER_OUT=$(abspath $(CHAOS_OUT))/failover-rounds.txt $(GO) test $(LDFLAGS) -tags chaos -count=1 -timeout 80m \
		-run 'TestChaos|TestLeaderKilledLosesNoAcknowledgedSend' -v ./daemon/itest/ 2>&1 | tee chaos.txt | \
		grep --line-buffered -E '^(\||chaos:|incident|=== RUN|--- |ok|FAIL|PASS|    failover_test.go:[0-9]+: failover)'

# Fuzz every decoder for FUZZTIME each (default 30s).
fuzz:
	$(GO) test $(LDFLAGS) -run '^$$' -fuzz FuzzDecodeRecord -fuzztime $${FUZZTIME:-30s} ./log/
	$(GO) test $(LDFLAGS) -run '^$$' -fuzz FuzzDecodeCheckpoint -fuzztime $${FUZZTIME:-30s} ./log/
	$(GO) test $(LDFLAGS) -run '^$$' -fuzz FuzzDecodeProducers -fuzztime $${FUZZTIME:-30s} ./index/
	$(GO) test $(LDFLAGS) -run '^$$' -fuzz FuzzQueueTable -fuzztime $${FUZZTIME:-30s} ./index/
	$(GO) test $(LDFLAGS) -run '^$$' -fuzz FuzzOpenEnvelope -fuzztime $${FUZZTIME:-30s} ./daemon/broker/
	for f in FuzzReadFrame FuzzDecodeProduce FuzzDecodeFetchResp FuzzDecodeHello FuzzDecodeAny FuzzDecodeBatch; do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $${FUZZTIME:-30s} ./sdk/wire/ || exit 1; done
	for f in FuzzDecodeMsg FuzzDecodeCommand; do \
		$(GO) test $(LDFLAGS) -run '^$$' -fuzz "^$$f\$$" -fuzztime $${FUZZTIME:-30s} ./daemon/controller/ || exit 1; done
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $${FUZZTIME:-30s} ./daemon/acl/
	$(GO) test -run '^$$' -fuzz FuzzRecover -fuzztime $${FUZZTIME:-30s} ./sdk/internal/outbox/

# 1 KiB sync appends at 1, 16 and 64 appenders, io_uring and portable side by
# side. -count runs every configuration COUNT times, interleaved, and
# benchstat reports medians: this disk's speed drifts (ext4 online discard of
# the previous run's files), so single runs mislead.
BENCHSTAT := golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
bench-storage:
	$(GO) test $(LDFLAGS) -run '^$$' -bench 'BenchmarkAppend' -benchtime $${BENCHTIME:-2s} -count $${COUNT:-5} ./log/ | tee bench-storage.txt
	$(GO) run $(BENCHSTAT) -col /backend bench-storage.txt

# End-to-end sync sends through a real quiverd over QUIC: 1 and 16
# producers, 1 KiB, both I/O backends (results in BENCHMARKS.md).
bench-e2e:
	$(GO) test $(LDFLAGS) -run '^$$' -bench BenchmarkSendSync -benchtime $${BENCHTIME:-20000x} -count $${COUNT:-1} ./daemon/itest/ | tee bench-e2e.txt

# quiver-bench against a quiverd it starts from bin/ (sync, default engine):
# closed loop at 1 and 16 producers, pipelined, and publish-to-consume at a
# target rate. BENCH_DURATION per run (default 8s); BENCH_FLAGS are added to
# every run (e.g. --data-dir /some/disk). Output also in bench.txt.
BENCH_DURATION ?= 8s
BENCH_FLAGS    ?=
BENCH_RUNS := "--producers 1" "--producers 16" "--producers 4 --window 64" \
	"--producers 4 --window 16 --rate 5000 --consumers 2"
bench: build
	@rm -f bench.txt
	@set -e; for run in $(BENCH_RUNS); do \
		echo "+ quiver-bench $$run --size 1024 --duration $(BENCH_DURATION) $(BENCH_FLAGS)" | tee -a bench.txt; \
		$(BIN)/quiver-bench $$run --size 1024 --duration $(BENCH_DURATION) $(BENCH_FLAGS) > bench.tmp; \
		cat bench.tmp; cat bench.tmp >> bench.txt; rm -f bench.tmp; \
	done

# The same workloads against Quiver (sync io_uring, sync portable, async) and
# NATS JetStream (default, default over TLS, and sync_interval: always), one
# system after the other, each in a child process: 1 and 16 closed-loop
# producers and 4 pipelined ones; one table and one plot each (BENCH_OUT,
# default benchmarks/results/compare). BENCH_FLAGS are added to every run.
BENCH_OUT ?= benchmarks/results/compare
COMPARE_RUNS := "p1:--producers 1" "p16:--producers 16" "pipelined:--producers 4 --window 256"
bench-compare: build
	@mkdir -p $(BENCH_OUT)
	@set -e; for run in $(COMPARE_RUNS); do name=$${run%%:*}; flags=$${run#*:}; \
		echo "+ quiver-bench compare $$flags --size 1024 --duration $(BENCH_DURATION) $(BENCH_FLAGS)"; \
		$(BIN)/quiver-bench compare $$flags --size 1024 --duration $(BENCH_DURATION) $(BENCH_FLAGS) \
			--plot $(BENCH_OUT)/$$name.svg --json > $(BENCH_OUT)/$$name.json; \
		$(BIN)/quiver-bench plot --out $(BENCH_OUT)/$$name.png $(BENCH_OUT)/$$name.json; \
	done

# Sync sends with one follower and min-insync = 1 next to a single broker
# (benchmarks/replication.sh; JSON in benchmarks/results/replication/).
bench-replication: build
	BIN=$(BIN) BENCH_DURATION=$(BENCH_DURATION) ./benchmarks/replication.sh

# The broker's memory with DELAY_PENDING (default 1,000,000) delayed
# messages waiting (due 2 h to 30 days ahead): heap after a GC before and
# after, and RSS; and how fast DELAY_BURST (20,000) due at once arrive.
DELAY_PENDING ?= 1000000
bench-delay:
	QUIVER_DELAY_PENDING=$(DELAY_PENDING) QUIVER_DELAY_BURST=$${DELAY_BURST:-20000} $(GO) test $(LDFLAGS) -count=1 -timeout 30m \
		-run 'TestDelayedPendingMemory|TestDelayedBurst' -v ./daemon/itest/ | grep -E 'delayed messages|^(ok|FAIL|---)'

# What many topics cost: a new broker per count of topics (4 queues each),
# 16 closed-loop producers of 1 KiB sync sends over all of them; sends/s,
# topic creations/s, RSS, open files, restart time (issue 17).
TOPICS_SWEEP ?= 10,100,1000,5000,25000
bench-topics:
	QUIVER_TOPICS_SWEEP=$(TOPICS_SWEEP) QUIVER_SWEEP_DURATION=$${SWEEP_DURATION:-20s} $(GO) test $(LDFLAGS) -count=1 -timeout 60m -run 'TestManyTopicsSweep' -v ./daemon/itest/ | grep -E '[|] |many topics|sends/s against|_test.go|^(ok|FAIL|---)'

# The web console's screenshots (docs/img/console-*.png) from its browser
# tests, and what it costs: page weight, the bytes an open page reads, the
# broker's CPU with a page open against none (idle and at 2,000 sends/s).
console-shots: browser
	mkdir -p docs/img
	cd benchmarks && QUIVER_CONSOLE_SHOTS=$(abspath docs/img) $(GO) test -count=1 -run 'TestConsole(Pages|ChartMovesUnderLoad|Cluster)$$' ./console/

bench-console: browser
	cd benchmarks && QUIVER_CONSOLE_COST=1 QUIVER_CONSOLE_WINDOW=$${WINDOW:-30s} $(GO) test -count=1 -timeout 30m -run 'TestConsoleCost' -v ./console/ | grep -E 'console:|_test.go|^(ok|FAIL|---)'

# What automatic failover costs the send path: sync sends to a single
# broker, to three brokers run by hand and to the same three under the
# controller (min-insync 1), interleaved ROUNDS times; BASE_BIN adds the
# first two with binaries of an older commit (benchmarks/controller.sh).
bench-controller: build
	BIN=$(BIN) BENCH_DURATION=$(BENCH_DURATION) ./benchmarks/controller.sh | tee bench-controller.txt

clean:
	rm -rf $(BIN) bench-storage.txt bench-e2e.txt bench.txt bench.tmp chaos.txt bench-controller.txt
