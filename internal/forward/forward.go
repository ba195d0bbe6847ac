// Package forward is ecsmeta-proxy's userspace TCP forwarder: it accepts
// connections on its listeners, only from this network namespace, and
// copies bytes to and from the upstream. An idle connection holds its two
// sockets and nothing else: no goroutine, no buffer, no pipe.
package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/ecsmeta/ecsmeta/internal/metrics"
)

// Options configure a Forwarder.
type Options struct {
	Listen      []string
	Resolver    *Resolver
	MaxConns    int
	IdleTimeout time.Duration
	DialTimeout time.Duration
	Metrics     *metrics.Set
}

// Forwarder forwards connections from its listeners to the upstream.
type Forwarder struct {
	opts      Options
	sem       chan struct{}
	listeners []*net.TCPListener
	local     *localAddrs
	poll      *poller
	active    sync.WaitGroup
	mu        sync.Mutex
	conns     map[*pair]struct{}
	probes    sync.Map // client port -> *atomic.Bool, see WatchPort
	closed    atomic.Bool
	toUp      prometheus.Counter
	toClient  prometheus.Counter
	burst     bool // more than burstConns were open since the last quiet tick
}

// burstConns open connections count as a burst worth returning memory after.
const burstConns = 32

// New returns a forwarder; Listen binds it.
func New(o Options) *Forwarder {
	return &Forwarder{opts: o, sem: make(chan struct{}, o.MaxConns), local: newLocalAddrs(), conns: map[*pair]struct{}{},
		toUp: o.Metrics.Bytes.WithLabelValues("to_upstream"), toClient: o.Metrics.Bytes.WithLabelValues("to_client")}
}

// Listen binds every listen address, or none: on error the ones already
// bound are closed again.
func (f *Forwarder) Listen() error {
	tick := f.opts.IdleTimeout / 4
	if tick > time.Second {
		tick = time.Second
	} else if tick < 10*time.Millisecond {
		tick = 10 * time.Millisecond
	}
	p, err := newPoller(tick, f.closeIdle)
	if err != nil {
		return err
	}
	f.poll = p
	for _, addr := range f.opts.Listen {
		// No TCP keepalive: the idle timeout already ends dead connections,
		// and Go's default costs four setsockopt calls per connection.
		lc := net.ListenConfig{KeepAlive: -1}
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			f.CloseListeners()
			f.Close()
			return explainListen(addr, err)
		}
		f.listeners = append(f.listeners, ln.(*net.TCPListener))
		klog.InfoS("listening for userspace forwarding", "addr", ln.Addr().String())
	}
	return nil
}

func explainListen(addr string, err error) error {
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	switch {
	case errors.Is(err, syscall.EACCES) && port < 1024:
		return fmt.Errorf("listen on %s: %w: a non-root process may bind port %d only if the sysctl net.ipv4.ip_unprivileged_port_start is <= %d in this network namespace: set it in the pod's securityContext.sysctls (Kubernetes) or in `sysctls:` on the compose service that owns the network namespace; or listen on a high port and let ecsmeta-init DNAT the endpoint to it", addr, err, port, port)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("listen on %s: %w: the address is not in this network namespace; run ecsmeta-init --mode=alias-only first (it adds the endpoint address to lo)", addr, err)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("listen on %s: %w: another process already listens there; pick another --listen port", addr, err)
	}
	return fmt.Errorf("listen on %s: %w", addr, err)
}

// Addrs returns the bound listen addresses.
func (f *Forwarder) Addrs() []net.Addr {
	out := make([]net.Addr, len(f.listeners))
	for i, l := range f.listeners {
		out[i] = l.Addr()
	}
	return out
}

// Serve accepts on every listener until CloseListeners.
func (f *Forwarder) Serve() {
	var wg sync.WaitGroup
	for _, ln := range f.listeners {
		wg.Add(1)
		go func(ln *net.TCPListener) {
			defer wg.Done()
			f.acceptLoop(ln)
		}(ln)
	}
	wg.Wait()
}

// CloseListeners stops accepting; open connections go on.
func (f *Forwarder) CloseListeners() {
	f.closed.Store(true)
	for _, ln := range f.listeners {
		_ = ln.Close()
	}
}

// Close stops the poller; call it after Drain.
func (f *Forwarder) Close() {
	if f.poll != nil {
		f.poll.close()
	}
}

