package main

import (
	"testing"

	"github.com/quivermq/quiver/internal/buildinfo/buildinfotest"
)

// quiverd --version prints its version, the checkout's commit and the Go
// version: the binary is built here as a user would build it (giouring
// needs -checklinkname=0).
func TestVersion(t *testing.T) { buildinfotest.CheckVersion(t, "-checklinkname=0") }
