package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/quivermq/quiver/daemon/store"
	qlog "github.com/quivermq/quiver/log"
)

func verifyCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the CRC of every record in the log, changing nothing",
		RunE: func(cmd *cobra.Command, args []string) error {
			bar := newProgress("verifying")
			rep, err := qlog.Verify(filepath.Join(dir, "log"), bar.update)
			bar.done()
			if err != nil {
				return err
			}
			fmt.Printf("%d segments, %d records, %d bytes checked, log ends at position %d\n",
				rep.Segments, rep.Records, rep.Bytes, rep.End)
			if rep.Corrupt != nil {
				return fmt.Errorf("first damaged record at position %d: %w\nrun `quiverd repair --data %s` to truncate the log there (every record from there on is lost)",
					rep.CorruptPos, rep.Corrupt, dir)
			}
			fmt.Println("no damage found")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", "./quiver-data", "data directory")
	return cmd
}

func repairCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Truncate the log at its first damaged record and rebuild the indexes",
		Long: `repair opens the log like the broker does, but where the broker would refuse
to start on damage to acknowledged data, repair truncates the log at the first
damaged record, discarding it and every record after it, and rebuilds the
indexes. Run verify first to see what would be lost.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			before, err := qlog.Verify(filepath.Join(dir, "log"), nil)
			if err != nil {
				return err
			}
			s, err := store.Open(store.Options{Dir: dir, Logger: newLogger(), Log: qlog.Options{Repair: true}})
			if err != nil {
				return err
			}
			end := s.Log.Positions().Written
			if err := s.Close(); err != nil {
				return err
			}
			if before.Corrupt == nil {
				fmt.Printf("no damage found; the log ends at position %d\n", end)
				return nil
			}
			fmt.Printf("truncated the log at position %d (%v)\n", end, before.Corrupt)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", "./quiver-data", "data directory")
	return cmd
}

// progress draws a one-line progress bar on stderr when it is a terminal.
type progress struct {
	label string
	tty   bool
	last  time.Time
	drawn bool
}

func newProgress(label string) *progress {
	_, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), ioctlReadTermios)
	return &progress{label: label, tty: err == nil}
}

func (p *progress) update(done, total int64) {
	if !p.tty || total <= 0 || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	const width = 30
	n := int(done * width / total)
	fmt.Fprintf(os.Stderr, "\r%s [%-*s] %5.1f%% of %d MiB", p.label, width, string(repeat('#', n)), 100*float64(done)/float64(total), total>>20)
	p.drawn = true
}

func (p *progress) done() {
	if p.drawn {
		fmt.Fprintln(os.Stderr)
	}
}

func repeat(c byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return b
}
