// Package probe decides readiness: on a fixed interval it sends a real HTTP
// GET through every endpoint (and straight to the upstream, to tell a broken
// kernel path from a down upstream) and caches the results, so that kubelet
// and Docker health checks never multiply the load on the upstream.
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Expect is the set of status codes that count as ready.
type Expect struct {
	Any    bool
	Ranges [][2]int
}

// ParseExpect parses "200-299", "200,204,300-399" or "any".
func ParseExpect(s string) (Expect, error) {
	s = strings.TrimSpace(s)
	if s == "any" {
		return Expect{Any: true}, nil
	}
	var e Expect
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
			return Expect{}, fmt.Errorf("status codes %q: want e.g. 200-299, 200,204 or any", s)
		}
		e.Ranges = append(e.Ranges, [2]int{a, b})
	}
	return e, nil
}

// Match reports whether status counts as ready.
func (e Expect) Match(status int) bool {
	if e.Any {
		return true
	}
	for _, r := range e.Ranges {
		if status >= r[0] && status <= r[1] {
			return true
		}
	}
	return false
}

func (e Expect) String() string {
	if e.Any {
		return "any"
	}
	parts := make([]string, len(e.Ranges))
	for i, r := range e.Ranges {
		if r[0] == r[1] {
			parts[i] = strconv.Itoa(r[0])
		} else {
			parts[i] = fmt.Sprintf("%d-%d", r[0], r[1])
		}
	}
	return strings.Join(parts, ",")
}

// Target is something the prober checks.
type Target struct {
	Name string // "endpoint 169.254.170.2:80" or "upstream 127.0.0.1:1338"
	Addr string // host:port dialled
	// Endpoint targets decide readiness; the upstream one only informs.
	Endpoint bool
	// EndpointIP is the endpoint's address, to look for on lo.
	EndpointIP netip.Addr
}

// Result is one probe outcome.
type Result struct {
	Target      string    `json:"target"`
	OK          bool      `json:"ok"`
	Kind        string    `json:"result"` // ok, refused, timeout, no_route, bad_status, error
	Status      int       `json:"status,omitempty"`
	Error       string    `json:"error,omitempty"`
	LatencyMs   float64   `json:"latencyMs"`
	CheckedAt   time.Time `json:"checkedAt"`
	AddressOnLo *bool     `json:"addressOnLo,omitempty"`
	// ServedBy says which path carried an endpoint probe: "kernel" (DNAT
	// to the upstream) or "userspace" (ecsmeta-proxy's own listener).
	ServedBy string `json:"servedBy,omitempty"`
}

// Checker performs one probe.
type Checker func(ctx context.Context, t Target) Result

// HTTPChecker probes with a real GET of path, with a fresh connection each
// time. watch, if set, tells whether our own listener carried it.
func HTTPChecker(path string, expect Expect, watch func(port uint16) func() bool) Checker {
	return func(ctx context.Context, t Target) Result {
		var served func() bool
		d := &net.Dialer{}
		if watch != nil && t.Endpoint {
			d.Control = func(network, address string, c syscall.RawConn) error {
				var port uint16
				err := c.Control(func(fd uintptr) {
					// Bind to an ephemeral port now so that the forwarder can
					// recognise this connection when it accepts it.
					var sa unix.Sockaddr = &unix.SockaddrInet4{}
					if strings.HasSuffix(network, "6") {
						sa = &unix.SockaddrInet6{}
					}
					if unix.Bind(int(fd), sa) != nil {
						return
					}
					if got, err := unix.Getsockname(int(fd)); err == nil {
						switch a := got.(type) {
						case *unix.SockaddrInet4:
							port = uint16(a.Port)
						case *unix.SockaddrInet6:
							port = uint16(a.Port)
						}
					}
				})
				if err == nil && port != 0 {
					served = watch(port)
				}
				return nil
			}
		}
		tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true, Proxy: nil}
		defer tr.CloseIdleConnections()
		start := time.Now()
		r := Result{Target: t.Name, CheckedAt: start}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.Addr+path, nil)
		req.Header.Set("User-Agent", "ecsmeta-proxy-probe")
		resp, err := tr.RoundTrip(req)
		r.LatencyMs = float64(time.Since(start).Microseconds()) / 1000
		if served != nil {
			if served() {
				r.ServedBy = "userspace"
			} else if err == nil {
				r.ServedBy = "kernel"
			}
		}
		if err != nil {
			r.Kind, r.Error = classify(err)
			return r
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		r.Status = resp.StatusCode
		if !expect.Match(resp.StatusCode) {
			r.Kind = "bad_status"
			r.Error = fmt.Sprintf("answered %d, want %s (is the DNAT pointed at the right port?)", resp.StatusCode, expect)
			if resp.StatusCode >= 500 {
				r.Error = fmt.Sprintf("the upstream answered %d (server error)", resp.StatusCode)
			}
			return r
		}
		r.OK, r.Kind = true, "ok"
		return r
	}
}