// Active returns the number of open forwarded connections.
func (f *Forwarder) Active() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// Drain waits for open connections to finish until ctx ends, then closes
// the rest; it returns how many it had to close.
func (f *Forwarder) Drain(ctx context.Context) int {
	done := make(chan struct{})
	go func() { f.active.Wait(); close(done) }()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
	}
	f.mu.Lock()
	open := make([]*pair, 0, len(f.conns))
	for p := range f.conns {
		open = append(open, p)
	}
	f.mu.Unlock()
	for _, p := range open {
		p.close()
	}
	<-done
	return len(open)
}

// WatchPort lets the prober learn whether its own connection from the
// given local port was carried by this forwarder (the safety-net layout).
// The returned func reports that and forgets the port.
func (f *Forwarder) WatchPort(port uint16) func() bool {
	flag := &atomic.Bool{}
	f.probes.Store(port, flag)
	return func() bool {
		f.probes.Delete(port)
		return flag.Load()
	}
}

// closeIdle runs on the poller's tick: it closes connections with no bytes
// either way for the idle timeout, including ones stuck in a write.
func (f *Forwarder) closeIdle() {
	limit := time.Now().Add(-f.opts.IdleTimeout).UnixNano()
	var idle []*pair
	f.mu.Lock()
	for p := range f.conns {
		if p.lastActive.Load() < limit {
			idle = append(idle, p)
		}
	}
	n := len(f.conns)
	f.mu.Unlock()
	// After a burst, hand the memory it needed back to the system: a
	// sidecar should cost nothing between credential refreshes.
	if n > burstConns {
		f.burst = true
	} else if n == 0 && f.burst {
		f.burst = false
		debug.FreeOSMemory()
	}
	for _, p := range idle {
		klog.V(4).InfoS("closing idle connection", "client", p.client.RemoteAddr(), "idleTimeout", f.opts.IdleTimeout)
		p.close()
	}
}

func (f *Forwarder) acceptLoop(ln *net.TCPListener) {
	name := ln.Addr().String()
	m := f.opts.Metrics
	total, active := m.ConnsTotal.WithLabelValues(name), m.ConnsActive.WithLabelValues(name)
	notLocal, full := m.ConnsRejected.WithLabelValues(name, "not_local"), m.ConnsRejected.WithLabelValues(name, "max_conns")
	var delay time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if f.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds or similar: back off instead of spinning.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay < time.Second {
				delay *= 2
			}
			klog.ErrorS(err, "accept failed", "listener", name, "retryIn", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		if !f.local.contains(remote.Addr()) {
			notLocal.Inc()
			klog.V(2).InfoS("closed a connection from outside this network namespace", "listener", name, "remote", remote)
			_ = c.SetLinger(0)
			_ = c.Close()
			continue
		}
		if v, ok := f.probes.Load(remote.Port()); ok {
			v.(*atomic.Bool).Store(true)
		}
		select {
		case f.sem <- struct{}{}:
		default:
			full.Inc()
			klog.V(2).InfoS("closed a connection: --max-conns reached", "listener", name, "max", f.opts.MaxConns)
			_ = c.SetLinger(0)
			_ = c.Close()
			continue
		}
		total.Inc()
		active.Inc()
		p := &pair{f: f, client: c, active: active}
		p.lastActive.Store(time.Now().UnixNano())
		f.mu.Lock()
		f.conns[p] = struct{}{}
		f.mu.Unlock()
		f.active.Add(1)
		go p.start()
	}
}

// pair is one forwarded connection: two directions, each idle in the
// poller or pumping in a short-lived goroutine.
type pair struct {
	f          *Forwarder
	client     *net.TCPConn
	upstream   *net.TCPConn
	active     prometheus.Gauge
	lastActive atomic.Int64 // unix nanos of the last byte either way
	open       atomic.Int32 // directions not yet at EOF
	mu         sync.Mutex   // guards the fields below
	dirs       []*direction
	closed     bool
	closeOnce  sync.Once
}

func (p *pair) close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		dirs, up := p.dirs, p.upstream
		p.dirs, p.closed = nil, true
		p.mu.Unlock()
		for _, d := range dirs {
			d.stopWatching() // before the fds close: their numbers get reused
		}
		_ = p.client.Close()
		if up != nil {
			_ = up.Close()
		}
		f := p.f
		f.mu.Lock()
		delete(f.conns, p)
		f.mu.Unlock()
		p.active.Dec()
		<-f.sem
		f.active.Done()
		klog.V(4).InfoS("closed", "client", p.client.RemoteAddr())
	})
}

