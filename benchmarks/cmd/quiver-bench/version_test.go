package main

import (
	"testing"

	"github.com/quivermq/quiver/internal/buildinfo/buildinfotest"
)

// quiver-bench --version prints its version, the checkout's commit and the Go
// version: the binary is built here as a user would build it.
func TestVersion(t *testing.T) { buildinfotest.CheckVersion(t) }
