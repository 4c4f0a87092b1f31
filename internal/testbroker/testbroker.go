// Package testbroker runs real quiverd processes for integration tests:
// built once per test binary, started on loopback ports of their own, in
// a data directory of the test's, and stopped, killed (SIGKILL), stalled
// (SIGSTOP) or restarted at the test's command.
package testbroker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/daemon/certs"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

var (
	buildMu sync.Mutex
	built   = map[string]*buildResult{}
)

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// Build builds the command in pkg (a path from the module root, such as
// "./tools/quiver") once per test process, with the linker flag giouring
// needs, and returns the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	r := built[pkg]
	if r == nil {
		r = &buildResult{}
		built[pkg] = r
	}
	buildMu.Unlock()
	r.once.Do(func() {
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			r.err = fmt.Errorf("go list -m: %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "quiver-bin-")
		if err != nil {
			r.err = err
			return
		}
		r.path = filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-ldflags=-checklinkname=0", "-o", r.path, pkg)
		cmd.Dir = strings.TrimSpace(string(root))
		if out, err := cmd.CombinedOutput(); err != nil {
			r.err = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
		}
	})
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.path
}

// RemoveBuilds deletes the binaries Build made; call it from TestMain
// after m.Run.
func RemoveBuilds() {
	buildMu.Lock()
	defer buildMu.Unlock()
	for _, r := range built {
		if r.path != "" {
			os.RemoveAll(filepath.Dir(r.path))
		}
	}
}

// Binary builds quiverd (once per test process) and returns its path;
// $QUIVER_QUIVERD names another build instead (a benchmark's baseline).
func Binary(t testing.TB) string {
	if p := os.Getenv("QUIVER_QUIVERD"); p != "" {
		return p
	}
	return Build(t, "./daemon/cmd/quiverd")
}

// Broker is one quiverd process.
type Broker struct {
	t    testing.TB
	Dir  string // data directory
	Args []string
	// Addr and Admin are the QUIC and admin HTTP addresses (fixed at the
	// first start and kept across restarts).
	Addr, Admin string
	// Public is where the other brokers of a cluster reach it: Addr, or a
	// relay in front of it (StartClusterVia).
	Public  string
	CAFile  string // the broker's self-signed certificate
	LogPath string // its stderr, kept across restarts
	// FileLimit, when set, is the process's open-file limit (soft and
	// hard: prlimit --nofile) from its next start on.
	FileLimit int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

var readyRE = regexp.MustCompile(`quiverd ready: quic (\S+), admin (\S+),`)

// StartLimited starts a broker as Start does, with an open-file limit
// (soft and hard) of files; it skips the test where prlimit (util-linux)
// is missing.
func StartLimited(t testing.TB, files int, args ...string) *Broker {
	t.Helper()
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("no prlimit (util-linux) to set the broker's open-file limit")
	}
	return start(t, t.TempDir(), files, args)
}

// OpenFiles counts the broker process's open file descriptors.
func (b *Broker) OpenFiles() int {
	b.t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", b.pid()))
	if err != nil {
		b.t.Fatal(err)
	}
	return len(ents)
}

// Start starts a broker with its data in a new temporary directory; extra
// args are quiverd flags. It stops (SIGKILL) at the end of the test.
func Start(t testing.TB, args ...string) *Broker {
	t.Helper()
	return StartIn(t, t.TempDir(), args...)
}

// StartIn starts a broker on an existing data directory.
func StartIn(t testing.TB, dir string, args ...string) *Broker {
	t.Helper()
	return start(t, dir, 0, args)
}

func start(t testing.TB, dir string, fileLimit int, args []string) *Broker {
	t.Helper()
	b := &Broker{t: t, Dir: dir, Args: args, Addr: "127.0.0.1:0", Admin: "127.0.0.1:0", FileLimit: fileLimit,
		CAFile: filepath.Join(dir, "tls", "cert.pem"), LogPath: filepath.Join(dir, "quiverd.log")}
	b.Restart()
	t.Cleanup(func() { b.Kill(); b.keepLog() })
	return b
}

