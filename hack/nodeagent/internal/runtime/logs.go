package runtime

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Container logs are kept in the CRI log format the kubelet reads
// ("<RFC3339Nano> <stream> <F|P> <text>"), one file per container instance,
// so `kubectl logs` can filter by time, tail and show timestamps.

const maxLogLine = 16 * 1024

// logWriter appends the lines of a container's stdout and stderr to its log file.
type logWriter struct {
	mu sync.Mutex
	f  *os.File
}

func newLogWriter(path string) (*logWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &logWriter{f: f}, nil
}

func (w *logWriter) writeLine(stream string, line []byte, partial bool) {
	tag := "F"
	if partial {
		tag = "P"
	}
	var b bytes.Buffer
	b.WriteString(time.Now().UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.WriteString(tag)
	b.WriteByte(' ')
	b.Write(line)
	b.WriteByte('\n')
	w.mu.Lock()
	_, _ = w.f.Write(b.Bytes())
	w.mu.Unlock()
}

// copyStream reads r until EOF, logging each line.
func (w *logWriter) copyStream(stream string, r io.Reader) {
	br := bufio.NewReaderSize(r, maxLogLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if line[len(line)-1] == '\n' {
				w.writeLine(stream, line[:len(line)-1], false)
			} else if err == bufio.ErrBufferFull {
				w.writeLine(stream, line, true)
			} else {
				w.writeLine(stream, line, false)
			}
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

func (w *logWriter) Close() error { return w.f.Close() }

// LogOptions mirror kubectl logs' options.
type LogOptions struct {
	Tail         int // lines from the end; <= 0 means all
	LimitBytes   int
	Timestamps   bool
	SinceSeconds int
	SinceTime    time.Time
	Follow       bool
}

type logEntry struct {
	ts      time.Time
	raw     string // timestamp as written
	content string // text plus newline when the entry ends a line
}

func parseLogLine(line string) (logEntry, bool) {
	parts := strings.SplitN(line, " ", 4)
	if len(parts) < 3 {
		return logEntry{}, false
	}
	ts, err := time.Parse(time.RFC3339Nano, parts[0])
	if err != nil {
		return logEntry{}, false
	}
	text := ""
	if len(parts) == 4 {
		text = parts[3]
	}
	if parts[2] != "P" {
		text += "\n"
	}
	return logEntry{ts: ts, raw: parts[0], content: text}, true
}

// StreamLog writes the log at path to out per opts. With Follow it keeps
// reading until done is closed (the container exited) or ctx ends.
func StreamLog(ctx context.Context, path string, opts LogOptions, out io.Writer, done <-chan struct{}) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	since := opts.SinceTime
	if opts.SinceSeconds > 0 {
		since = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	}
	written := 0
	emit := func(e logEntry) bool {
		if !since.IsZero() && e.ts.Before(since) {
			return true
		}
		s := e.content
		if opts.Timestamps {
			s = e.raw + " " + s
		}
		if opts.LimitBytes > 0 && written+len(s) > opts.LimitBytes {
			s = s[:opts.LimitBytes-written]
		}
		n, err := io.WriteString(out, s)
		written += n
		if fl, ok := out.(interface{ Flush() }); ok {
			fl.Flush()
		}
		return err == nil && (opts.LimitBytes <= 0 || written < opts.LimitBytes)
	}
	br := bufio.NewReaderSize(f, 64*1024)
	var entries []logEntry
	readAll := func(keep bool) bool {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				// An incomplete line is re-read once complete.
				if len(line) > 0 {
					_, _ = f.Seek(-int64(len(line)), io.SeekCurrent)
					br.Reset(f)
				}
				return true
			}
			e, ok := parseLogLine(strings.TrimSuffix(line, "\n"))
			if !ok {
				continue
			}
			if keep {
				entries = append(entries, e)
			} else if !emit(e) {
				return false
			}
		}
	}
	readAll(true)
	if opts.Tail > 0 && len(entries) > opts.Tail {
		entries = entries[len(entries)-opts.Tail:]
	}
	for _, e := range entries {
		if !emit(e) {
			return nil
		}
	}
	if !opts.Follow {
		return nil
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if !readAll(false) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-done:
			readAll(false)
			return nil
		case <-tick.C:
		}
	}
}
