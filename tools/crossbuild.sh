#!/usr/bin/env bash
# `make crossbuild` (part of `make test`): builds and vets, for every
# platform we ship something for, what ships there:
#   - the SDK (./sdk/...) and the CLI (./tools/quiver): linux, darwin,
#     windows and freebsd, on amd64 and arm64;
#   - quiverd: linux/amd64, linux/arm64, and darwin (macOS, for development,
#     portable backend) on amd64 and arm64, with the whole tree vetted for
#     them (tests included);
#   - the SDK's unit tests (go test -c of ./sdk/, ./sdk/wire and
#     ./sdk/internal/outbox) for windows/amd64 and darwin/arm64: they must
#     compile where they cannot run here; and quiver-bench (the benchmarks
#     module) there, which the release ships for macOS and Windows too (the
#     snapshot release builds the other arches).
# One line per platform; the first error stops it, with the tool's output.
# Nothing is written: builds go to /dev/null, and the build cache makes a
# second run take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
# giouring links syscall.munmap with go:linkname (see the Makefile).
LDFLAGS=-ldflags=-checklinkname=0

SDK_CLI="linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64 freebsd/amd64 freebsd/arm64"
QUIVERD="linux/amd64 linux/arm64 darwin/amd64 darwin/arm64"
TESTS="windows/amd64 darwin/arm64"

has() { [[ " $1 " == *" $2 "* ]]; }

# step NAME CMD...: runs CMD for the platform in GOOS/GOARCH, quietly; on
# failure prints what it said and exits.
step() {
  local name=$1 out
  shift
  if ! out=$("$@" 2>&1); then
    echo "crossbuild: $GOOS/$GOARCH: $name FAILED: $*" >&2
    echo "$out" >&2
    exit 1
  fi
  done_steps+=("$name")
}

start=$SECONDS
for platform in $SDK_CLI; do
  export GOOS=${platform%/*} GOARCH=${platform#*/}
  t0=$SECONDS
  done_steps=()
  step "build sdk+cli" "$GO" build -o /dev/null ./sdk/... ./tools/quiver
  step "vet sdk+cli" "$GO" vet ./sdk/... ./tools/quiver
  if has "$QUIVERD" "$platform"; then
    step "build quiverd" "$GO" build "$LDFLAGS" -o /dev/null ./daemon/cmd/quiverd
    step "vet all" "$GO" vet "$LDFLAGS" ./...
  fi
  if has "$TESTS" "$platform"; then
    step "test -c sdk" "$GO" test -c -o /dev/null ./sdk/
    step "test -c sdk/wire" "$GO" test -c -o /dev/null ./sdk/wire
    step "test -c sdk/internal/outbox" "$GO" test -c -o /dev/null ./sdk/internal/outbox
    step "build quiver-bench" bash -c "cd benchmarks && \"\$0\" build -o /dev/null ./cmd/quiver-bench" "$GO"
  fi
  printf 'crossbuild: %-14s ok (%s) %ds\n' "$platform" "$(IFS=,; echo "${done_steps[*]}")" $((SECONDS - t0))
done
echo "crossbuild: all ok in $((SECONDS - start))s"
