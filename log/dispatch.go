package log

// Dispatcher receives every record that the log has made visible, in log
// order. The log's flusher goroutine calls it once per group commit, after the
// flush (after the sync in sync mode) and before any append in that commit is
// acknowledged: a message is in the indexes the moment its append returns.
//
// recs and every slice inside it belong to the log and are valid only during
// the call. Dispatch must not block on I/O for long: it runs on the commit
// path. An error fails the log (fail-stop), like an I/O error, except ENOSPC:
// then the records wait, and are dispatched again (from the segments) once
// there is room, so Dispatch must take records it has already taken.
type Dispatcher interface {
	Dispatch(recs []RecordInfo) error
}

// RecordInfo describes one stored record for the indexes.
type RecordInfo struct {
	Pos         int64  // log position of the record
	Size        int32  // bytes on disk, header included
	Topic       []byte // valid during Dispatch only
	QueueID     uint32
	QueueOffset uint64 // of the first message in the record
	Count       uint32 // messages in the record (queue offsets used)
	StoreTime   int64  // unix nanoseconds
	Flags       uint8
	Key         []byte // valid during Dispatch only
	Tags        []byte // valid during Dispatch only
	ProducerID  uint64 // the idempotent send it stores (0: none)
	Seq         uint64 // its first sequence number
}

// infoOf fills ri from a decoded record at pos.
func infoOf(ri *RecordInfo, pos int64, r *Record) {
	*ri = RecordInfo{
		Pos:         pos,
		Size:        int32(r.Size()),
		Topic:       r.Topic,
		QueueID:     r.QueueID,
		QueueOffset: r.QueueOffset,
		Count:       r.Count,
		StoreTime:   r.StoreTime,
		Flags:       r.Flags,
		Key:         r.Key,
		Tags:        r.Tags,
		ProducerID:  r.ProducerID,
		Seq:         r.Seq,
	}
}

// Resumer is implemented by a Dispatcher that keeps state across restarts
// (the indexes). During Open, after recovering the log, the log asks it where
// its durable state ends and re-dispatches every record from that position to
// the end of the recovered log before Open returns, so no record is ever
// missing from the indexes, whatever the crash left behind. A Resumer must
// accept records it has already seen (dispatch is idempotent by position).
type Resumer interface {
	// ResumeFrom returns the log position from which records must be
	// dispatched again. A position below the log's start means "from the start".
	ResumeFrom() int64
	// Truncated tells the dispatcher that the log now ends at end: any entry
	// it holds for a record at or beyond end must be dropped. Called during
	// Open, before the replay.
	Truncated(end int64) error
}