// keepLog copies the broker's log to $QUIVER_KEEP_LOGS/<test>/<dir>.log
// when that is set (the data directory goes with the test).
func (b *Broker) keepLog() {
	dir := os.Getenv("QUIVER_KEEP_LOGS")
	if dir == "" {
		return
	}
	dst := filepath.Join(dir, strings.ReplaceAll(b.t.Name(), "/", "_"))
	if os.MkdirAll(dst, 0o755) == nil {
		os.WriteFile(filepath.Join(dst, filepath.Base(b.Dir)+".log"), []byte(b.Log()), 0o644)
	}
}

// Restart starts the process again (after Kill or Stop) on the same
// directory and addresses, and waits until it is ready.
func (b *Broker) Restart() {
	b.t.Helper()
	logf, err := os.OpenFile(b.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		b.t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"--data", b.Dir, "--listen", b.Addr, "--admin", b.Admin}, b.Args...)
	cmd := exec.Command(Binary(b.t), args...)
	if b.FileLimit > 0 {
		// prlimit execs the broker: the limit holds from its first instruction.
		cmd = exec.Command("prlimit", append([]string{fmt.Sprintf("--nofile=%d:%d", b.FileLimit, b.FileLimit), "--", Binary(b.t)}, args...)...)
	}
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	ready := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			if m := readyRE.FindStringSubmatch(sc.Text()); m != nil && !sent {
				ready <- m
				sent = true
			}
		}
		if !sent {
			close(ready)
		}
	}()
	done := make(chan struct{})
	b.mu.Lock()
	b.cmd, b.done = cmd, done
	b.mu.Unlock()
	go func() {
		err := cmd.Wait()
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
		close(done)
	}()
	select {
	case m, ok := <-ready:
		if !ok {
			<-done
			b.t.Fatalf("quiverd exited before it was ready (%v); log:\n%s", b.err, b.Log())
		}
		b.Addr, b.Admin = m[1], m[2]
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		b.t.Fatalf("quiverd not ready in 30s; log:\n%s", b.Log())
	}
}

// Log returns what the process wrote to stderr so far.
func (b *Broker) Log() string {
	data, _ := os.ReadFile(b.LogPath)
	return string(data)
}

func (b *Broker) signal(sig syscall.Signal) {
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Signal(sig)
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (b *Broker) Kill() {
	b.signal(syscall.SIGKILL)
	b.wait()
}

// Stop sends SIGTERM and waits for a graceful exit, returning its error.
func (b *Broker) Stop() error {
	b.signal(syscall.SIGTERM)
	return b.wait()
}

// Pause stops the process (SIGSTOP); Resume continues it (SIGCONT).
func (b *Broker) Pause()  { b.signal(syscall.SIGSTOP) }
func (b *Broker) Resume() { b.signal(syscall.SIGCONT) }

// TokenSHA256 is tok's hash as an ACL file's token_sha256 holds it.
func TokenSHA256(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// Reload sends SIGHUP (quiverd reloads its ACL file).
func (b *Broker) Reload() { b.signal(syscall.SIGHUP) }

func (b *Broker) wait() error {
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done == nil {
		return nil
	}
	<-done
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cmd = nil
	return b.err
}

// Client returns an SDK client for this broker, closed at the end of the test.
func (b *Broker) Client(opts ...sdk.Opt) *sdk.Client {
	b.t.Helper()
	opts = append([]sdk.Opt{sdk.WithBrokers(b.Addr), sdk.WithCAFile(b.CAFile)}, opts...)
	cl, err := sdk.NewClient(opts...)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { cl.Close() })
	return cl
}

// Request sends one request to this broker alone, bypassing the SDK's
// routing, on a QUIC session of its own, and returns the answer.
func (b *Broker) Request(typ wire.Type, payload []byte) (wire.Header, []byte) {
	b.t.Helper()
	pem, err := os.ReadFile(b.CAFile)
	if err != nil {
		b.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, b.Addr, &tls.Config{RootCAs: pool, NextProtos: []string{wire.ALPN}, MinVersion: tls.VersionTLS13}, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	defer qc.CloseWithError(0, "done")
	qs, err := qc.OpenStreamSync(ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	qs.SetDeadline(time.Now().Add(5 * time.Second))
	hello := wire.Hello{Version: wire.ProtocolVersion, ClientID: "testbroker"}
	out := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello, RequestID: 1}, hello.Append(nil))
	out = wire.AppendFrame(out, wire.Header{Type: typ, RequestID: 2}, payload)
	if _, err := qs.Write(out); err != nil {
		b.t.Fatal(err)
	}
	br := bufio.NewReader(qs)
	for {
		h, p, _, err := wire.ReadFrame(br, nil)
		if err != nil {
			b.t.Fatal(err)
		}
		if h.RequestID == 2 {
			return h, p
		}
	}
}

// Status reads /status.
func (b *Broker) Status() wire.Status {
	b.t.Helper()
	var s wire.Status
	if err := json.Unmarshal(b.Get("/status"), &s); err != nil {
		b.t.Fatal(err)
	}
	return s
}

// Get fetches a path of the admin endpoint.
func (b *Broker) Get(path string) []byte {
	b.t.Helper()
	resp, err := http.Get("http://" + b.Admin + path)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		b.t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
	}
	return body
}

