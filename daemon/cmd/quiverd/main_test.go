package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The tests run the real binary: this test executable re-executes itself as
// quiverd when QUIVERD_TEST_MAIN is set.
func TestMain(m *testing.M) {
	if os.Getenv("QUIVERD_TEST_MAIN") == "1" {
		os.Args = append([]string{"quiverd"}, strings.Fields(os.Getenv("QUIVERD_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func quiverd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "QUIVERD_TEST_MAIN=1", "QUIVERD_ARGS="+strings.Join(args, " "))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestDemoVerifyCorruptRepair(t *testing.T) {
	data := t.TempDir()
	out, err := quiverd(t, "demo", "--data", data, "--count", "500", "--appenders", "4")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"ioengine selected", "appended 500 messages", "orders/0 offset", "-499 -> payments/1", `"Dispatched"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out)
		}
	}
	// A second run recovers the first and continues the queue offsets.
	out, err = quiverd(t, "demo", "--data", data, "--count", "500", "--appenders", "4")
	if err != nil || !strings.Contains(out, `"Max": 250`) {
		t.Fatalf("second demo: %v\n%s", err, out)
	}
	out, err = quiverd(t, "verify", "--data", data)
	if err != nil || !strings.Contains(out, "1000 records") || !strings.Contains(out, "no damage found") {
		t.Fatalf("verify: %v\n%s", err, out)
	}

	// Damage a record early in the log: verify reports it, the store
	// refuses to open and names repair, repair truncates there.
	seg := filepath.Join(data, "log", "00000000000000000000.seg")
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	f.ReadAt(b, 5000)
	b[0] ^= 0xff
	f.WriteAt(b, 5000)
	f.Close()

	out, err = quiverd(t, "verify", "--data", data)
	if err == nil || !strings.Contains(out, "first damaged record") || !strings.Contains(out, "quiverd repair --data "+data) {
		t.Fatalf("verify of a damaged log: %v\n%s", err, out)
	}
	// Startup verifies what follows the checkpoint; with the checkpoint
	// behind the damage (as after a crash), the store refuses to open.
	if err := os.Remove(filepath.Join(data, "log", "checkpoint")); err != nil {
		t.Fatal(err)
	}
	out, err = quiverd(t, "demo", "--data", data, "--count", "10")
	if err == nil || !strings.Contains(out, "quiverd repair --data "+data) || !strings.Contains(out, seg) {
		t.Fatalf("demo on a damaged log should refuse, naming the file and repair: %v\n%s", err, out)
	}
	out, err = quiverd(t, "repair", "--data", data)
	if err != nil || !strings.Contains(out, "truncated the log at position") {
		t.Fatalf("repair: %v\n%s", err, out)
	}
	out, err = quiverd(t, "verify", "--data", data)
	if err != nil || !strings.Contains(out, "no damage found") {
		t.Fatalf("verify after repair: %v\n%s", err, out)
	}
}
