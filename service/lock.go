package service

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// LockFile is the file in the data directory that a running daemon holds
// an exclusive flock on, so that two daemons never serve one data
// directory (each with its own cache, both writing the same files). It
// holds the owner's PID, for the message the second one prints.
const LockFile = "anvil.lock"

// ErrLocked: another process holds the data directory's lock.
var ErrLocked = errors.New("in use by another Anvil daemon")

// lockDataDir takes the data directory's lock, or fails at once with
// ErrLocked naming the directory and, when the lock file says, the PID
// that holds it. The lock lasts until the returned file is closed (or the
// process ends: the kernel drops it with the last descriptor, so a crash
// never leaves a stale lock behind).
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(string(bytes.TrimSpace(b))); perr == nil && pid > 0 {
					holder = "process " + strconv.Itoa(pid)
				}
			}
			return nil, fmt.Errorf("data directory %s is %w (%s holds %s); stop it or use another data directory", dir, ErrLocked, holder, path)
		}
		return nil, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