// CPU is the CPU time the broker process has used so far.
func (b *Broker) CPU() time.Duration {
	b.t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", b.pid()))
	if err != nil {
		b.t.Fatal(err)
	}
	// The fields after the command (in parentheses): utime and stime are
	// the 14th and 15th of the line, in clock ticks (100 a second on Linux).
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func (b *Broker) pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd.Process.Pid
}

// RSS is the broker process's resident memory (VmRSS), in bytes.
func (b *Broker) RSS() int64 {
	b.t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.pid()))
	if err != nil {
		b.t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				b.t.Fatalf("VmRSS %q", rest)
			}
			return kb << 10
		}
	}
	b.t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// Metric is the value of a metric line of /metrics: its name, with its
// labels as Prometheus prints them (`name{label="v"}`); 0 if absent.
func (b *Broker) Metric(name string) float64 {
	b.t.Helper()
	for _, line := range strings.Split(string(b.Get("/metrics")), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				b.t.Fatalf("metric %s: %q", name, line)
			}
			return v
		}
	}
	return 0
}

// Post posts to a path of the admin endpoint (the /debug/faults drills).
func (b *Broker) Post(path string) {
	b.t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), "POST", "http://"+b.Admin+path, bytes.NewReader(nil))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.t.Fatalf("POST %s: %s: %s", path, resp.Status, body)
	}
}

// WaitFor polls cond until it holds or 30s pass. It waits for a state,
// never for a duration.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Group is a leader and its followers, started with a shared bundle of
// their certificates (for peers and clients) and each other as peers.
type Group struct {
	Leader    *Broker
	Followers []*Broker
	// Bundle is a PEM file with every broker's certificate.
	Bundle string
	// Addrs are the brokers' QUIC addresses, the leader's first.
	Addrs []string
}

// StartGroup starts a leader and n followers. leaderArgs and followerArgs
// are added to the leader's and every follower's flags.
func StartGroup(t testing.TB, n int, leaderArgs, followerArgs []string) *Group {
	t.Helper()
	return StartGroupAt(t, nil, n, leaderArgs, followerArgs)
}

// StartGroupAt is StartGroup with the first brokers' QUIC addresses given
// (the leader's first); the others are picked free. A follower flag
// --leader in followerArgs overrides where followers reach the leader.
func StartGroupAt(t testing.TB, addrs []string, n int, leaderArgs, followerArgs []string) *Group {
	t.Helper()
	return startGroups(t, 1, n, addrs, leaderArgs, followerArgs, false).Groups[0]
}

// Cluster is broker groups that know each other.
type Cluster struct {
	Groups []*Group
	// Bundle is a PEM file with every broker's certificate.
	Bundle string
}

// Brokers lists every broker, group by group, leaders first.
func (c *Cluster) Brokers() []*Broker {
	var out []*Broker
	for _, g := range c.Groups {
		out = append(out, g.Leader)
		out = append(out, g.Followers...)
	}
	return out
}

