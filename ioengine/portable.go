package ioengine

import (
	"fmt"
	"sync/atomic"
)

// Portable is the pwrite + fdatasync backend: one syscall per write, then one
// fdatasync per file written. It runs wherever Linux does.
type Portable struct {
	closed atomic.Bool
	files  []File // scratch for Flush's distinct files; Flush is not concurrent
}

// NewPortable returns the portable backend.
func NewPortable() *Portable { return &Portable{} }

func (p *Portable) Name() string { return "portable" }

func (p *Portable) Open(path string) (File, error) {
	if p.closed.Load() {
		return nil, ErrClosed
	}
	return openFile(path)
}

func (p *Portable) Flush(ops []WriteOp, sync bool) error {
	if p.closed.Load() {
		return ErrClosed
	}
	for _, op := range ops {
		if err := checkOp(op.Buf, op.Off); err != nil {
			return fmt.Errorf("%w: %s at %d, %d bytes", err, op.File.Name(), op.Off, len(op.Buf))
		}
	}
	for _, op := range ops {
		if _, err := op.File.WriteAt(op.Buf, op.Off); err != nil {
			return err
		}
	}
	if !sync {
		return nil
	}
	p.files = distinctFiles(p.files[:0], ops)
	for _, f := range p.files {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	return nil
}

func (p *Portable) Close() error {
	if p.closed.Swap(true) {
		return ErrClosed
	}
	return nil
}

// distinctFiles appends the files of ops, each once, in order of first use.
func distinctFiles(dst []File, ops []WriteOp) []File {
outer:
	for _, op := range ops {
		for _, f := range dst {
			if f == op.File {
				continue outer
			}
		}
		dst = append(dst, op.File)
	}
	return dst
}
