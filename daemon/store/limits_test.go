package store

import (
	"testing"

	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// The SDK cannot import the log, so the protocol repeats the log's limits;
// they must agree, or the broker would accept what it cannot store.
func TestWireLimitsMatchTheLog(t *testing.T) {
	pairs := []struct {
		name      string
		wire, log int
	}{
		{"topic", wire.MaxTopicLen, qlog.MaxTopicLen},
		{"key", wire.MaxKeyLen, qlog.MaxKeyLen},
		{"tags", wire.MaxTagsLen, qlog.MaxTagsLen},
	}
	for _, p := range pairs {
		if p.wire != p.log {
			t.Errorf("%s limit: wire %d, log %d", p.name, p.wire, p.log)
		}
	}
	largest := qlog.HeaderSize + wire.MaxTopicLen + wire.MaxKeyLen + wire.MaxTagsLen + wire.MaxHeadersLen + wire.MaxBodyLen
	if largest > qlog.MaxRecordSize {
		t.Errorf("the largest wire message makes a %d-byte record, over the log's %d", largest, qlog.MaxRecordSize)
	}
}
