package index

import (
	"container/list"
	"errors"
	"os"
	"sync"
	"sync/atomic"

	"github.com/quivermq/quiver/internal/fsutil"
)

// fileCache keeps at most max consume-queue files open, the least recently
// used closed first (pebble's table cache, RocksDB's max_open_files): the
// broker's open files stay bounded however many queues it has. A file in
// use (get without put) is never closed under its user; when every open
// file is in use the cache goes over max until they are put back.
//
// Closing a file that has unsynced writes does not lose them: they are in
// the page cache, and the next checkpoint syncs the file by its path
// (index.dirty holds paths), reopening it. An fsync through a new
// descriptor flushes the file's dirty pages and, since Linux 4.16, reports
// a writeback error that no descriptor has seen yet.
type fileCache struct {
	fs  fsutil.FS
	max int

	mu  sync.Mutex
	m   map[string]*cachedFile
	lru list.List // of *cachedFile, most recently used first

	opens, closes atomic.Int64
}

type cachedFile struct {
	path string
	f    fsutil.File
	refs int
	el   *list.Element
	gone bool // forgotten (removed) while in use: closed at its last put
}

func newFileCache(fs fsutil.FS, max int) *fileCache {
	return &fileCache{fs: fs, max: max, m: map[string]*cachedFile{}}
}

// get returns the open file at path, opening it (with flag, O_RDWR and
// perhaps O_CREATE) if the cache does not hold it; put gives it back.
func (c *fileCache) get(path string, flag int) (*cachedFile, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cf := c.m[path]; cf != nil {
		cf.refs++
		c.lru.MoveToFront(cf.el)
		return cf, nil
	}
	c.evictLocked(c.max - 1)
	f, err := c.fs.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, err
	}
	c.opens.Add(1)
	cf := &cachedFile{path: path, f: f, refs: 1}
	cf.el = c.lru.PushFront(cf)
	c.m[path] = cf
	return cf, nil
}

func (c *fileCache) put(cf *cachedFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cf.refs--
	if cf.refs == 0 && cf.gone {
		cf.f.Close()
		c.closes.Add(1)
		return
	}
	c.evictLocked(c.max)
}

// evictLocked closes unused files, least recently used first, until at
// most n are open (or only files in use are).
func (c *fileCache) evictLocked(n int) {
	for e := c.lru.Back(); e != nil && len(c.m) > n; {
		cf := e.Value.(*cachedFile)
		prev := e.Prev()
		if cf.refs == 0 {
			c.lru.Remove(e)
			delete(c.m, cf.path)
			cf.f.Close()
			c.closes.Add(1)
		}
		e = prev
	}
}

// forget drops path from the cache (the file is being removed): closed
// now, or at its last put.
func (c *fileCache) forget(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cf := c.m[path]
	if cf == nil {
		return
	}
	c.lru.Remove(cf.el)
	delete(c.m, path)
	if cf.refs == 0 {
		cf.f.Close()
		c.closes.Add(1)
	} else {
		cf.gone = true
	}
}

// sync fsyncs the file at path; a file that no longer exists (removed
// since it was written) needs none.
func (c *fileCache) sync(path string) error {
	cf, err := c.get(path, os.O_RDWR)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer c.put(cf)
	return cf.f.Sync()
}

// open is how many files the cache holds open now.
func (c *fileCache) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// closeAll closes every file (Index.Close).
func (c *fileCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, cf := range c.m {
		cf.f.Close()
		delete(c.m, p)
	}
	c.lru.Init()
}

// FileStats are the consume-queue files open now, and how many times files
// were opened and closed since the index opened (a high rate: the working
// set of queues is larger than MaxOpenFiles).
type FileStats struct {
	Open          int
	Opens, Closes int64
	// Buffered is the consume-queue entries readable from memory and not
	// yet written to their files (the next checkpoint writes them).
	Buffered int64
}

// Files reports the index's open consume-queue files.
func (idx *Index) Files() FileStats {
	return FileStats{Open: idx.cache.open(), Opens: idx.cache.opens.Load(), Closes: idx.cache.closes.Load(), Buffered: idx.buffered.Load()}
}

const osCreate = os.O_RDWR | os.O_CREATE
