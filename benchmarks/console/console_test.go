package console

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quivermq/quiver/benchmarks/internal/proc"
	"github.com/quivermq/quiver/daemon/certs"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// The tests drive Debian's chromium (installed by the project's scripts:
// .ci/run, tools/install-browser.sh). Where there is none they skip, saying
// so, unless QUIVER_BROWSER=require (CI sets it): then they fail.

var (
	binDir  string // quiverd and quiver-bench
	browser string // chromium's path, "" if none
)

func TestMain(m *testing.M) {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" && os.Getenv("QUIVER_BROWSER") == "require" {
		fmt.Fprintln(os.Stderr, "QUIVER_BROWSER=require but no chromium in $PATH: run tools/install-browser.sh")
		os.Exit(1)
	}
	if browser != "" {
		dir, err := proc.Build(false)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		binDir = dir
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func needBrowser(t *testing.T) {
	t.Helper()
	if browser == "" {
		t.Skip("no chromium in $PATH (tools/install-browser.sh installs it; QUIVER_BROWSER=require makes this a failure)")
	}
}

// broker is one quiverd process.
type broker struct {
	p               *proc.Process
	addr, admin, ca string
	id, adminToken  string
	dir             string
	stopped         bool
	stopOnce        sync.Once
	t               testing.TB
}

var readyRE = regexp.MustCompile(`quiverd ready: quic (\S+), admin (\S+),`)

// startBroker starts quiverd in dir (a new one if "") with args.
func startBroker(t *testing.T, dir string, args ...string) *broker {
	t.Helper()
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "quiver-console-broker-"); err != nil {
			t.Fatal(err)
		}
	}
	all := append([]string{"--data", dir, "--admin", "127.0.0.1:0"}, args...)
	if !containsFlag(args, "--listen") {
		all = append(all, "--listen", "127.0.0.1:0")
	}
	p, m, err := proc.Start("quiverd", filepath.Join(binDir, "quiverd"), all, dir, readyRE, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b := &broker{p: p, addr: m[1], admin: m[2], ca: filepath.Join(dir, "tls", "cert.pem"), dir: dir, t: t}
	t.Cleanup(b.stop)
	return b
}

func containsFlag(args []string, f string) bool {
	for _, a := range args {
		if a == f {
			return true
		}
	}
	return false
}

func (b *broker) stop() {
	b.stopOnce.Do(func() {
		if err := b.p.Stop(15 * time.Second); err != nil {
			b.t.Errorf("quiverd: %v", err)
		}
	})
}

func (b *broker) url(frag string) string { return "http://" + b.admin + "/ui/#" + frag }

func (b *broker) status(t *testing.T) wire.Status {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+b.admin+"/status", nil)
	if b.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+b.adminToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s wire.Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func client(t *testing.T, ca string, addrs ...string) *sdk.Client {
	t.Helper()
	cl, err := sdk.NewClient(sdk.WithBrokers(addrs...), sdk.WithCAFile(ca), sdk.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// page is one browser tab, with what it wrote to its console.
type page struct {
	ctx  context.Context
	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
}

func newPage(t *testing.T) *page { return newPageFor(t, 2*time.Minute) }

// newPageFor is newPage for a test that runs longer than two minutes.
func newPageFor(t *testing.T, limit time.Duration) *page {
	t.Helper()
	needBrowser(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1300, 1000), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, limit)
	p := &page{ctx: ctx}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.msgs = append(p.msgs, m)
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancelT()
		cancel()
		cancelAlloc()
		<-done
	})
	return p
}

// errors are the console's errors and exceptions so far.
func (p *page) errors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range p.msgs {
		if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException || m.Type == chromedp.ConsoleWarning {
			out = append(out, m.String()+" at "+m.URL)
		}
	}
	return out
}

func (p *page) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		t.Fatalf("%s: %v (console: %v)", what, err, p.errors())
	}
}