func classify(err error) (kind, msg string) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", "connection refused: nothing listens behind this address"
	case errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH):
		return "no_route", "no route: the endpoint address is not in this network namespace (has ecsmeta-init run?)"
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT):
		return "timeout", "timed out"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout", "timed out"
	}
	return "error", err.Error()
}

// Clock is time, replaceable in tests.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Prober runs the checks and holds the latest results.
type Prober struct {
	Targets  []Target
	Check    Checker
	Interval time.Duration
	Timeout  time.Duration
	Clock    Clock
	// AddrPresent reports whether an endpoint address is on lo; nil skips.
	AddrPresent func(netip.Addr) (bool, error)
	// OnResult is called for every result (metrics).
	OnResult func(t Target, r Result)
	// OnReady is called on every readiness change.
	OnReady func(ready bool)

	mu      sync.RWMutex
	results map[string]Result
	ready   bool
	probed  bool
	stopped bool
	rounds  int
}

// Report is /readyz?verbose.
type Report struct {
	Ready  bool     `json:"ready"`
	Reason string   `json:"reason,omitempty"`
	Checks []Result `json:"checks"`
	Rounds int      `json:"rounds"`
}

// Ready reports the cached readiness.
func (p *Prober) Ready() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.ready && !p.stopped
}

// SetNotReady forces readiness false from now on (shutdown).
func (p *Prober) SetNotReady() {
	p.mu.Lock()
	was := p.ready && !p.stopped
	p.stopped = true
	p.mu.Unlock()
	if was && p.OnReady != nil {
		p.OnReady(false)
	}
}

// Report returns the cached results.
func (p *Prober) Report() Report {
	p.mu.RLock()
	defer p.mu.RUnlock()
	rep := Report{Ready: p.ready && !p.stopped, Rounds: p.rounds}
	for _, t := range p.Targets {
		if r, ok := p.results[t.Name]; ok {
			rep.Checks = append(rep.Checks, r)
		}
	}
	switch {
	case p.stopped:
		rep.Reason = "shutting down"
	case !p.probed:
		rep.Reason = "not probed yet"
	case !p.ready:
		var bad []string
		for _, r := range rep.Checks {
			if !r.OK && strings.HasPrefix(r.Target, "endpoint") {
				bad = append(bad, r.Target+": "+r.Error)
			}
		}
		rep.Reason = strings.Join(bad, "; ")
	}
	return rep
}

// Run probes every interval until ctx ends.
func (p *Prober) Run(ctx context.Context) {
	if p.Clock == nil {
		p.Clock = realClock{}
	}
	for {
		p.Round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-p.Clock.After(p.Interval):
		}
	}
}

// Round probes every target once, concurrently, and updates readiness.
func (p *Prober) Round(ctx context.Context) {
	results := make([]Result, len(p.Targets))
	var wg sync.WaitGroup
	for i, t := range p.Targets {
		wg.Add(1)
		go func(i int, t Target) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, p.Timeout)
			defer cancel()
			r := p.Check(cctx, t)
			r.Target = t.Name
			if t.Endpoint && p.AddrPresent != nil && t.EndpointIP.IsValid() && !t.EndpointIP.IsLoopback() {
				if ok, err := p.AddrPresent(t.EndpointIP); err == nil {
					r.AddressOnLo = &ok
					if !r.OK && !ok {
						r.Error += " (the address " + t.EndpointIP.String() + " is not on lo)"
					}
				}
			}
			results[i] = r
			if p.OnResult != nil {
				p.OnResult(t, r)
			}
		}(i, t)
	}
	wg.Wait()
	ready := true
	for i, t := range p.Targets {
		if t.Endpoint && !results[i].OK {
			ready = false
		}
	}
	p.mu.Lock()
	if p.results == nil {
		p.results = map[string]Result{}
	}
	for _, r := range results {
		p.results[r.Target] = r
	}
	changed := ready != p.ready || !p.probed
	p.ready, p.probed = ready, true
	p.rounds++
	stopped := p.stopped
	p.mu.Unlock()
	if changed && !stopped {
		if ready {
			klog.InfoS("ready: credentials flow through every endpoint")
		} else {
			for i, t := range p.Targets {
				if !results[i].OK {
					klog.InfoS("not ready", "target", t.Name, "result", results[i].Kind, "error", results[i].Error)
				}
			}
		}
		if p.OnReady != nil {
			p.OnReady(ready)
		}
	}
}