// Client returns an SDK client that starts from the first group's leader
// only (it learns the rest), closed at the end of the test.
func (c *Cluster) Client(opts ...sdk.Opt) *sdk.Client {
	return c.Groups[0].Leader.Client(opts...)
}

// StartCluster starts groups broker groups of a leader and followers
// followers each, named g0, g1..., brokers g0b0 (g0's first leader),
// g0b1..., each told of one broker of every other group (--cluster).
func StartCluster(t testing.TB, groups, followers int, leaderArgs, followerArgs []string) *Cluster {
	t.Helper()
	return startGroups(t, groups, followers, nil, leaderArgs, followerArgs, true)
}

// StartClusterVia is StartCluster where every other broker and every
// client reaches broker i (group by group, leader first) at front(i,
// listen): a relay in front of it, for fault injection. front returns
// listen for brokers reached directly.
func StartClusterVia(t testing.TB, groups, followers int, leaderArgs, followerArgs []string, front func(i int, listen string) string) *Cluster {
	t.Helper()
	c := &Cluster{}
	return startGroupsVia(t, c, groups, followers, nil, leaderArgs, followerArgs, true, front)
}

func startGroups(t testing.TB, groups, n int, addrs []string, leaderArgs, followerArgs []string, named bool) *Cluster {
	return startGroupsVia(t, &Cluster{}, groups, n, addrs, leaderArgs, followerArgs, named, nil)
}

