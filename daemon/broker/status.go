package broker

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quivermq/quiver/daemon/console"
	"github.com/quivermq/quiver/daemon/controller"
	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/internal/buildinfo"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// build is the broker's build, as status reports it.
var build = buildinfo.Get()

func rfc3339(ns int64) string {
	if ns == 0 {
		return ""
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

// Status returns the broker's status document (without connections, which
// the server adds), with the first wire.DefaultStatusTopics topics.
func (b *Broker) Status() wire.Status { return b.StatusOf(wire.StatusSel{}) }

// StatusOf returns the status document with the topics sel selects. Its
// cost grows with the topics listed, not with every queue the broker has.
func (b *Broker) StatusOf(sel wire.StatusSel) wire.Status {
	now := time.Now()
	// stMu only while the store is read: the replication status takes it
	// again through Log, and a read lock taken twice deadlocks once a
	// truncation waits for the write lock in between.
	b.stMu.RLock()
	p := b.log.Positions()
	ls := b.log.Stats()
	s := wire.Status{
		Broker: wire.BrokerInfo{ID: b.opts.ID, Version: build.Version, Build: build.String(), Started: b.start.UTC().Format(time.RFC3339),
			UptimeSec: int64(now.Sub(b.start).Seconds()), Engine: b.log.EngineName(), Durability: b.log.Durability().String()},
		Positions: wire.Positions{Start: p.Start, Written: p.Written, Durable: p.Durable, Dispatched: p.Dispatched,
			DurableAt: rfc3339(p.DurableAt), DispatchedAt: rfc3339(p.DispatchedAt)},
		SendQueue: wire.SendQueue{Depth: ls.Queued, BusyTotal: ls.Busy, MaxWaitMs: b.opts.Store.Log.MaxQueueWait.Milliseconds()},
		Warnings:  []string{},
		Topics:    []wire.TopicStatus{},
		Groups:    []wire.GroupStatus{},
	}
	s.Lag = lagOf(p, now)
	s.Cluster = b.clusterView()
	for i := range s.Cluster {
		s.Cluster[i].Topics = nil // the routes carry them; the document stays short
	}
	if s.Lag.NotVisibleMs > b.opts.LagWarn.Milliseconds() {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d written bytes have not been visible to consumers for %d ms (limit %d ms)",
			s.Lag.WrittenNotVisible, s.Lag.NotVisibleMs, b.opts.LagWarn.Milliseconds()))
	}
	if limit := 2*b.asyncInterval() + b.opts.LagWarn; s.Lag.NotDurableMs > limit.Milliseconds() {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d acknowledged async bytes have not been synced for %d ms (limit %d ms)",
			s.Lag.WrittenNotDurable, s.Lag.NotDurableMs, limit.Milliseconds()))
	}
	if err := b.log.Err(); err != nil {
		s.Warnings = append(s.Warnings, "the log failed and refuses appends until restart: "+err.Error())
	}
	if err := b.st.Index.CheckpointErr(); err != nil {
		s.Warnings = append(s.Warnings, err.Error())
	}
	s.Disk = wire.Disk{FreeBytes: b.disk.free.Load(), LogRoomBytes: b.disk.room.Load(), TotalBytes: b.disk.total.Load(), ReserveBytes: b.disk.o.Reserve, Full: b.disk.full.Load()}
	if werr := b.disk.refusal(); werr != nil {
		s.Warnings = append(s.Warnings, werr.Message)
	}

	b.stMu.RUnlock()
	s.Topics, s.TopicsTotal, s.QueuesTotal, s.TopicsNext = b.topicPage(sel, now)

	offs := b.ctl.groupOffsets()
	delete(offs, delayGroup) // the delayer's progress, not a consumer group
	s.Groups = b.groups.status(now, offs, func(q wire.QueueRef) uint64 {
		b.stMu.RLock()
		defer b.stMu.RUnlock()
		bd, _ := b.st.Index.Bounds(q.Topic, q.Queue)
		return bd.Max
	})
	s.Replication = b.replicationStatus()
	return s
}

func (b *Broker) asyncInterval() time.Duration {
	if d := b.opts.Store.Log.AsyncInterval; d > 0 {
		return d
	}
	return 100 * time.Millisecond
}

func lagOf(p qlog.Positions, now time.Time) wire.Lag {
	l := wire.Lag{WrittenNotDurable: p.Written - p.Durable, WrittenNotVisible: p.Written - p.Dispatched}
	if l.WrittenNotVisible > 0 && p.DispatchedAt != 0 {
		l.NotVisibleMs = now.Sub(time.Unix(0, p.DispatchedAt)).Milliseconds()
	}
	if l.WrittenNotDurable > 0 && p.DurableAt != 0 {
		l.NotDurableMs = now.Sub(time.Unix(0, p.DurableAt)).Milliseconds()
	}
	return l
}

