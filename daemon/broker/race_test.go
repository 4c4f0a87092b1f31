//go:build race

package broker

// The race detector adds allocations of its own; allocation tests run in
// `make test`'s second, non-race pass.
const raceEnabled = true
