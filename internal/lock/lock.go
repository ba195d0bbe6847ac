// Package lock serializes ecsmeta-init runs within one network namespace.
//
// The lock is an abstract unix socket: abstract socket names are scoped to
// the network namespace, need no writable file system (init containers run
// with a read-only root) and are released by the kernel when the holder
// dies. The nft backend ignores the xtables lock, so we need one of our own
// around plan-and-apply.
package lock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// Name is the abstract socket name, "@ecsmeta-init.lock" in `ss -x`.
const Name = "@ecsmeta-init.lock"

// ErrTimeout means another process held the lock for the whole timeout.
var ErrTimeout = errors.New("timed out")

// Held is an acquired lock.
type Held struct{ l *net.UnixListener }

// Release frees the lock.
func (h *Held) Release() error { return h.l.Close() }

// Acquire takes the lock, retrying until timeout. onWait is called once
// if the lock is busy, so the caller can log that it is waiting.
func Acquire(ctx context.Context, timeout time.Duration, onWait func()) (*Held, error) {
	deadline := time.Now().Add(timeout)
	waited := false
	for {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: Name, Net: "unix"})
		if err == nil {
			return &Held{l: l}, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("take lock %s: %w", Name, err)
		}
		if !waited && onWait != nil {
			onWait()
		}
		waited = true
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("take lock %s: another ecsmeta-init held it for %s (--lock-timeout): %w", Name, timeout, ErrTimeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