func startGroupsVia(t testing.TB, c *Cluster, groups, n int, addrs []string, leaderArgs, followerArgs []string, named bool,
	front func(int, string) string) *Cluster {
	t.Helper()
	per := n + 1
	dirs := make([]string, groups*per)
	all := make([]string, groups*per)
	var bundle []byte
	for i := range dirs {
		dirs[i] = t.TempDir()
		var hosts []string // the certificate names the broker's address
		if i < len(addrs) {
			if h, _, err := net.SplitHostPort(addrs[i]); err == nil {
				hosts = append(hosts, h)
			}
		}
		if _, _, err := certs.LoadOrCreate(filepath.Join(dirs[i], "tls"), hosts); err != nil {
			t.Fatal(err)
		}
		pem, err := os.ReadFile(filepath.Join(dirs[i], "tls", certs.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, pem...)
		if i < len(addrs) {
			all[i] = addrs[i]
		} else {
			all[i] = FreeUDPAddr(t)
		}
	}
	c.Bundle = filepath.Join(t.TempDir(), "cluster.pem")
	if err := os.WriteFile(c.Bundle, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	pub := append([]string(nil), all...) // where the others reach each broker
	if front != nil {
		for i := range pub {
			pub[i] = front(i, all[i])
		}
	}
	for gi := 0; gi < groups; gi++ {
		g := &Group{Bundle: c.Bundle, Addrs: pub[gi*per : (gi+1)*per]}
		common := func(i int) []string {
			id := fmt.Sprintf("b%d", i)
			listen := all[gi*per+i]
			args := []string{"--listen", listen, "--peer-ca", c.Bundle, "--peers", strings.Join(g.Addrs, ",")}
			if g.Addrs[i] != listen {
				args = append(args, "--advertise", g.Addrs[i])
			}
			if named {
				id = fmt.Sprintf("g%db%d", gi, i)
				var others []string
				for gj := 0; gj < groups; gj++ {
					if gj != gi {
						others = append(others, pub[gj*per])
					}
				}
				args = append(args, "--group", fmt.Sprintf("g%d", gi))
				if len(others) > 0 {
					args = append(args, "--cluster", strings.Join(others, ","))
				}
			}
			return append(args, "--broker-id", id)
		}
		g.Leader = StartIn(t, dirs[gi*per], append(append(common(0), "--role", "leader"), leaderArgs...)...)
		g.Leader.CAFile, g.Leader.Public = c.Bundle, g.Addrs[0]
		for i := 1; i <= n; i++ {
			args := append(common(i), "--role", "follower", "--leader", g.Addrs[0])
			f := StartIn(t, dirs[gi*per+i], append(args, followerArgs...)...)
			f.CAFile, f.Public = c.Bundle, g.Addrs[i]
			g.Followers = append(g.Followers, f)
		}
		c.Groups = append(c.Groups, g)
	}
	return c
}

// FreeUDPAddr returns a loopback UDP address nothing listens on now.
func FreeUDPAddr(t testing.TB) string {
	t.Helper()
	return FreeUDPAddrOn(t, "127.0.0.1")
}

// FreeUDPAddrOn returns a UDP address on ip nothing listens on now. The
// port is below the kernel's ephemeral range (ip_local_port_range starts
// at 32768 by default), so that the sockets clients bind for their own
// connections, which take ephemeral ports, cannot take it before the
// broker it is meant for binds it. It is claimed for this process (see
// claimPort) and bound once to check, then freed.
func FreeUDPAddrOn(t testing.TB, ip string) string {
	t.Helper()
	for i := 0; i < 1000; i++ {
		port := 20000 + int(portSeq.Add(1)+uint32(os.Getpid()))%12000
		if !claimPort(port) {
			continue
		}
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			continue
		}
		pc.Close()
		return pc.LocalAddr().String()
	}
	t.Fatal("testbroker: no free UDP port in 20000-31999")
	return ""
}

// portSeq walks the ports FreeUDPAddrOn hands out, so that two calls in a
// row never return the same one (the first is not bound yet).
var portSeq atomic.Uint32

var (
	claimMu sync.Mutex
	claimed []*os.File // held open: the locks last as long as the process
)

// claimPort reserves port for this test process against the others that
// run at the same time (go test runs packages in parallel, and two of them
// could hand out the same free port before either broker binds it): an
// exclusive lock on a file per port, held until the process exits. It
// says yes when no lock can be taken at all (the bind check remains).
func claimPort(port int) bool {
	claimMu.Lock()
	defer claimMu.Unlock()
	dir := filepath.Join(os.TempDir(), "quiver-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return true
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	claimed = append(claimed, f)
	return true
}

// HoleAddr returns a loopback UDP address that takes datagrams and never
// answers, until the test ends: a broker cut off by the network (a dial
// to it waits out its timeout), not one whose port is closed.
func HoleAddr(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// Controlled is a group of brokers started alike, with no role: their
// peers are the controller quorum's voters, which elect the leader.
type Controlled struct {
	// Prefix names the brokers: prefix1, prefix2...
	Prefix  string
	Brokers []*Broker
	// Bundle is a PEM file with every broker's certificate.
	Bundle string
	// Addrs are the brokers' QUIC addresses (as the others reach them).
	Addrs []string
}

// StartControlled starts n brokers b1..bn alike (--peers all of them, no
// --role), each reached by the others and by clients at front(i, listen)
// when front is given (a relay in front of it), and waits until the
// controller has elected one leader.
func StartControlled(t testing.TB, n int, args []string, front func(i int, listen string) string) *Controlled {
	t.Helper()
	return StartControlledGroups(t, Spec{Prefix: "b", N: n, Args: args, Front: front})[0]
}

// Spec is one group of StartControlledGroups.
type Spec struct {
	Prefix string // brokers are named prefix1, prefix2...
	N      int
	Args   []string
	Front  func(i int, listen string) string
	// VotersOf names the group (by prefix) whose brokers are this one's
	// controllers (--controllers); "": its own (--peers).
	VotersOf string
	// Hosts, when set, are the loopback addresses the brokers listen on
	// (and their peer connections come from), one per broker: a relay can
	// then tell their traffic apart.
	Hosts []string
}

// StartControlledGroups starts groups as StartControlled does, one after
// the other, with one bundle of certificates for them all.
func StartControlledGroups(t testing.TB, specs ...Spec) []*Controlled {
	t.Helper()
	var bundle []byte
	groups := make([]*Controlled, len(specs))
	dirs := make([][]string, len(specs))
	listen := make([][]string, len(specs))
	for gi, sp := range specs {
		c := &Controlled{Prefix: sp.Prefix}
		groups[gi] = c
		for i := 0; i < sp.N; i++ {
			dir := t.TempDir()
			host := "127.0.0.1"
			if i < len(sp.Hosts) {
				host = sp.Hosts[i]
			}
			if _, _, err := certs.LoadOrCreate(filepath.Join(dir, "tls"), []string{host}); err != nil {
				t.Fatal(err)
			}
			pem, err := os.ReadFile(filepath.Join(dir, "tls", certs.CertFile))
			if err != nil {
				t.Fatal(err)
			}
			bundle = append(bundle, pem...)
			l := FreeUDPAddrOn(t, host)
			pub := l
			if sp.Front != nil {
				pub = sp.Front(i, l)
			}
			dirs[gi], listen[gi] = append(dirs[gi], dir), append(listen[gi], l)
			c.Addrs = append(c.Addrs, pub)
		}
	}
	path := filepath.Join(t.TempDir(), "group.pem")
	if err := os.WriteFile(path, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	for gi, sp := range specs {
		c := groups[gi]
		c.Bundle = path
		// Started at once, as an operator starts a group: the first
		// election waits for all of them.
		var wg sync.WaitGroup
		c.Brokers = make([]*Broker, sp.N)
		for i := range dirs[gi] {
			a := []string{"--broker-id", fmt.Sprintf("%s%d", sp.Prefix, i+1), "--listen", listen[gi][i], "--peer-ca", path,
				"--peers", strings.Join(c.Addrs, ",")}
			for _, v := range groups {
				if sp.VotersOf != "" && v.Prefix == sp.VotersOf {
					a = append(a, "--controllers", strings.Join(v.Addrs, ","))
				}
			}
			if c.Addrs[i] != listen[gi][i] {
				a = append(a, "--advertise", c.Addrs[i])
			}
			b := &Broker{t: t, Dir: dirs[gi][i], Args: append(a, sp.Args...), Addr: listen[gi][i], Admin: "127.0.0.1:0",
				CAFile: path, LogPath: filepath.Join(dirs[gi][i], "quiverd.log"), Public: c.Addrs[i]}
			c.Brokers[i] = b
			t.Cleanup(func() { b.Kill(); b.keepLog() })
			wg.Add(1)
			go func() { defer wg.Done(); b.Restart() }()
		}
		wg.Wait()
		c.Leader(t)
	}
	return groups
}

// ID is the broker id of b.
func (c *Controlled) ID(b *Broker) string {
	for i, x := range c.Brokers {
		if x == b {
			return fmt.Sprintf("%s%d", c.Prefix, i+1)
		}
	}
	return ""
}

// Leader waits until exactly one running broker of the group says it
// leads and every other running one follows (in the same epoch), and
// returns the leader.
func (c *Controlled) Leader(t testing.TB) *Broker {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, seen := c.leader()
		if leader != nil {
			return leader
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for one leader, the others following; last seen: %s", seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leader is the group's leader when exactly one running broker leads and
// the others follow it; else nil, and what each said.
func (c *Controlled) leader() (*Broker, string) {
	var leader *Broker
	var epoch uint64
	var seen []string
	rs := map[*Broker]*wire.Replication{}
	for _, b := range c.Brokers {
		if !b.Running() {
			seen = append(seen, c.ID(b)+": not running")
			continue
		}
		r := b.replication()
		rs[b] = r
		if r == nil {
			seen = append(seen, c.ID(b)+": no status")
			continue
		}
		seen = append(seen, fmt.Sprintf("%s: %s epoch %d %s", c.ID(b), r.Role, r.Epoch, r.Note))
		if r.Role == "leader" {
			if leader != nil {
				return nil, strings.Join(seen, "; ") + " (two leaders)"
			}
			leader, epoch = b, r.Epoch
		}
	}
	if leader == nil {
		return nil, strings.Join(seen, "; ")
	}
	for b, r := range rs {
		if b == leader {
			continue
		}
		if r == nil || r.Role != "follower" || r.Following == nil || !r.Following.Connected || r.Epoch > epoch {
			return nil, strings.Join(seen, "; ")
		}
	}
	return leader, ""
}

func (b *Broker) replication() *wire.Replication {
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + b.Admin + "/status")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var s wire.Status
	if json.NewDecoder(resp.Body).Decode(&s) != nil {
		return nil
	}
	return s.Replication
}

// Running reports whether the process runs (it was not killed or stopped
// for good).
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd != nil
}

// Client returns an SDK client that knows every broker of the group,
// closed at the end of the test.
func (c *Controlled) Client(t testing.TB, opts ...sdk.Opt) *sdk.Client {
	t.Helper()
	cl, err := sdk.NewClient(append([]sdk.Opt{sdk.WithBrokers(c.Addrs...), sdk.WithCAFile(c.Bundle),
		sdk.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond, time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// Conn is one client session with one broker at one address, bypassing
// the SDK's routing (a test that must keep talking to a broker the SDK
// would leave: an old leader cut off from its group). Requests run one
// at a time.
type Conn struct {
	qc  *quic.Conn
	qs  *quic.Stream
	br  *bufio.Reader
	seq uint64
}

// DialAt opens a session with the broker listening at addr, trusting the
// certificates in caFile.
func DialAt(ctx context.Context, addr, caFile string) (*Conn, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	qc, err := quic.DialAddr(ctx, addr, &tls.Config{RootCAs: pool, NextProtos: []string{wire.ALPN}, MinVersion: tls.VersionTLS13},
		&quic.Config{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: time.Second})
	if err != nil {
		return nil, err
	}
	qs, err := qc.OpenStreamSync(ctx)
	if err != nil {
		qc.CloseWithError(0, "")
		return nil, err
	}
	c := &Conn{qc: qc, qs: qs, br: bufio.NewReader(qs)}
	hello := wire.Hello{Version: wire.ProtocolVersion, ClientID: "testbroker-conn"}
	h, p, err := c.request(ctx, wire.TypeHello, hello.Append(nil))
	if err == nil && h.Type != wire.TypeHelloOK {
		err = fmt.Errorf("hello answered with type %d: %q", h.Type, p)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) request(ctx context.Context, typ wire.Type, payload []byte) (wire.Header, []byte, error) {
	c.seq++
	if d, ok := ctx.Deadline(); ok {
		c.qs.SetDeadline(d)
		defer c.qs.SetDeadline(time.Time{})
	}
	if _, err := c.qs.Write(wire.AppendFrame(nil, wire.Header{Type: typ, RequestID: c.seq}, payload)); err != nil {
		return wire.Header{}, nil, err
	}
	for {
		h, p, _, err := wire.ReadFrame(c.br, nil)
		if err != nil {
			return h, nil, err
		}
		if h.RequestID == c.seq {
			return h, p, nil
		}
	}
}

// Produce sends one message and returns its acknowledgement, or the
// broker's error (a *wire.Error) or the network's.
func (c *Conn) Produce(ctx context.Context, p wire.Produce) (wire.ProduceAck, error) {
	if p.Count == 0 {
		p.Count = 1
	}
	p.Queue = wire.AnyQueue
	return c.ProduceTo(ctx, p)
}

// ProduceTo is Produce to the queue p names.
func (c *Conn) ProduceTo(ctx context.Context, p wire.Produce) (wire.ProduceAck, error) {
	if p.Count == 0 {
		p.Count = 1
	}
	h, b, err := c.request(ctx, wire.TypeProduce, p.Append(nil))
	if err != nil {
		return wire.ProduceAck{}, err
	}
	if h.Type == wire.TypeError {
		werr, derr := wire.DecodeError(b)
		if derr != nil {
			return wire.ProduceAck{}, derr
		}
		return wire.ProduceAck{}, werr
	}
	var ack wire.ProduceAck
	return ack, wire.DecodeProduceAck(b, &ack)
}

// Close ends the session.
func (c *Conn) Close() { c.qc.CloseWithError(0, "done") }

// Role is the broker's replication role and epoch in its status ("" when
// it does not answer).
func (b *Broker) Role() (role string, epoch uint64) {
	r := b.replication()
	if r == nil {
		return "", 0
	}
	return r.Role, r.Epoch
}