// wait waits until the JavaScript expression is truthy (the page's state,
// polled; never a fixed sleep).
func (p *page) wait(t *testing.T, what, expr string) {
	t.Helper()
	if _, err := chromedp.Run(p.ctx, chromedp.Poll[any](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		body, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.querySelector('main').innerText.slice(0, 2000)`))
		t.Fatalf("waiting for %s (%s): %v\npage:\n%s\nconsole: %v", what, expr, err, body, p.errors())
	}
}

func (p *page) eval(t *testing.T, expr string, v any) {
	t.Helper()
	r, err := chromedp.Run(p.ctx, chromedp.Evaluate[json.RawMessage](`JSON.stringify(`+expr+`)`))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		t.Fatalf("%s: %s: %v", expr, r, err)
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%s: %s: %v", expr, s, err)
	}
}

// shot saves a screenshot of the page to $QUIVER_CONSOLE_SHOTS/name.png
// (make console-shots: docs/img/).
func (p *page) shot(t *testing.T, name string) {
	t.Helper()
	dir := os.Getenv("QUIVER_CONSOLE_SHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "console-"+name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// js quotes s as a JavaScript string.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Every page loads with no console error and shows the live broker's data;
// a message sent with a key is found by key through the browser's form.
func TestConsolePages(t *testing.T) {
	p := newPage(t)
	b := startBroker(t, "", "--broker-id", "console-b1")
	cl := client(t, b.ca, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cl.Admin().CreateTopic(ctx, "orders", 4); err != nil {
		t.Fatal(err)
	}
	prod, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for i := 0; i < 40; i++ {
		if _, err := prod.Send(ctx, &sdk.Message{Topic: "orders", Key: []byte(fmt.Sprintf("cust-%d", i)), Body: []byte(fmt.Sprintf(`{"order":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	// A group that consumed those 40 (every queue committed at its end)...
	cons, err := cl.NewConsumer("billing", []string{"orders"})
	if err != nil {
		t.Fatal(err)
	}
	var got []*sdk.Message
	for len(got) < 40 {
		msgs, err := cons.Poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, msgs...)
	}
	if err := cons.Commit(ctx, got...); err != nil {
		t.Fatal(err)
	}
	if err := cons.Close(); err != nil {
		t.Fatal(err)
	}
	// ... and lags by the 10 sent since, among them one to find by key.
	const body = `{"order":"needle","total":42.5}`
	res, err := prod.Send(ctx, &sdk.Message{Topic: "orders", Key: []byte("cust-needle"), Tags: []byte("vip"),
		Headers: []sdk.Header{{Key: "source", Value: []byte("web")}}, Body: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 9; i++ {
		if _, err := prod.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte(fmt.Sprintf(`{"late":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}

	p.do(t, "open the overview", chromedp.Navigate(b.url("overview")))
	p.wait(t, "the overview with the broker's data",
		`document.querySelector('#broker').textContent.includes('console-b1') && document.querySelectorAll('#page .stat').length >= 8 && document.querySelector('[data-warnings="0"]') != null`)
	p.wait(t, "50 sends since start", `[...document.querySelectorAll('.stat .sub')].some(e => e.textContent === '50 since start')`)
	p.wait(t, "the charts drawn", `document.querySelectorAll('svg[data-chart]').length === 6 && +document.querySelector('svg[data-chart=sends]')?.dataset.points > 0`)
	p.shot(t, "overview")

	p.do(t, "open the cluster page", chromedp.Navigate(b.url("cluster")))
	p.wait(t, "this broker drawn as its group's leader", `document.querySelector('svg[data-groups] g[data-broker="console-b1"][data-role=leader]') != null`)

	p.do(t, "open the topics page", chromedp.Navigate(b.url("topics")))
	p.wait(t, "topic orders with its 50 messages", `(() => { const r = document.querySelector('tr[data-topic=orders]'); return r && r.children[1].textContent === '4' && r.children[2].textContent === '50'; })()`)
	p.do(t, "open its queues", chromedp.Click(`tr[data-topic=orders]`))
	p.wait(t, "its 4 queues", `document.querySelectorAll('tr.sub').length === 4`)
	p.shot(t, "topics")

	p.do(t, "open the groups page", chromedp.Navigate(b.url("groups")))
	p.wait(t, "group billing with lag 10", `(() => { const r = document.querySelector('tr[data-group=billing]'); return r && r.lastChild.textContent === '10'; })()`)
	p.do(t, "open group billing", chromedp.Click(`tr[data-group=billing]`))
	p.wait(t, "billing's offsets per queue", `location.hash === '#groups?group=billing' && document.querySelectorAll('tr[data-queue^="orders/"]').length > 0`)
	p.wait(t, "billing's lag chart", `document.querySelector('svg[data-chart=queue-lag]')?.dataset.points > 0`)
	p.shot(t, "group")

	// The message browser, through its form.
	p.do(t, "open the message browser", chromedp.Navigate(b.url("messages")))
	p.wait(t, "the form", `document.querySelector('form.search') != null`)
	p.do(t, "search by key", chromedp.SetValue(`input[name=topic]`, "orders"), chromedp.SetValue(`select[name=mode]`, "key"))
	if _, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](`document.querySelector('select[name=mode]').dispatchEvent(new Event('change'))`)); err != nil {
		t.Fatal(err)
	}
	p.wait(t, "the key field shown, the offset's not", `document.querySelector('[data-field=key]').offsetParent != null && document.querySelector('[data-field=offset]').offsetParent == null`)
	p.do(t, "type the key", chromedp.SetValue(`input[name=key]`, "cust-needle"))
	p.do(t, "press Show", chromedp.Click(`form.search button`))
	p.wait(t, "the message found by its key",
		fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-offset="%d"][data-queue="%d"]'); return r && r.textContent.includes('cust-needle') && r.textContent.includes('vip') && r.textContent.includes(%s); })()`,
			res.Offset, res.Queue, js(body)))
	p.do(t, "open it", chromedp.Click(fmt.Sprintf(`tr[data-offset="%d"]`, res.Offset)))
	p.wait(t, "its header and body", `(() => { const d = document.querySelector('tr.sub:not([hidden])'); return d && d.textContent.includes('source') && d.textContent.includes('web') && d.querySelector('pre.body').textContent === `+js(body)+`; })()`)
	p.shot(t, "messages")

	// By offset, from a link: the first page of queue 0 and its next page.
	p.do(t, "browse queue 0", chromedp.Navigate(b.url("messages?topic=orders&queue=0&offset=0&limit=2")))
	p.wait(t, "two messages of queue 0 and a next page", `document.querySelectorAll('tr[data-queue="0"][data-offset]').length === 2 && [...document.querySelectorAll('#results a')].some(a => a.textContent.startsWith('next page'))`)
	// A bad search says why.
	p.do(t, "an unknown topic", chromedp.Navigate(b.url("messages?topic=nope&queue=0&offset=0")))
	p.wait(t, "the broker's error shown", `(() => { const e = document.querySelector('[data-error]'); return e && e.textContent.includes('nope'); })()`)
	// That 404 is the browser's "failed to load resource" entry; nothing else.
	var errs []string
	for _, e := range p.errors() {
		if !strings.Contains(e, "404") {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		t.Errorf("console errors: %v", errs)
	}
}

// A chart moves while quiver-bench runs: the sends chart's newest point
// and the latency percentiles come from the load.
func TestConsoleChartMovesUnderLoad(t *testing.T) {
	p := newPage(t)
	b := startBroker(t, "")
	p.do(t, "open the overview", chromedp.Navigate(b.url("overview")))
	p.wait(t, "an idle broker's first points", `+document.querySelector('svg[data-chart=sends]')?.dataset.points >= 2`)
	var before string
	p.eval(t, `document.querySelector('svg[data-chart=sends] polyline[data-series="sends/s"]').getAttribute('points')`, &before)

	bench := exec.Command(filepath.Join(binDir, "quiver-bench"), "--broker", b.addr, "--ca", b.ca, "--duration", "5s", "--warmup", "0s",
		"--producers", "2", "--topic", "bench", "--rate", "2000", "--json")
	out := make(chan error, 1)
	var stdout strings.Builder
	bench.Stdout, bench.Stderr = &stdout, &stdout
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { out <- bench.Wait() }()
	p.wait(t, "sends/s above 500 in the chart", `JSON.parse(document.querySelector('svg[data-chart=sends]')?.dataset.last || '{}')['sends/s'] > 500`)
	p.wait(t, "a p99 send latency", `JSON.parse(document.querySelector('svg[data-chart=latency]')?.dataset.last || '{}')['p99'] > 0`)
	var after string
	p.eval(t, `document.querySelector('svg[data-chart=sends] polyline[data-series="sends/s"]').getAttribute('points')`, &after)
	if after == before {
		t.Errorf("the sends line did not move: %s", after)
	}
	p.wait(t, "the sends card", `parseFloat(document.querySelector('.stat .value')?.textContent) > 0`)
	p.shot(t, "overview-load")
	if err := <-out; err != nil {
		t.Fatalf("quiver-bench: %v\n%s", err, stdout.String())
	}
	if errs := p.errors(); len(errs) > 0 {
		t.Errorf("console errors: %v", errs)
	}
}

// With an admin token the page asks for it; a wrong one is refused, the
// right one shows the data, and no data is served without it.
func TestConsoleToken(t *testing.T) {
	p := newPage(t)
	sum := sha256.Sum256([]byte("s3cret-token"))
	b := startBroker(t, "", "--admin-token-sha256", hex.EncodeToString(sum[:]), "--broker-id", "locked-b1")
	resp, err := http.Get("http://" + b.admin + "/ui/api/status")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || strings.Contains(string(data), "locked-b1") {
		t.Fatalf("the console's data without the token: %d %s", resp.StatusCode, data)
	}
	p.do(t, "open the console", chromedp.Navigate(b.url("overview")))
	p.wait(t, "the token form", `!document.querySelector('#login').hidden`)
	p.do(t, "a wrong token", chromedp.SetValue(`#login-token`, "guess"), chromedp.Click(`#login button`))
	p.wait(t, "the refusal", `!document.querySelector('#login').hidden && document.querySelector('#login-error').textContent.includes('refused')`)
	p.do(t, "the right token", chromedp.SetValue(`#login-token`, "s3cret-token"), chromedp.Click(`#login button`))
	p.wait(t, "the broker's data", `document.querySelector('#login').hidden && document.querySelector('#broker').textContent.includes('locked-b1') && document.querySelectorAll('#page .stat').length >= 8`)
	// The 401s are the browser's "failed to load resource" entries; nothing else.
	for _, e := range p.errors() {
		if !strings.Contains(e, "401") {
			t.Errorf("console error: %s", e)
		}
	}
}

// The cluster page of a group of three under the controller: the quorum,
// the leader and its two followers, with their lag, as a picture.
func TestConsoleCluster(t *testing.T) {
	p := newPage(t)
	const n = 3
	var dirs, addrs []string
	var bundle []byte
	for i := 0; i < n; i++ {
		dir, err := os.MkdirTemp("", "quiver-console-cluster-")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := certs.LoadOrCreate(filepath.Join(dir, "tls"), []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		pem, err := os.ReadFile(filepath.Join(dir, "tls", certs.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, pem...)
		dirs, addrs = append(dirs, dir), append(addrs, freeUDP(t))
	}
	bundlePath := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundlePath, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	brokers := make([]*broker, n)
	var wg sync.WaitGroup
	for i := range brokers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			brokers[i] = startBroker(t, dirs[i], "--broker-id", fmt.Sprintf("b%d", i+1), "--listen", addrs[i],
				"--peer-ca", bundlePath, "--peers", strings.Join(addrs, ","), "--min-insync", "1")
		}()
	}
	wg.Wait()
	var leader *broker
	deadline := time.Now().Add(60 * time.Second)
	for leader == nil {
		if time.Now().After(deadline) {
			t.Fatal("no leader elected in 60 s")
		}
		for _, b := range brokers {
			if s := b.status(t); s.Replication != nil && s.Replication.Role == "leader" && s.Replication.InSync == n-1 {
				leader = b
			}
		}
		if leader == nil {
			time.Sleep(100 * time.Millisecond) // polling the brokers' state
		}
	}
	cl := client(t, bundlePath, addrs...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cl.Admin().CreateTopic(ctx, "orders", 2); err != nil {
		t.Fatal(err)
	}
	prod, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for i := 0; i < 20; i++ {
		if _, err := prod.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("replicated")}); err != nil {
			t.Fatal(err)
		}
	}
	p.do(t, "open the leader's cluster page", chromedp.Navigate(leader.url("cluster")))
	p.wait(t, "the quorum, one leader and two followers drawn",
		`document.querySelectorAll('g[data-broker]').length === 3 && document.querySelectorAll('g[data-broker][data-role=leader]').length === 1 && document.querySelector('svg[data-groups]').textContent.includes('Controller quorum')`)
	p.wait(t, "the followers' table with their lag", `[...document.querySelectorAll('h2')].some(h => h.textContent === "This leader's followers") && document.querySelectorAll('table')[1].querySelectorAll('tbody tr').length === 2`)
	p.shot(t, "cluster")
	if errs := p.errors(); len(errs) > 0 {
		t.Errorf("console errors: %v", errs)
	}
}

func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}
