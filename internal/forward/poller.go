package forward

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// poller waits for readability of idle connections on an epoll instance of
// its own, so that an idle forwarded connection holds no goroutine (and no
// goroutine stack) at all: one goroutine waits for all of them and starts a
// short-lived one for each connection that has data. Sockets stay registered
// with Go's netpoller too; writes go through it.
type poller struct {
	epfd   int
	wakefd int // eventfd, to stop run promptly
	mu     sync.Mutex
	subs   map[int32]*sub
	gen    atomic.Int32
	tick   time.Duration
	onTick func()
	stop   atomic.Bool
	done   chan struct{}
	// life guards epfd against use after close: the fd number may be reused.
	life      sync.RWMutex
	closed    bool
	closeOnce sync.Once
}

// sub is one direction of a connection waiting for its source to become
// readable. gen tells a stale event (for an fd number since reused) from a
// current one.
type sub struct {
	fd      int32
	gen     int32
	running atomic.Bool
	fn      func()
}

func newPoller(tick time.Duration, onTick func()) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd), Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	p := &poller{epfd: epfd, wakefd: wakefd, subs: map[int32]*sub{}, tick: tick, onTick: onTick, done: make(chan struct{})}
	go p.run()
	return p, nil
}

// add registers fd; fn runs (in a new goroutine) once fd is readable after
// each arm. The sub starts disarmed.
func (p *poller) add(fd int, fn func()) (*sub, error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return nil, errors.New("forwarder closed")
	}
	s := &sub{fd: int32(fd), gen: p.gen.Add(1), fn: fn}
	p.mu.Lock()
	p.subs[s.fd] = s
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: 0, Fd: s.fd, Pad: s.gen}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.mu.Lock()
		delete(p.subs, s.fd)
		p.mu.Unlock()
		return nil, fmt.Errorf("epoll_ctl add: %w", err)
	}
	return s, nil
}

// arm asks for one wake-up when the fd is readable (or hung up).
func (p *poller) arm(s *sub) error {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return errors.New("forwarder closed")
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: s.fd, Pad: s.gen}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(s.fd), &ev)
}

// remove forgets s; call it before the fd is closed.
func (p *poller) remove(s *sub) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return
	}
	p.mu.Lock()
	if p.subs[s.fd] == s {
		delete(p.subs, s.fd)
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(s.fd), nil)
	}
	p.mu.Unlock()
}

func (p *poller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	last := time.Now()
	ms := int(p.tick / time.Millisecond)
	for !p.stop.Load() {
		n, err := unix.EpollWait(p.epfd, events, ms)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		for i := 0; i < n; i++ {
			ev := events[i]
			if ev.Pad == -1 {
				continue // woken to stop
			}
			p.mu.Lock()
			s := p.subs[ev.Fd]
			p.mu.Unlock()
			if s == nil || s.gen != ev.Pad || !s.running.CompareAndSwap(false, true) {
				continue
			}
			go func() {
				s.fn()
			}()
		}
		if now := time.Now(); now.Sub(last) >= p.tick {
			last = now
			p.onTick()
		}
	}
}

func (p *poller) close() {
	p.closeOnce.Do(func() {
		p.stop.Store(true)
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		_, _ = unix.Write(p.wakefd, one)
		<-p.done
		p.life.Lock()
		p.closed = true
		unix.Close(p.epfd)
		unix.Close(p.wakefd)
		p.life.Unlock()
	})
}
