package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/daemon/acl"
	"github.com/quivermq/quiver/daemon/admin"
	"github.com/quivermq/quiver/daemon/broker"
	"github.com/quivermq/quiver/daemon/certs"
	"github.com/quivermq/quiver/daemon/config"
	"github.com/quivermq/quiver/daemon/console"
	"github.com/quivermq/quiver/daemon/controller"
	"github.com/quivermq/quiver/daemon/logging"
	"github.com/quivermq/quiver/daemon/peer"
	"github.com/quivermq/quiver/daemon/server"
	"github.com/quivermq/quiver/daemon/store"
	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/ioengine"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// serveFlags adds the broker's settings to cmd and returns the function
// that loads the configuration once flags are parsed.
func serveFlags(cmd *cobra.Command) func() (config.Config, error) {
	var path string
	cmd.Flags().StringVar(&path, "config", "", "TOML configuration file (flags and QUIVER_* variables override it)")
	apply := config.Flags(cmd.Flags())
	return func() (config.Config, error) { return config.Load(path, os.LookupEnv, apply) }
}

// newServeLogger builds the daemon's logger: rate limited per cause, to a
// rotated file or stderr.
func newServeLogger(c config.Config) (*slog.Logger, io.Closer, error) {
	var out io.Writer = os.Stderr
	var closer io.Closer = io.NopCloser(nil)
	if c.LogFile != "" {
		rf, err := logging.OpenRotating(c.LogFile, c.LogMax, 3)
		if err != nil {
			return nil, nil, fmt.Errorf("log file: %w", err)
		}
		out, closer = rf, rf
	}
	var lv slog.Level
	lv.UnmarshalText([]byte(c.LogLevel))
	ho := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(out, ho)
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(out, ho)
	}
	return slog.New(logging.RateLimited(h, logging.Limit{})), closer, nil
}

