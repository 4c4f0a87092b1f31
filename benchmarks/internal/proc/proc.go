// Package proc runs a system under test as a child process: in its own
// process group (a Ctrl-C reaches quiver-bench, which stops it in order),
// in a temporary data directory, ready when a line of its stdout says so,
// stopped with SIGTERM.
package proc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Process is a running child.
type Process struct {
	Name    string
	Dir     string // its data directory, removed by Stop
	LogPath string // its stdout and stderr

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// TempDir makes a data directory under parent (os.TempDir() if empty).
// The note is not empty when fsync costs nothing there (tmpfs), which
// makes durability figures meaningless.
func TempDir(parent, pattern string) (dir, note string, err error) {
	dir, err = os.MkdirTemp(parent, pattern)
	if err != nil {
		return "", "", err
	}
	if onTmpfs(dir) {
		note = fmt.Sprintf("data directory %s is on tmpfs: fsync costs nothing there; use --data-dir on a real disk", dir)
	}
	return dir, note, nil
}

// Start runs bin with args, with dir as its data directory, and waits up
// to timeout for a line of its stdout that matches ready, whose submatches
// it returns. On failure the process is stopped, dir removed, and the
// error quotes the end of its log.
func Start(name, bin string, args []string, dir string, ready *regexp.Regexp, timeout time.Duration) (*Process, []string, error) {
	p := &Process{Name: name, Dir: dir, LogPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.LogPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
	cmd.SysProcAttr = childAttr() // its own process group (proc_*.go)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	p.cmd = cmd
	found := make(chan []string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if m := ready.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m
				sent = true
			}
		}
		io.Copy(logf, stdout)
	}()
	go func() {
		<-copied // Wait closes stdout: read it all first
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case m := <-found:
		return p, m, nil
	case <-p.done:
		err = fmt.Errorf("%s exited before it was ready (%v); its log:\n%s", name, p.err, p.Tail(20))
	case <-timer.C:
		err = fmt.Errorf("%s not ready in %s; its log:\n%s", name, timeout, p.Tail(20))
	}
	p.Stop(5 * time.Second)
	return nil, nil, err
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Tail returns the last n lines of the process's log.
func (p *Process) Tail(n int) string {
	data, _ := os.ReadFile(p.LogPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// Stop sends SIGTERM, waits up to grace for the process to exit (then
// kills it), and removes its data directory. The error is the exit's,
// when it was not clean.
func (p *Process) Stop(grace time.Duration) error {
	var err error
	sig := p.cmd.Process.Signal(syscall.SIGTERM)
	if sig != nil && !errors.Is(sig, os.ErrProcessDone) {
		// No SIGTERM on this platform (Windows): killed.
		p.cmd.Process.Kill()
		<-p.done
	} else {
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-p.done:
			if p.err != nil {
				err = fmt.Errorf("%s: %v; its log:\n%s", p.Name, p.err, p.Tail(10))
			}
		case <-timer.C:
			p.cmd.Process.Kill()
			<-p.done
			err = fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.Name, grace)
		}
	}
	if rmErr := os.RemoveAll(p.Dir); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// Find returns the path of a program: explicit if given, else name next
// to the running executable, else name in $PATH.
func Find(name, explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", err
		}
		return explicit, nil
	}
	if exe, err := os.Executable(); err == nil {
		cand := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(cand); err == nil && !st.IsDir() {
			return cand, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", errors.New(name + " not found")
}

// Build builds quiver-bench (with the race detector when race) and quiverd
// (as make build does) into a new temporary directory, for tests that run
// them as scripts do; the caller removes it.
func Build(race bool) (string, error) {
	mods := map[string]string{}
	for _, m := range []string{"github.com/quivermq/quiver/benchmarks", "github.com/quivermq/quiver"} {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", m).Output()
		if err != nil {
			return "", fmt.Errorf("go list -m %s: %w", m, err)
		}
		mods[m] = strings.TrimSpace(string(out))
	}
	dir, err := os.MkdirTemp("", "quiver-bins-")
	if err != nil {
		return "", err
	}
	bench := []string{"build", "-o", dir}
	if race {
		bench = append(bench, "-race")
	}
	for _, b := range []struct {
		dir  string
		args []string
	}{
		{mods["github.com/quivermq/quiver/benchmarks"], append(bench, "./cmd/quiver-bench")},
		{mods["github.com/quivermq/quiver"], []string{"build", "-ldflags=-checklinkname=0", "-o", dir, "./daemon/cmd/quiverd"}},
	} {
		cmd := exec.Command("go", b.args...)
		cmd.Dir = b.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("go %s: %v\n%s", strings.Join(b.args, " "), err, out)
		}
	}
	return dir, nil
}
