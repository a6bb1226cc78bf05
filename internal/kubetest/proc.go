package kubetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Process is a control-plane process started by this package: in its own
// process group, logging to a file, killed by the kernel if the test process
// dies.
type Process struct {
	Name string
	// Log is the file receiving the process's stdout and stderr.
	Log string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // of Wait, once done is closed

	stopOnce sync.Once
	stopErr  error
}

// startProcess starts argv with its output appended to logPath.
//
// Pdeathsig fires when the thread that forked the child exits, not the
// process; the Go runtime may retire threads. So the fork happens on a
// goroutine locked to its thread, which stays alive (blocked in Wait) as long
// as the child does.
func startProcess(name, logPath string, argv []string, env []string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, done: make(chan struct{})}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd = cmd
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// Pid is the process id (also its process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Signal sends sig to the process only (e.g. SIGSTOP, SIGCONT).
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s: %w", p.Name, os.ErrProcessDone)
	default:
	}
	return syscall.Kill(p.Pid(), sig)
}

// Stop ends the whole process group: SIGTERM (and SIGCONT, for a stopped
// process), then SIGKILL after grace. It waits for the process to end and
// is safe to call more than once.
func (p *Process) Stop(grace time.Duration) error {
	p.stopOnce.Do(func() {
		pg := -p.Pid()
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(pg, syscall.SIGTERM)
			_ = syscall.Kill(pg, syscall.SIGCONT)
			select {
			case <-p.done:
			case <-time.After(grace):
				_ = syscall.Kill(pg, syscall.SIGKILL)
				<-p.done
			}
		}
		// The leader is gone; make sure nothing of its group lingers.
		if err := syscall.Kill(pg, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			p.stopErr = fmt.Errorf("stop %s: %w", p.Name, err)
		}
	})
	return p.stopErr
}

// exitErr describes how the process ended (after Exited is closed).
func (p *Process) exitErr() error {
	if p.err == nil {
		return errors.New("exited")
	}
	return p.err
}