// serve runs the broker until SIGTERM or SIGINT, then stops gracefully:
// stop accepting, answer what was accepted, sync and close the log.
func serve(c config.Config) error {
	logger, logClose, err := newServeLogger(c)
	if err != nil {
		return err
	}
	defer logClose.Close()
	if err := os.MkdirAll(c.Data, 0o755); err != nil {
		return err
	}

	var cert tls.Certificate
	var fp string
	if c.TLSCert != "" {
		cert, fp, err = certs.Load(c.TLSCert, c.TLSKey)
	} else {
		host, _, _ := net.SplitHostPort(c.Listen)
		cert, fp, err = certs.LoadOrCreate(filepath.Join(c.Data, "tls"), []string{host})
	}
	if err != nil {
		return err
	}

	dur, _ := qlog.ParseDurability(c.Durability)
	var faults *ioengine.Faulty
	so := store.Options{Engine: c.Engine, Log: qlog.Options{
		SegmentSize: c.SegmentSize, Durability: dur, AsyncInterval: c.AsyncInterval.Duration,
		MaxQueueWait: c.MaxQueueWait.Duration, QueueDepth: c.QueueDepth,
		RetentionAge: c.RetentionAge.Duration, RetentionBytes: c.RetentionSize,
	}, Index: index.Options{MaxOpenFiles: fileBudget(c.MaxOpenFiles, logger)}}
	if c.DebugFaults {
		logger.Warn("debug faults are enabled: POST /debug/faults/stall on the admin address stalls the disk; never use this in production")
		so.WrapEngine = func(e ioengine.Engine) ioengine.Engine { faults = ioengine.NewFaulty(e); return faults }
	}
	ro := broker.ReplicationOptions{Role: c.Role, LeaderAddr: c.Leader, Advertise: c.Advertise, Peers: c.Peers,
		MinInsync: c.MinInsync, Heartbeat: c.ReplicaHeartbeat.Duration,
		Timeout: c.ReplicaTimeout.Duration, InsyncLag: c.ReplicaLag.Duration, AckTimeout: c.ReplicaAckWait.Duration,
		CatchupRate: c.ReplicaCatchup << 20}
	peerCA := c.PeerCA
	if peerCA == "" {
		peerCA = filepath.Join(c.Data, "tls", certs.CertFile)
	}
	voters := c.Voters()
	ptls, err := peerTLS(peerCA)
	if err != nil && (c.Role == "follower" || len(c.Peers) > 0 || len(voters) > 0) {
		return err
	}
	// Brokers reach each other on peer connections: both sides present a
	// certificate of the bundle.
	var id *peer.Identity
	var mux *peer.Mux
	if ptls != nil {
		id = &peer.Identity{Cert: cert, Roots: ptls.RootCAs}
		host, _, _ := net.SplitHostPort(c.Listen)
		ro.Dialer = peer.NewDialer(id, net.ParseIP(host))
		defer ro.Dialer.Close()
		mux = peer.NewMux(logger)
		defer mux.Close()
	}
	if len(voters) > 0 {
		ro.Controller = &controller.Options{Voters: voters, Heartbeat: c.ControllerHeartbeat.Duration, Session: c.ControllerSession.Duration}
	}
	co := broker.ClusterOptions{Group: c.Group, Seeds: c.Cluster, Refresh: c.ClusterRefresh.Duration}
	if seeds := append(append([]string(nil), c.Peers...), c.Cluster...); len(seeds) > 0 && ptls != nil && ro.Controller == nil {
		// The brokers ask each other over QUIC, with the SDK.
		peers, err := sdk.NewClient(sdk.WithBrokers(seeds...), sdk.WithTLS(ptls), sdk.WithCredentials([]byte(c.PeerToken)),
			sdk.WithClientID("peer:"+c.BrokerID), sdk.WithLogger(logger.With("component", "cluster")),
			sdk.WithDialTimeout(2*time.Second), sdk.WithReconnectBackoff(100*time.Millisecond, 5*time.Second, 5*time.Second))
		if err != nil {
			return err
		}
		defer peers.Close()
		co.Ask = func(ctx context.Context, addr string) (wire.RouteBroker, error) {
			return peers.Admin().Describe(ctx, addr)
		}
	} else if len(c.Cluster) > 0 && ptls == nil {
		return errors.New("cluster needs peer_ca: the certificates of the cluster's brokers")
	}
	b, err := broker.New(broker.Options{ID: c.BrokerID, Dir: c.Data, Store: so, NoAutoCreate: !c.AutoCreateTopics,
		DefaultQueues: c.DefaultQueues, Logger: logger, Replication: ro, Cluster: co, Disk: broker.DiskOptions{Reserve: c.DiskReserve}})
	if err != nil {
		return err
	}
	if mux != nil {
		b.ServePeers(mux)
	}
	resetKey, err := certs.ResetKey(cert)
	if err != nil {
		b.Close()
		return err
	}
	var acls *acl.Holder
	if c.ACL != "" {
		a, err := acl.LoadFile(c.ACL)
		if err != nil {
			b.Close()
			return err
		}
		acls = acl.NewHolder(a)
		logger.Info("ACL loaded", "file", c.ACL, "principals", a.Len())
	}
	var clientCAs *x509.CertPool
	if c.ClientCA != "" {
		if clientCAs, err = certPool("client_ca", c.ClientCA); err != nil {
			b.Close()
			return err
		}
	}
	srv, err := server.Listen(server.Options{Listen: c.Listen, TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		Broker: b, Tokens: c.Tokens, ACL: acls, ClientCAs: clientCAs, Logger: logger, Identity: id, Peers: mux, ResetKey: (*quic.StatelessResetKey)(&resetKey)})
	if err != nil {
		b.Close()
		return err
	}
	defer srv.Close()
	advertise := c.Advertise
	if advertise == "" {
		advertise = srv.Addr().String()
		b.SetAdvertise(advertise)
	}
	// A voter of the controller quorum runs its raft member here, on the
	// same listener (peer streams).
	var svc *controller.Service
	if ro.Controller != nil && slices.Contains(voters, advertise) {
		svc, err = controller.Start(controller.Options{ID: c.BrokerID, Addr: advertise, Voters: voters, Dir: filepath.Join(c.Data, "controller"),
			Dialer: ro.Dialer, Heartbeat: ro.Controller.Heartbeat, Session: ro.Controller.Session, Logger: logger}, mux)
		if err != nil {
			srv.Shutdown(context.Background())
			b.Close()
			return err
		}
	} else if ro.Controller != nil && mux != nil {
		mux.Handle(wire.TypeCtlSession, notAVoter(voters))
	}
	b.StartController(svc)
	status := func(sel wire.StatusSel) wire.Status {
		s := b.StatusOf(sel)
		s.Broker.Listen, s.Broker.Admin = srv.Addr().String(), c.Admin
		s.Connections = srv.Connections()
		s.ClientsSetAside = srv.ClientsSetAside()
		return s
	}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve() }()

	var hs *http.Server
	adminAddr := ""
	stopConsole := func() {} // the console samples the broker: stopped before it closes
	if c.Admin != "" {
		ln, err := net.Listen("tcp", c.Admin)
		if err != nil {
			srv.Shutdown(context.Background())
			b.Close()
			return fmt.Errorf("admin: %w", err)
		}
		adminAddr = ln.Addr().String()
		adminTok, _ := hex.DecodeString(c.AdminToken) // checked by Validate
		con := console.New(console.Options{Broker: b, Status: status})
		conCtx, cancelConsole := context.WithCancel(context.Background())
		conDone := make(chan struct{})
		go func() { defer close(conDone); con.Run(conCtx) }()
		stopConsole = func() { cancelConsole(); <-conDone }
		defer stopConsole() // every return from here on; twice is harmless
		hs = &http.Server{Handler: admin.Handler(admin.Options{Registry: b.Registry(), Status: status,
			Healthy: func() error { return b.Log().Err() }, Faults: faults, Pprof: c.AdminPprof, TokenSHA256: adminTok,
			UI: con.Pages(), UIAPI: con.API()}),
			ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
	}

	logger.Info("quiverd ready", "listen", srv.Addr().String(), "admin", adminAddr, "data", c.Data,
		"engine", b.Log().EngineName(), "durability", b.Log().Durability().String(), "broker_id", c.BrokerID)
	// The fingerprint goes to stdout too: clients pin it (--fingerprint).
	fmt.Printf("quiverd ready: quic %s, admin %s, data %s\ncertificate sha256 fingerprint: %s\n",
		srv.Addr(), adminAddr, c.Data, fp)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sig)
