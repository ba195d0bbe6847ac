// Package forward is ecsmeta-proxy's userspace TCP forwarder: it accepts
// connections on its listeners, only from this network namespace, and
// copies bytes to and from the upstream, holding a buffer only while data
// is moving.
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	active    sync.WaitGroup
	mu        sync.Mutex
	conns     map[*pair]struct{}
	probes    sync.Map // client port -> *atomic.Bool, see WatchPort
	closed    atomic.Bool
}

// New returns a forwarder; Listen binds it.
func New(o Options) *Forwarder {
	return &Forwarder{opts: o, sem: make(chan struct{}, o.MaxConns), local: newLocalAddrs(), conns: map[*pair]struct{}{}}
}

// Listen binds every listen address, or none: on error the ones already
// bound are closed again.
func (f *Forwarder) Listen() error {
	for _, addr := range f.opts.Listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			f.CloseListeners()
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
	n := len(f.conns)
	for p := range f.conns {
		p.close()
	}
	f.mu.Unlock()
	<-done
	return n
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

func (f *Forwarder) acceptLoop(ln *net.TCPListener) {
	name := ln.Addr().String()
	m := f.opts.Metrics
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
			m.ConnsRejected.WithLabelValues(name, "not_local").Inc()
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
			m.ConnsRejected.WithLabelValues(name, "max_conns").Inc()
			klog.V(2).InfoS("closed a connection: --max-conns reached", "listener", name, "max", f.opts.MaxConns)
			_ = c.SetLinger(0)
			_ = c.Close()
			continue
		}
		m.ConnsTotal.WithLabelValues(name).Inc()
		p := &pair{client: c, name: name}
		f.mu.Lock()
		f.conns[p] = struct{}{}
		f.mu.Unlock()
		f.active.Add(1)
		m.ConnsActive.WithLabelValues(name).Inc()
		go f.handle(p)
	}
}

// pair is one forwarded connection.
type pair struct {
	name       string
	client     *net.TCPConn
	upstream   *net.TCPConn
	lastActive atomic.Int64 // unix nanos
	closeOnce  sync.Once
}

func (p *pair) close() {
	p.closeOnce.Do(func() {
		_ = p.client.Close()
		if p.upstream != nil {
			_ = p.upstream.Close()
		}
	})
}

func (f *Forwarder) handle(p *pair) {
	m := f.opts.Metrics
	defer func() {
		p.close()
		f.mu.Lock()
		delete(f.conns, p)
		f.mu.Unlock()
		m.ConnsActive.WithLabelValues(p.name).Dec()
		<-f.sem
		f.active.Done()
	}()
	up, err := f.dial()
	if err != nil {
		m.DialErrors.Inc()
		klog.V(2).InfoS("upstream unreachable; closing the client connection", "err", err.Error())
		_ = p.client.SetLinger(0)
		return
	}
	f.mu.Lock()
	p.upstream = up
	f.mu.Unlock()
	klog.V(4).InfoS("forwarding", "client", p.client.RemoteAddr(), "upstream", up.RemoteAddr())
	p.lastActive.Store(time.Now().UnixNano())
	done := make(chan struct{})
	go func() {
		f.pipe(p, up, p.client, "to_client")
		close(done)
	}()
	f.pipe(p, p.client, up, "to_upstream")
	<-done
	klog.V(4).InfoS("closed", "client", p.client.RemoteAddr())
}

func (f *Forwarder) dial() (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), f.opts.DialTimeout)
	defer cancel()
	start := time.Now()
	addrs, err := f.opts.Resolver.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
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

// bufPool holds copy buffers, lent only while data is moving. A credential
// answer is about 1-2 KiB; 16 KiB moves it in one read.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// pipe copies src to dst until EOF or error, then half-closes dst. It waits
// for readability without holding a buffer, so an idle connection costs
// two goroutines and its two sockets, nothing more.
func (f *Forwarder) pipe(p *pair, src, dst *net.TCPConn, direction string) {
	counter := f.opts.Metrics.Bytes.WithLabelValues(direction)
	rc, err := src.SyscallConn()
	if err != nil {
		p.close()
		return
	}
	idle := f.opts.IdleTimeout
	for {
		if err := waitReadable(rc, src, p, idle); err != nil {
			if !errors.Is(err, io.EOF) {
				p.close() // idle timeout or error: tear down both directions
				return
			}
		}
		bp := bufPool.Get().(*[]byte)
		n, rerr := src.Read(*bp)
		if n > 0 {
			p.lastActive.Store(time.Now().UnixNano())
			_ = dst.SetWriteDeadline(time.Now().Add(idle))
			_, werr := dst.Write((*bp)[:n])
			bufPool.Put(bp)
			counter.Add(float64(n))
			if werr != nil {
				p.close()
				return
			}
		} else {
			bufPool.Put(bp)
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				// Half-close: the peer may still answer.
				_ = dst.CloseWrite()
				return
			}
			p.close()
			return
		}
	}
}

// waitReadable blocks until src has data or EOF, honouring the idle
// timeout shared by both directions.
func waitReadable(rc syscall.RawConn, src *net.TCPConn, p *pair, idle time.Duration) error {
	var one [1]byte
	for {
		deadline := time.Unix(0, p.lastActive.Load()).Add(idle)
		if time.Now().After(deadline) {
			return fmt.Errorf("idle for %s", idle)
		}
		_ = src.SetReadDeadline(deadline)
		var perr error
		err := rc.Read(func(fd uintptr) bool {
			_, _, perr = unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			return perr != unix.EAGAIN
		})
		if err == nil {
			_ = src.SetReadDeadline(time.Time{})
			return nil // data, EOF or a socket error: Read will say which
		}
		if errors.Is(err, syscall.ETIMEDOUT) || isTimeout(err) {
			continue // the other direction may have been active: recheck
		}
		return err
	}
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