func (p *pair) start() {
	up, err := p.f.dial()
	if err != nil {
		p.f.opts.Metrics.DialErrors.Inc()
		klog.V(2).InfoS("upstream unreachable; closing the client connection", "err", err.Error())
		_ = p.client.SetLinger(0)
		p.close()
		return
	}
	p.mu.Lock()
	p.upstream = up
	closed := p.closed
	p.mu.Unlock()
	if closed { // drained or timed out while dialling
		_ = up.Close()
		return
	}
	klog.V(4).InfoS("forwarding", "client", p.client.RemoteAddr(), "upstream", up.RemoteAddr())
	toUp, err1 := p.newDirection(p.client, up, p.f.toUp)
	toClient, err2 := p.newDirection(up, p.client, p.f.toClient)
	if err := errors.Join(err1, err2); err != nil {
		klog.ErrorS(err, "cannot watch connection")
		for _, d := range []*direction{toUp, toClient} {
			if d != nil {
				d.stopWatching()
			}
		}
		p.close()
		return
	}
	p.open.Store(2)
	p.mu.Lock()
	closed = p.closed
	if !closed {
		p.dirs = []*direction{toUp, toClient}
	}
	p.mu.Unlock()
	if closed {
		toUp.stopWatching()
		toClient.stopWatching()
		return
	}
	toClient.wait()
	// The client usually sent its request already: pump it right away.
	toUp.sub.running.Store(true)
	toUp.pump()
}

// direction copies src to dst.
type direction struct {
	p        *pair
	src, dst *net.TCPConn
	rc       syscall.RawConn
	sub      *sub
	bytes    prometheus.Counter
	stopped  atomic.Bool
}

func (p *pair) newDirection(src, dst *net.TCPConn, bytes prometheus.Counter) (*direction, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	d := &direction{p: p, src: src, dst: dst, rc: rc, bytes: bytes}
	var fd int
	if err := rc.Control(func(x uintptr) { fd = int(x) }); err != nil {
		return nil, err
	}
	s, err := p.f.poll.add(fd, d.pump)
	if err != nil {
		return nil, err
	}
	d.sub = s
	return d, nil
}

// wait hands the direction to the poller until src is readable.
func (d *direction) wait() {
	d.sub.running.Store(false)
	if d.stopped.Load() {
		return
	}
	if err := d.p.f.poll.arm(d.sub); err != nil {
		d.p.close()
	}
}

func (d *direction) stopWatching() {
	if d.stopped.CompareAndSwap(false, true) {
		d.p.f.poll.remove(d.sub)
	}
}

// bufPool holds copy buffers, lent only while data is moving. A credential
// answer is about 1-2 KiB; 16 KiB moves it in one read.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// pump reads src until it would block, writing everything to dst, then goes
// back to the poller. At EOF it half-closes dst; the other direction may
// still be answering.
func (d *direction) pump() {
	for {
		bp := bufPool.Get().(*[]byte)
		var n int
		var rerr error
		cerr := d.rc.Control(func(fd uintptr) {
			for {
				n, rerr = unix.Read(int(fd), *bp)
				if rerr != unix.EINTR {
					return
				}
			}
		})
		switch {
		case cerr != nil: // closed under us
			bufPool.Put(bp)
			d.p.close()
			return
		case rerr == unix.EAGAIN:
			bufPool.Put(bp)
			d.wait()
			return
		case rerr != nil:
			bufPool.Put(bp)
			d.p.close()
			return
		case n == 0: // EOF
			bufPool.Put(bp)
			d.stopWatching()
			if d.p.open.Add(-1) == 0 {
				d.p.close() // both ways done: close sends the FIN, no shutdown needed
				return
			}
			_ = d.dst.CloseWrite()
			return
		}
		d.p.lastActive.Store(time.Now().UnixNano())
		_, werr := d.dst.Write((*bp)[:n])
		bufPool.Put(bp)
		if werr != nil {
			d.p.close()
			return
		}
		d.bytes.Add(float64(n))
	}
}

func (f *Forwarder) dial() (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), f.opts.DialTimeout)
	defer cancel()
	start := time.Now()
	addrs, err := f.opts.Resolver.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{KeepAlive: -1} // as for accepted connections
	var errs []string
	for _, a := range addrs {
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err == nil {
			f.opts.Metrics.DialDuration.Observe(time.Since(start).Seconds())
			return c.(*net.TCPConn), nil
		}
		errs = append(errs, err.Error())
	}
	return nil, fmt.Errorf("dial upstream %s: %s", f.opts.Resolver.Upstream, strings.Join(errs, "; "))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ParseListen validates --listen addresses (IP:port, [IPv6]:port).
func ParseListen(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []string
	for _, part := range strings.Split(s, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(part))
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("listen address %q: want IP:port or [IPv6]:port", strings.TrimSpace(part))
		}
		out = append(out, ap.String())
	}
	return out, nil
}
