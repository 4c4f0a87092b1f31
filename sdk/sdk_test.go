package sdk

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The one classification of errors (incident 001): the producer retries
// exactly what this table calls retryable.
func TestRetryableTable(t *testing.T) {
	// retry: the send is retried (on another group when it has no key);
	// fault: the broker is set aside (fault avoidance); code: the name an
	// Attempt gives it.
	cases := []struct {
		name         string
		err          error
		retry, fault bool
		code         string
	}{
		{"BUSY", &wire.Error{Code: wire.CodeBusy}, true, true, "BUSY"},
		{"wrapped BUSY", fmt.Errorf("attempt: %w", &wire.Error{Code: wire.CodeBusy}), true, true, "BUSY"},
		{"TIMEOUT", &wire.Error{Code: wire.CodeTimeout}, true, true, "TIMEOUT"},
		{"NOT_LEADER", &wire.Error{Code: wire.CodeNotLeader}, true, false, "NOT_LEADER"},
		{"NOT_ENOUGH_REPLICAS", &wire.Error{Code: wire.CodeNotEnoughReplicas}, true, true, "NOT_ENOUGH_REPLICAS"},
		{"STOPPING", &wire.Error{Code: wire.CodeStopping}, true, true, "STOPPING"},
		{"STORAGE_FAILED", &wire.Error{Code: wire.CodeStorageFailed}, true, true, "STORAGE_FAILED"},
		{"TOO_LARGE", &wire.Error{Code: wire.CodeTooLarge}, false, false, "TOO_LARGE"},
		{"INVALID", &wire.Error{Code: wire.CodeInvalid}, false, false, "INVALID"},
		{"UNAUTHORIZED", &wire.Error{Code: wire.CodeUnauthorized}, false, false, "UNAUTHORIZED"},
		{"UNKNOWN_TOPIC", &wire.Error{Code: wire.CodeUnknownTopic}, false, false, "UNKNOWN_TOPIC"},
		{"unknown code", &wire.Error{Code: 999}, false, false, "CODE_999"},
		{"network", &NetError{Broker: "b", Err: errors.New("connection reset")}, true, true, "NETWORK"},
		{"no answer in time", &NetError{Broker: "b", Err: ErrTimeout}, true, true, "TIMEOUT"},
		{"handshake refused", &HandshakeError{Broker: "b", Err: &wire.Error{Code: wire.CodeUnauthorized}}, false, true, "UNAUTHORIZED"},
		{"handshake refused with a retryable code inside", &HandshakeError{Broker: "b", Err: &wire.Error{Code: wire.CodeBusy}}, false, true, "BUSY"},
		{"untrusted certificate", &HandshakeError{Broker: "b", Err: ErrUntrusted}, false, true, "HANDSHAKE"},
		{"closed", ErrClosed, false, false, "CLOSED"},
		{"cancelled", context.Canceled, false, false, "CANCELLED"},
		{"cancelled while dialling", &NetError{Broker: "b", Err: fmt.Errorf("connecting: %w", context.Canceled)}, true, false, "CANCELLED"},
		{"deadline", context.DeadlineExceeded, false, false, "TIMEOUT"},
		{"anything else", errors.New("?"), false, false, "ERROR"},
	}
	for _, c := range cases {
		if got := Retryable(c.err); got != c.retry {
			t.Errorf("%s: Retryable = %v, want %v", c.name, got, c.retry)
		}
		if got := brokerFault(c.err); got != c.fault {
			t.Errorf("%s: brokerFault = %v, want %v", c.name, got, c.fault)
		}
		if got := codeOf(c.err); got != c.code {
			t.Errorf("%s: code %q, want %q", c.name, got, c.code)
		}
	}
	if Retryable(nil) {
		t.Error("nil is retryable")
	}
}

func TestSendErrorNamesEveryAttempt(t *testing.T) {
	e := &SendError{Topic: "orders", Err: &wire.Error{Code: wire.CodeBusy, Message: "waited 230ms"}, Attempts: []Attempt{
		{Broker: "b1:7420", Err: &wire.Error{Code: wire.CodeBusy, Message: "waited 230ms"}, Latency: 231 * time.Millisecond},
		{Broker: "b2:7420", Err: &NetError{Broker: "b2:7420", Err: ErrTimeout}, Latency: time.Second},
	}}
	msg := e.Error()
	for _, want := range []string{"orders", "deadline spent", "2 attempt", "b1:7420", "BUSY", "231ms", "b2:7420", "no answer in time"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not contain %q", msg, want)
		}
	}
	var be *wire.Error
	if !errors.As(e, &be) || be.Code != wire.CodeBusy {
		t.Error("SendError does not unwrap to its last error")
	}
}

// Reconnect delays grow exponentially with full jitter up to the cap;
// failures that are not the network's start higher and are never shorter
// than half their delay (incident 004: no unlucky tight loop).
func TestBackoff(t *testing.T) {
	p := backoffPolicy{base: 100 * time.Millisecond, max: 10 * time.Second, hardBase: 5 * time.Second, hardMax: 5 * time.Minute}
	for failures := 1; failures <= 20; failures++ {
		ceil := min(p.base<<min(failures-1, 30), p.max)
		hardCeil := min(p.hardBase<<min(failures-1, 30), p.hardMax)
		for i := 0; i < 200; i++ {
			if d := p.delay(failures, false); d < 0 || d > ceil {
				t.Fatalf("network failure %d: delay %v outside [0, %v]", failures, d, ceil)
			}
			if d := p.delay(failures, true); d < hardCeil/2 || d > hardCeil {
				t.Fatalf("non-network failure %d: delay %v outside [%v, %v]", failures, d, hardCeil/2, hardCeil)
			}
		}
	}
}

func TestClientNeedsTrustAndBrokers(t *testing.T) {
	if _, err := NewClient(WithBrokers("127.0.0.1:1")); !errors.Is(err, ErrNoTrust) {
		t.Fatalf("no trust: %v", err)
	}
	if _, err := NewClient(WithBrokers("127.0.0.1:1"), WithCAFile("/nonexistent.pem")); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
	if _, err := NewClient(WithBrokers("127.0.0.1:1"), WithFingerprint("abc")); err == nil {
		t.Fatal("a malformed fingerprint was accepted")
	}
	fp := strings.Repeat("ab", 32)
	if _, err := NewClient(WithFingerprint(fp)); err == nil {
		t.Fatal("a client without brokers was accepted")
	}
	if _, err := NewClient(WithBrokers("127.0.0.1:1"), WithFingerprint(fp), WithIdleTimeout(100*time.Millisecond)); err == nil || !strings.Contains(err.Error(), "idle timeout") {
		t.Fatalf("a 100ms idle timeout: %v", err)
	}
}

// A send to a broker nobody listens on fails with a retryable network
// error after its deadline, naming its attempts; Close leaves no goroutine
// (TestMain checks).
func TestSendToNowhereFailsWithinDeadline(t *testing.T) {
	cl, err := NewClient(WithBrokers("127.0.0.1:9"), WithFingerprint(strings.Repeat("ab", 32)), WithDialTimeout(200*time.Millisecond),
		WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	p, err := cl.NewProducer(WithSendTimeout(700*time.Millisecond), WithAttemptTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Send(context.Background(), &Message{Topic: "t", Body: []byte("x")})
	var se *SendError
	if !errors.As(err, &se) || len(se.Attempts) < 2 || !Retryable(se.Err) {
		t.Fatalf("send to nowhere: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(context.Background(), &Message{Topic: "t"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
}
