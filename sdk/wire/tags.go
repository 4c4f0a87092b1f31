package wire

import (
	"fmt"
	"strings"
)

// FetchTags is a Fetch that only wants the messages whose tags are one of
// a subscription's (TagFilter): the broker skips the others in the consume
// queue by their tag hash, without reading or sending them. Answered with
// FetchResp, whose next offset passes the skipped ones. Encoded as Fetch,
// then the expression (a short string).
type FetchTags struct {
	Fetch
	Expr string
}

func (m *FetchTags) Append(dst []byte) []byte {
	dst = m.Fetch.Append(dst)
	return appendShortString(dst, m.Expr)
}

func DecodeFetchTags(b []byte, m *FetchTags) error {
	// The expression is last: find it from the Fetch's fixed layout.
	d := decoder{b: b}
	d.short("topic", MaxTopicLen)
	d.take(4+8+4+4+4, "fetch")
	if d.err != nil {
		return d.err
	}
	n := len(b) - len(d.b)
	if err := DecodeFetch(b[:n], &m.Fetch); err != nil {
		return err
	}
	d = decoder{b: b[n:]}
	m.Expr = string(d.short("tag expression", MaxTagsLen))
	if err := d.end(); err != nil {
		return err
	}
	if _, err := ParseTagFilter(m.Expr); err != nil {
		return errorf("%v", err)
	}
	return nil
}

// TagFilter is a parsed subscription expression: "a || b || c" (a
// message's tags must be exactly one of them), or "*" (all).
type TagFilter struct {
	All  bool
	Tags []string
}

// ParseTagFilter parses a subscription expression.
func ParseTagFilter(expr string) (TagFilter, error) {
	expr = strings.TrimSpace(expr)
	if expr == "*" {
		return TagFilter{All: true}, nil
	}
	var f TagFilter
	for _, t := range strings.Split(expr, "||") {
		t = strings.TrimSpace(t)
		if t == "" {
			return TagFilter{}, fmt.Errorf("tag expression %q: an empty tag (want \"a || b\" or \"*\")", expr)
		}
		if strings.ContainsAny(t, "|*") {
			return TagFilter{}, fmt.Errorf("tag expression %q: tag %q has '|' or '*' in it", expr, t)
		}
		f.Tags = append(f.Tags, t)
	}
	return f, nil
}

// Match reports whether a message with tags passes the filter.
func (f *TagFilter) Match(tags []byte) bool {
	if f.All {
		return true
	}
	for _, t := range f.Tags {
		if string(tags) == t {
			return true
		}
	}
	return false
}

// TagHash is the hash the consume queue keeps of a record's tags (0 for
// none): FNV-1a, 64 bits.
func TagHash(tags []byte) uint64 {
	if len(tags) == 0 {
		return 0
	}
	h := uint64(14695981039346656037)
	for _, c := range tags {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}
