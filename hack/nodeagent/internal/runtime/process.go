package runtime

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"mailwarden/hack/nodeagent/internal/cgroups"
	"mailwarden/hack/nodeagent/internal/podinit"
)

// process is one running container instance: its main process (podinit
// exec'd into the command) and the cgroup holding every process it starts.
type process struct {
	cmd       *exec.Cmd
	pid       int
	cg        *cgroups.Group
	logs      *logWriter
	startedAt time.Time
	done      chan struct{} // closed when the main process has exited
	exit      exitInfo
}

type exitInfo struct {
	code       int32
	signal     syscall.Signal
	finishedAt time.Time
	oomKilled  bool
}

// startError is a failure before the command ran (podinit's setup or exec):
// the runtime's StartError (exit code 128).
type startError struct{ msg string }

func (e *startError) Error() string { return e.msg }

// startProcess starts podinit with spec in a new mount and UTS namespace and
// waits until it has exec'd the command (or failed to).
func startProcess(podinitPath, specPath string, cg *cgroups.Group, logs *logWriter) (*process, error) {
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		statusR.Close()
		statusW.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		statusR.Close()
		statusW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(podinitPath, "start", specPath)
	cmd.Env = []string{}
	cmd.Stdin = devnull
	cmd.Stdout = outW
	cmd.Stderr = errW
	cmd.ExtraFiles = []*os.File{statusW} // fd 3 = podinit.StatusFD
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		// Its own process group: a terminal's signals never reach pods.
		Setpgid: true,
	}
	err = cmd.Start()
	devnull.Close()
	statusW.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		statusR.Close()
		outR.Close()
		errR.Close()
		return nil, &startError{fmt.Sprintf("starting podinit: %v", err)}
	}
	p := &process{cmd: cmd, pid: cmd.Process.Pid, cg: cg, logs: logs, done: make(chan struct{})}
	go logs.copyStream("stdout", outR)
	go logs.copyStream("stderr", errR)
	msg, _ := io.ReadAll(statusR)
	statusR.Close()
	p.startedAt = time.Now()
	if len(msg) > 0 {
		_ = cmd.Wait()
		_ = cg.Kill(5 * time.Second)
		outR.Close()
		errR.Close()
		return nil, &startError{strings.TrimSpace(string(msg))}
	}
	go p.wait()
	return p, nil
}

func (p *process) wait() {
	err := p.cmd.Wait()
	p.exit.finishedAt = time.Now()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			if ws.Signaled() {
				p.exit.signal = ws.Signal()
				p.exit.code = 128 + int32(ws.Signal())
			} else {
				p.exit.code = int32(ws.ExitStatus())
			}
		} else {
			p.exit.code = 1
		}
	} else if err != nil {
		p.exit.code = 1
	}
	if u, err := p.cg.Usage(); err == nil && u.OOMKills > 0 && p.exit.signal == syscall.SIGKILL {
		p.exit.oomKilled = true
	}
	// The container is its cgroup: when the main process ends, so does every
	// process it started (as when a PID namespace's init exits).
	_ = p.cg.Kill(10 * time.Second)
	close(p.done)
}

// exited reports whether the main process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the main process (what a runtime's StopContainer does first).
func (p *process) signal(sig syscall.Signal) {
	if !p.exited() {
		_ = syscall.Kill(p.pid, sig)
	}
}

// readTerminationMessage reads up to 4096 bytes of the termination-log file.
func readTerminationMessage(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 4096))
	return string(b)
}

// tailLog returns the last lines (at most maxBytes) of a container log, for
// terminationMessagePolicy FallbackToLogsOnError.
func tailLog(path string, lines, maxBytes int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var out []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if e, ok := parseLogLine(l); ok {
			out = append(out, strings.TrimSuffix(e.content, "\n"))
		}
	}
	if len(out) > lines {
		out = out[len(out)-lines:]
	}
	s := strings.Join(out, "\n")
	if len(s) > maxBytes {
		s = s[len(s)-maxBytes:]
	}
	return s
}

// execHandle is a command running inside a container.
type execHandle struct {
	cmd      *exec.Cmd
	specPath string
}

// Wait waits for the command and removes its spec file.
func (h *execHandle) Wait() error {
	err := h.cmd.Wait()
	os.Remove(h.specPath)
	return err
}

// execInContainer runs argv inside a running container (exec probes, exec
// hooks, kubectl exec) through `podinit enter`.
func execInContainer(podinitPath string, base *podinit.Spec, pid int, dir string, argv []string,
	stdin io.Reader, stdout, stderr io.Writer) (*execHandle, error) {
	s := *base
	s.Args = argv
	f, err := os.CreateTemp(dir, "exec-*.json")
	if err != nil {
		return nil, err
	}
	f.Close()
	if err := s.Write(f.Name()); err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	cmd := exec.Command(podinitPath, "enter", f.Name(), fmt.Sprint(pid))
	cmd.Env = []string{}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return &execHandle{cmd: cmd, specPath: f.Name()}, nil
}

// instanceDir is where a container instance keeps its layer, spec and
// termination log.
func instanceDir(podDir, name string, n int32) string {
	return filepath.Join(podDir, "containers", name, fmt.Sprint(n))
}