wait:
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				reloadACL(c.ACL, acls, logger)
				continue
			}
			logger.Info("stopping", "signal", s.String())
			break wait
		case err := <-srvErr:
			if err != nil {
				logger.Error("QUIC server failed; stopping", "err", err)
			}
			break wait
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	// Under a controller, a leader hands its group over first (sends go to
	// the new leader, not to an error) and a follower leaves the in-sync
	// set; a voter that leads the quorum hands that over too.
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	if err := b.HandOff(hctx); err != nil {
		logger.Warn("stopping without a handoff", "err", err)
	}
	hcancel()
	if svc != nil {
		svc.Close()
	}
	if err := srv.Shutdown(ctx); err != nil {
		errs = append(errs, err)
	}
	if hs != nil {
		hs.Shutdown(ctx)
	}
	stopConsole()
	if err := b.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing the log: %w", err))
	}
	if len(errs) == 0 {
		logger.Info("stopped cleanly: every accepted message is synced")
	}
	return errors.Join(errs...)
}

// peerTLS trusts the certificates in a PEM file for connections to peers.
func peerTLS(path string) (*tls.Config, error) {
	pool, err := certPool("peer_ca", path)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// certPool reads the certificates of a PEM file (the setting name is for
// the error).
func certPool(setting, path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %s holds no PEM certificate", setting, path)
	}
	return pool, nil
}

// notAVoter answers a controller session on a broker that is not one of
// the voters (a misconfigured peer): with the voters to ask.
func notAVoter(voters []string) peer.Handler {
	return func(s *peer.Stream, h wire.Header, _ []byte) {
		defer s.QS.Close()
		msg := &controller.Msg{Kind: "state", Info: &controller.Info{Voters: voters}}
		b, _ := controller.AppendMsg(nil, msg)
		s.QS.SetWriteDeadline(time.Now().Add(time.Second))
		s.QS.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCtlMsg}, b))
	}
}

// reloadACL replaces the ACL with the file's contents (SIGHUP). Sessions
// stay connected: each request is checked against the new one, by the
// name of the principal its session authenticated as. A file that does not
// parse changes nothing.
func reloadACL(path string, h *acl.Holder, logger *slog.Logger) {
	if h == nil {
		logger.Info("SIGHUP: no ACL configured, nothing to reload")
		return
	}
	a, err := acl.LoadFile(path)
	if err != nil {
		logger.Error("SIGHUP: the ACL file has an error; the previous ACL stays in force", "err", err)
		return
	}
	h.Store(a)
	logger.Info("ACL reloaded", "file", path, "principals", a.Len())
}
