// Package crashtest is the harness of Quiver's crash tests: it runs a
// child process (the test binary itself, running one named test), reads the
// acknowledgements it prints, and kills it with SIGKILL at a chosen point.
// The caller then reopens what the child wrote and checks that everything
// acknowledged survived.
package crashtest

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

// Rounds is QUIVER_CRASH_ROUNDS when set (`make crash` raises it), else def.
func Rounds(def int) int {
	if n, err := strconv.Atoi(os.Getenv("QUIVER_CRASH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return def
}

// PowerCuts is how many simulated power cuts a power-cut property test
// makes: QUIVER_POWERCUT_ROUNDS when set (`make crash`), else def, or 4
// with -short.
func PowerCuts(t testing.TB, def int) int {
	if s := os.Getenv("QUIVER_POWERCUT_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("QUIVER_POWERCUT_ROUNDS=%q", s)
		}
		return n
	}
	if testing.Short() {
		return 4
	}
	return def
}

// KillAfter runs the test named child of the current test binary with env
// added, waits for it to print "ready", hands every later line to onLine,
// and sends SIGKILL right after the n-th. Lines printed before the kill
// landed are still delivered. It fails t if the child does not start, exits
// by itself before the kill, or onLine returns an error.
func KillAfter(t testing.TB, child string, env []string, n int, onLine func(line string) error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+child+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("crash child %s did not start: %q", child, sc.Text())
	}
	seen := 0
	for sc.Scan() {
		if err := onLine(sc.Text()); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("crash child %s: %v", child, err)
		}
		if seen++; seen == n {
			cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	cmd.Wait()
	if seen < n {
		t.Fatalf("crash child %s exited by itself after %d lines, before the kill at %d", child, seen, n)
	}
}