func (c *coordinator) status(now time.Time, offs map[string]map[wire.QueueRef]uint64, maxOf func(wire.QueueRef) uint64) []wire.GroupStatus {
	c.mu.Lock()
	out := []wire.GroupStatus{}
	seen := map[string]bool{}
	for _, g := range c.groups {
		gs := wire.GroupStatus{Name: g.name, Generation: g.generation, Members: []wire.MemberStatus{}}
		for _, m := range g.members {
			ms := wire.MemberStatus{ID: m.id, Topics: m.topics, LastSeenMs: now.Sub(m.lastSeen).Milliseconds(), Queues: []wire.QueueRef{}}
			for q, o := range g.owner {
				if o == m.id {
					ms.Queues = append(ms.Queues, q)
				}
			}
			sort.Slice(ms.Queues, func(i, j int) bool { return lessRef(ms.Queues[i], ms.Queues[j]) })
			gs.Members = append(gs.Members, ms)
		}
		sort.Slice(gs.Members, func(i, j int) bool { return gs.Members[i].ID < gs.Members[j].ID })
		out = append(out, gs)
		seen[g.name] = true
	}
	c.mu.Unlock()
	// Groups with committed offsets but no live member are listed too.
	for name := range offs {
		if !seen[name] {
			out = append(out, wire.GroupStatus{Name: name, Members: []wire.MemberStatus{}})
		}
	}
	for i := range out {
		gs := &out[i]
		gs.Offsets = []wire.GroupOffset{}
		for q, o := range offs[gs.Name] {
			max := maxOf(q)
			var lag uint64
			if max > o {
				lag = max - o
			}
			gs.Offsets = append(gs.Offsets, wire.GroupOffset{Topic: q.Topic, Queue: q.Queue, Committed: o, Max: max, Lag: lag})
		}
		sort.Slice(gs.Offsets, func(a, b int) bool {
			return lessRef(wire.QueueRef{Topic: gs.Offsets[a].Topic, Queue: gs.Offsets[a].Queue}, wire.QueueRef{Topic: gs.Offsets[b].Topic, Queue: gs.Offsets[b].Queue})
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// topicPage lists the topics sel selects, sorted by name, each with all
// its queues (a topic never written too), and counts every topic and
// queue; next is the From of the next page ("" when this one is the last).
func (b *Broker) topicPage(sel wire.StatusSel, now time.Time) (page []wire.TopicStatus, topics, queues int, next string) {
	type named struct {
		name   string
		queues uint32
	}
	b.topics.RLock()
	all := make([]named, 0, len(b.topics.m))
	for name, t := range b.topics.m {
		if !hidden(name) {
			all = append(all, named{name, t.queues})
			queues += int(t.queues)
		}
	}
	b.topics.RUnlock()
	topics = len(all)
	sort.Slice(all, func(i, j int) bool { return all[i].name < all[j].name })
	limit := int(sel.Limit)
	if limit == 0 {
		limit = wire.DefaultStatusTopics
	}
	sel.Limit = uint32(min(limit, wire.MaxStatusTopics))
	from := 0
	switch {
	case sel.Topic != "":
		from = sort.Search(len(all), func(i int) bool { return all[i].name >= sel.Topic })
		if from < len(all) && all[from].name == sel.Topic {
			all = all[from : from+1]
		} else {
			all = nil
		}
		from = 0
	case sel.From != "":
		from = sort.Search(len(all), func(i int) bool { return all[i].name > sel.From })
	}
	chosen := all[from:]
	if len(chosen) > int(sel.Limit) {
		chosen = chosen[:sel.Limit]
		next = chosen[len(chosen)-1].name
	}
	page = make([]wire.TopicStatus, 0, len(chosen))
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	for _, t := range chosen {
		ts := wire.TopicStatus{Name: t.name, Queues: make([]wire.QueueStatus, t.queues)}
		for q := range ts.Queues {
			bd, _ := b.st.Index.Bounds(t.name, uint32(q))
			qs := wire.QueueStatus{Queue: uint32(q), Min: bd.Min, Max: bd.Max, LastStore: rfc3339(bd.LastStore)}
			if bd.LastStore != 0 {
				qs.LastStoreAgeMs = now.Sub(time.Unix(0, bd.LastStore)).Milliseconds()
			}
			ts.Queues[q] = qs
		}
		page = append(page, ts)
	}
	return page, topics, queues, next
}

// metrics are the broker's Prometheus metrics, in its own registry.
type metrics struct {
	reg          *prometheus.Registry
	produced_    prometheus.Counter
	produceErr   *prometheus.CounterVec
	produceLat   prometheus.Histogram
	fetches      prometheus.Counter
	fetchedMsgs  prometheus.Counter
	fetchedBytes prometheus.Counter
	elections    *prometheus.CounterVec
	leaderless   prometheus.Histogram
	dedupHits    prometheus.Counter
	redelivered  *prometheus.CounterVec // by consumer group
	deadLetters  *prometheus.CounterVec
	produceReqs  prometheus.Counter
	consoleCounters
}

func newMetrics(b *Broker) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.lat.cur = console.NewLatencyHistogram()
	m.produced_ = prometheus.NewCounter(prometheus.CounterOpts{Name: "quiver_produced_messages_total", Help: "Messages acknowledged to producers."})
	m.produceErr = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "quiver_produce_errors_total", Help: "Produce requests failed, by wire code."}, []string{"code"})
	m.produceLat = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "quiver_produce_latency_seconds",
		Help:    "From a produce reaching the broker to its acknowledgement (sync: after the fsync).",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16)})
	m.fetches = prometheus.NewCounter(prometheus.CounterOpts{Name: "quiver_fetch_requests_total", Help: "Fetch requests."})
	m.fetchedMsgs = prometheus.NewCounter(prometheus.CounterOpts{Name: "quiver_fetched_records_total", Help: "Records sent to consumers."})
	m.fetchedBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "quiver_fetched_bytes_total", Help: "Record bytes sent to consumers."})
	m.elections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "quiver_group_elections_total",
		Help: "Elections of this broker's group's leader seen since it started, by kind (failover, handoff, admin, unclean, first)."}, []string{"kind"})
	m.leaderless = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "quiver_group_leaderless_seconds",
		Help:    "For each failover of this broker's group: from the old leader's last heartbeat to the controller's commit of the new one.",
		Buckets: []float64{0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30}})
	m.produceReqs = prometheus.NewCounter(prometheus.CounterOpts{Name: "quiver_produce_requests_total",
		Help: "Produce requests (frames) received, answered or not yet."})
	m.dedupHits = prometheus.NewCounter(prometheus.CounterOpts{Name: "quiver_produce_duplicates_total",
		Help: "Sends not stored again: a retry of a send of the same producer id and sequence that this leader is storing or its log holds (idempotence)."})
	pos := func(name, help string, f func(p qlog.Positions) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(b.Log().Positions()) })
	}
	m.redelivered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "quiver_redeliveries_total",
		Help: "Messages a consumer group's members set aside for redelivery after their handler failed (stored in the group's __retry topic)."}, []string{"group"})
	m.deadLetters = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "quiver_dead_letters_total",
		Help: "Messages a consumer group's members gave up on after the maximum redeliveries (stored in the group's __dlq topic)."}, []string{"group"})
	m.reg.MustRegister(m.redelivered, m.deadLetters)
	m.reg.MustRegister(m.produced_, m.produceErr, m.produceLat, m.fetches, m.fetchedMsgs, m.fetchedBytes, m.elections, m.leaderless, m.dedupHits, m.produceReqs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_idempotent_producers", Help: "Producer ids whose recent sends this broker's log holds, in the producer table (idempotence)."},
			func() float64 { n, _ := b.producerStats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_idempotent_sends", Help: "Sends in the producer table (idempotence), over every producer id."},
			func() float64 { _, n := b.producerStats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_in_sync_followers", Help: "Followers in the committed in-sync set (on a leader; 0 elsewhere)."},
			func() float64 {
				if l := b.leader(); l != nil {
					return float64(l.InSync())
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_min_insync", Help: "Followers of the in-sync set that must have a send durable before it is acknowledged (min_insync; 0: none)."},
			func() float64 { return float64(b.opts.Replication.MinInsync) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_replication_lag_bytes", Help: "On a leader: the largest lag of a follower, in bytes of the log (0 elsewhere)."},
			func() float64 {
				return b.replicationLag(func(r wire.ReplicaStatus) float64 { return float64(r.LagBytes) })
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_replication_lag_seconds", Help: "On a leader: the longest time a follower has not had everything the leader had (0 elsewhere)."},
			func() float64 {
				return b.replicationLag(func(r wire.ReplicaStatus) float64 { return max(float64(r.LagMs), 0) / 1000 })
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_controller_lease_seconds",
			Help: "How much longer the controller vouches for this broker's session (negative: lapsed; brokers under a controller only)."},
			func() float64 {
				if c := b.repl.ctl; c != nil {
					return c.LeaseLeft().Seconds()
				}
				return 0
			}),
		pos("quiver_log_written_bytes", "Log position handed to the disk.", func(p qlog.Positions) float64 { return float64(p.Written) }),
		pos("quiver_log_durable_bytes", "Log position synced.", func(p qlog.Positions) float64 { return float64(p.Durable) }),
		pos("quiver_log_dispatched_bytes", "Log position visible to consumers.", func(p qlog.Positions) float64 { return float64(p.Dispatched) }),
		pos("quiver_log_not_durable_bytes", "Written but not yet synced (async appends).", func(p qlog.Positions) float64 { return float64(p.Written - p.Durable) }),
		pos("quiver_log_not_visible_bytes", "Written but not yet visible to consumers (incident 003).", func(p qlog.Positions) float64 { return float64(p.Written - p.Dispatched) }),
		pos("quiver_log_not_visible_seconds", "How long the oldest not-yet-visible byte has waited (incident 003).", func(p qlog.Positions) float64 {
			return float64(lagOf(p, time.Now()).NotVisibleMs) / 1e3
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_disk_free_bytes", Help: "Free space on the data directory's file system (measured every second)."},
			func() float64 { return float64(b.disk.free.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_disk_reserve_bytes", Help: "Below this much free space sends are refused with DISK_FULL (disk_reserve)."},
			func() float64 { return float64(b.disk.o.Reserve) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_disk_full", Help: "1 while sends are refused for lack of disk space."},
			func() float64 {
				if b.disk.full.Load() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_send_queue_depth", Help: "Produces waiting for the log's next commit."},
			func() float64 { return float64(b.Log().Stats().Queued) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "quiver_send_queue_busy_total", Help: "Produces failed with BUSY (waited past max-queue-wait, or the queue was full)."},
			func() float64 { return float64(b.Log().Stats().Busy) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_index_files_open", Help: "Consume-queue files open now (at most max_open_files)."},
			func() float64 { return float64(b.indexFiles().Open) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "quiver_index_file_opens_total",
			Help: "Consume-queue files opened (a high rate: more queues are in use than max_open_files keeps open)."},
			func() float64 { return float64(b.indexFiles().Opens) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_index_buffered_entries",
			Help: "Consume-queue entries kept in memory until the next index checkpoint writes them to their files."},
			func() float64 { return float64(b.indexFiles().Buffered) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "quiver_log_commits_total", Help: "Group commits."},
			func() float64 { return float64(b.Log().Stats().Commits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "quiver_log_syncs_total", Help: "fdatasyncs of the log."},
			func() float64 { return float64(b.Log().Stats().Syncs) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "quiver_log_flush_seconds_total", Help: "Time spent in the engine's flushes."},
			func() float64 { return float64(b.Log().Stats().FlushNanos) / 1e9 }),
	)
	return m
}

func (m *metrics) produced(topic string, count uint32, took time.Duration) {
	m.produced_.Add(float64(max(count, 1)))
	m.produceLat.Observe(took.Seconds())
	m.sends.Add(int64(max(count, 1)))
	m.lat.record(took)
	if strings.HasPrefix(topic, reservedPrefix) {
		if g, ok := wire.GroupTopic(topic); ok {
			if strings.HasPrefix(topic, wire.RetryTopicPrefix) {
				m.redelivered.WithLabelValues(g).Add(float64(max(count, 1)))
			} else {
				m.deadLetters.WithLabelValues(g).Add(float64(max(count, 1)))
			}
		}
	}
}

// elected counts an election of this broker's group.
func (m *metrics) elected(e controller.Election) {
	kind := "failover"
	switch {
	case e.Unclean:
		kind = "unclean"
	case e.From == "":
		kind = "first"
	case strings.HasPrefix(e.Reason, "handoff"):
		kind = "handoff"
	case strings.HasPrefix(e.Reason, "quiver admin"):
		kind = "admin"
	}
	m.elections.WithLabelValues(kind).Inc()
	if e.TookMs > 0 {
		m.leaderless.Observe(float64(e.TookMs) / 1e3)
	}
}

func (m *metrics) produceFailed(code wire.Code) {
	m.produceErr.WithLabelValues(code.String()).Inc()
	m.errors.Add(1)
	if code == wire.CodeDiskFull {
		m.diskFull.Add(1)
	}
}

func (m *metrics) fetched(records uint32, bytes int) {
	m.fetchedMsgs.Add(float64(records))
	m.fetchedRecs.Add(int64(records))
	m.fetchedBytes.Add(float64(bytes))
}

func (b *Broker) indexFiles() index.FileStats {
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	return b.st.Index.Files()
}

// Registry is the broker's metrics registry; the server and the admin
// endpoint add theirs to it.
func (b *Broker) Registry() *prometheus.Registry { return b.metrics.reg }

// replicationLag is the largest f of the leader's followers (0 elsewhere).
func (b *Broker) replicationLag(f func(wire.ReplicaStatus) float64) float64 {
	l := b.leader()
	if l == nil {
		return 0
	}
	lag := 0.0
	for _, r := range l.Status() {
		lag = max(lag, f(r))
	}
	return lag
}
