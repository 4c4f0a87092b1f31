package itest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// relay forwards UDP datagrams between clients and an upstream address. It
// drops them all while cut (a link that fails and comes back), and holds
// what the upstream sends for delay (a slow broker).
type relay struct {
	pc       net.PacketConn
	upstream *net.UDPAddr
	cut      atomic.Bool
	delay    atomic.Int64 // ns added to every datagram from the upstream
	mu       sync.Mutex
	conns    map[string]*net.UDPConn
	clients  atomic.Int64 // distinct client sockets seen: connection attempts
	blocked  sync.Map     // source IPs whose datagrams are dropped, both ways
	wg       sync.WaitGroup
}

// block drops every datagram from and to ip (a host cut off from the
// broker behind the relay); unblock lets them through again.
func (r *relay) block(ip string)   { r.blocked.Store(ip, true) }
func (r *relay) unblock(ip string) { r.blocked.Delete(ip) }

func (r *relay) isBlocked(a net.Addr) bool {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return false
	}
	_, b := r.blocked.Load(ua.IP.String())
	return b
}

func newRelay(t *testing.T, upstream string) *relay {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ua, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{pc: pc, upstream: ua, conns: map[string]*net.UDPConn{}}
	r.wg.Add(1)
	go r.run()
	t.Cleanup(func() {
		pc.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *relay) addr() string { return r.pc.LocalAddr().String() }

func (r *relay) run() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		up := r.conns[from.String()]
		if up == nil {
			up, err = net.DialUDP("udp", nil, r.upstream)
			if err != nil {
				r.mu.Unlock()
				continue
			}
			r.conns[from.String()] = up
			r.clients.Add(1)
			r.wg.Add(1)
			go r.back(up, from)
		}
		r.mu.Unlock()
		if !r.cut.Load() && !r.isBlocked(from) {
			up.Write(buf[:n])
		}
	}
}

// back forwards what the upstream sends to client, each datagram held for
// the delay set when it arrived (in order: the delay is the same for all).
func (r *relay) back(up *net.UDPConn, client net.Addr) {
	defer r.wg.Done()
	type held struct {
		due time.Time
		b   []byte
	}
	q := make(chan held, 1<<16)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for h := range q {
			time.Sleep(time.Until(h.due))
			r.pc.WriteTo(h.b, client)
		}
	}()
	defer close(q)
	buf := make([]byte, 65536)
	for {
		n, err := up.Read(buf)
		if err != nil {
			return
		}
		if r.cut.Load() || r.isBlocked(client) {
			continue
		}
		if d := time.Duration(r.delay.Load()); d > 0 || len(q) > 0 {
			select {
			case q <- held{time.Now().Add(d), append([]byte(nil), buf[:n]...)}:
			default: // a full queue drops, as a router would
			}
			continue
		}
		r.pc.WriteTo(buf[:n], client)
	}
}
