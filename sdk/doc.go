// Package sdk is Quiver's Go client: a Client holds one QUIC connection per
// broker; Producers send through it, Consumers consume as members of a
// consumer group, and Admin creates topics and reads status.
//
// It builds with a plain `go get`: nothing here imports the broker's
// packages (a test enforces it).
//
// # Basics
//
//	cl, err := sdk.NewClient(sdk.WithBrokers("127.0.0.1:7420"), sdk.WithCAFile("quiver-data/tls/cert.pem"))
//	defer cl.Close()
//	p, _ := cl.NewProducer()
//	res, err := p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("...")})
//
//	c, _ := cl.NewConsumer("billing", []string{"orders"})
//	err = c.Run(ctx, func(ctx context.Context, m *sdk.Message) error { ...; return nil })
//
// # Errors and retries
//
// Every error is classified once, by Retryable: broker codes by the table
// in sdk/wire, network failures and timeouts as retryable, a broker that
// refuses the session (HandshakeError) as not. Send retries the retryable
// ones within its deadline (WithSendTimeout, default 3s), on another broker
// when there is one, and otherwise returns a *SendError naming every
// attempt (incident 001).
//
// # Clusters, keys and fault avoidance
//
// The client learns the cluster (broker groups, their leaders and
// followers, which groups host each topic) from any broker it is given,
// refreshes it every 2 s (WithRouteRefresh) and at once after a routing
// error. A message without a key goes to the topic's groups in turn; a
// failed attempt is retried on another group. A message with a key goes
// to its key's queue, so that a key's messages are consumed in order;
// while that queue's group is down the send fails saying so, unless the
// producer has WithKeyFailover. Brokers whose sends failed or were slow are
// set aside and probed before full traffic (WithFaultAvoidance: adaptive by
// default, RocketMQ 5.1.4's table, or off; incident 002). Client.BrokerHealth
// shows what it decided.
//
// # Outbox
//
// WithOutbox(dir) keeps a send whose retries ran out on local disk and
// resends it in the background; the send returns no error with
// SendResult.Outboxed set, and a key's later messages wait behind it.
// Producer.Outbox reports what it holds.
//
// # Connections
//
// A connection is dialled on first use and redialled after a failure with
// exponential backoff and full jitter. A broker that refuses the session
// for a reason that is not the network's (credentials, protocol version,
// certificate) is reported through WithErrorHandler and redialled only
// after a much longer backoff, never in a tight loop (incident 004).
//
// # Caveats
//
//   - Delivery is at least once. A send whose answer was lost (timeout,
//     broken connection) is retried and may be stored twice; a consumer
//     re-reads what it processed but had not committed when it stopped.
//   - SendOneway is lossy by design: nothing is reported or retried.
//   - Run's handler must not call Close; Run must not run on two
//     goroutines at once.
package sdk
