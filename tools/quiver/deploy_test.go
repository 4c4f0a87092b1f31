//go:build !windows

package main

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/quivermq/quiver/daemon/config"
	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// The example production configuration is one quiverd accepts, and every
// metric the Grafana dashboard and the Prometheus alert rules use is one a
// broker serves on /metrics (labeled ones once they have a value: the test
// makes one of each).
func TestDeployFiles(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	if _, err := config.Load("../../deploy/quiverd.toml", none, nil); err != nil {
		t.Fatalf("deploy/quiverd.toml: %v", err)
	}
	used := map[string][]string{}
	name := regexp.MustCompile(`quiver_[a-z0-9_]+`)
	for _, f := range []string{"../../deploy/grafana/quiver-dashboard.json", "../../deploy/prometheus/quiver-alerts.yml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllString(string(data), -1) {
			if !slices.Contains(used[m], f) {
				used[m] = append(used[m], f)
			}
		}
	}
	if len(used) < 15 {
		t.Fatalf("only %d metrics used: %v", len(used), used)
	}

	b := testbroker.Start(t)
	cl := b.Client()
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if err := cl.Admin().CreateTopic(ctx, "orders", 1); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("o1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(ctx, &sdk.Message{Topic: "__reserved", Body: []byte("x")}); err == nil { // a produce error, by code
		t.Fatal("a send to a reserved topic was taken")
	}
	dead(t, b, "", "deploy-check", "o1") // a redelivery and a dead letter, by group
	metrics := string(b.Get("/metrics"))
	for m, files := range used {
		if !strings.Contains(metrics, "\n"+m+" ") && !strings.Contains(metrics, "\n"+m+"{") {
			t.Errorf("%s (used in %v) is not in /metrics", m, files)
		}
	}
}
