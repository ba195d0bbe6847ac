// Package sidecar wires ecsmeta-proxy together: the forwarder, the prober,
// the health server, and the shutdown sequence.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecsmeta/ecsmeta/internal/addrs"
	"github.com/ecsmeta/ecsmeta/internal/config"
	"github.com/ecsmeta/ecsmeta/internal/forward"
	"github.com/ecsmeta/ecsmeta/internal/health"
	"github.com/ecsmeta/ecsmeta/internal/metrics"
	"github.com/ecsmeta/ecsmeta/internal/probe"
)

// Options are ecsmeta-proxy's validated flags.
type Options struct {
	Endpoints     []config.Endpoint
	Upstream      config.Upstream
	Listen        []string
	HealthAddr    string
	ProbePath     string
	Expect        probe.Expect
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	MaxConns      int
	IdleTimeout   time.Duration
	DialTimeout   time.Duration
	ShutdownDelay time.Duration
	ShutdownGrace time.Duration
}

// Run serves until ctx ends, then shuts down gracefully. It returns an
// error only when start-up fails.
func Run(ctx context.Context, o Options) error {
	m := metrics.New()
	var fwd *forward.Forwarder
	if len(o.Listen) > 0 {
		fwd = forward.New(forward.Options{
			Listen: o.Listen, Resolver: &forward.Resolver{Upstream: o.Upstream}, MaxConns: o.MaxConns,
			IdleTimeout: o.IdleTimeout, DialTimeout: o.DialTimeout, Metrics: m,
		})
		if err := fwd.Listen(); err != nil {
			return err
		}
	}
	hl, err := net.Listen("tcp", o.HealthAddr)
	if err != nil {
		if fwd != nil {
			fwd.CloseListeners()
		}
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("health server: %s is already in use (another container in the pod?): choose another --health-addr", o.HealthAddr)
		}
		return fmt.Errorf("health server on %s: %w", o.HealthAddr, err)
	}

	var targets []probe.Target
	for _, ep := range o.Endpoints {
		targets = append(targets, probe.Target{Name: "endpoint " + ep.String(), Addr: ep.String(), Endpoint: true, EndpointIP: ep.Addr()})
	}
	targets = append(targets, probe.Target{Name: "upstream " + o.Upstream.String(), Addr: o.Upstream.String()})
	var watch func(uint16) func() bool
	if fwd != nil {
		watch = fwd.WatchPort
	}
	pr := &probe.Prober{
		Targets: targets, Interval: o.ProbeInterval, Timeout: o.ProbeTimeout,
		Check:       probe.HTTPChecker(o.ProbePath, o.Expect, watch),
		AddrPresent: addressOnLo,
		OnResult: func(t probe.Target, r probe.Result) {
			m.ProbeSuccess.WithLabelValues(t.Name).Set(b2f(r.OK))
			m.ProbeDuration.WithLabelValues(t.Name).Set(r.LatencyMs / 1000)
			m.ProbesTotal.WithLabelValues(t.Name, r.Kind).Inc()
			if t.Endpoint {
				ep := strings.TrimPrefix(t.Name, "endpoint ")
				if r.AddressOnLo != nil {
					m.AddressOnLo.WithLabelValues(ep).Set(b2f(*r.AddressOnLo))
				}
				if fwd != nil {
					m.ServedByUserspace.WithLabelValues(ep).Set(b2f(r.ServedBy == "userspace"))
				}
			}
		},
		OnReady: func(ready bool) { m.Ready.Set(b2f(ready)) },
	}

	srv := &http.Server{Handler: health.Handler(pr, m.Registry), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "health server stopped")
		}
	}()
	served := make(chan struct{})
	if fwd != nil {
		go func() { fwd.Serve(); close(served) }()
	} else {
		close(served)
	}
	probeCtx, stopProbes := context.WithCancel(context.Background())
	probesDone := make(chan struct{})
	go func() { pr.Run(probeCtx); close(probesDone) }()

	klog.InfoS("ecsmeta-proxy started", "version", config.Version, "endpoints", joinEndpoints(o.Endpoints), "upstream", o.Upstream.String(),
		"listen", strings.Join(o.Listen, ","), "healthAddr", hl.Addr().String(), "probePath", o.ProbePath, "probeExpect", o.Expect.String(),
		"probeInterval", o.ProbeInterval, "probeTimeout", o.ProbeTimeout, "maxConns", o.MaxConns, "idleTimeout", o.IdleTimeout,
		"dialTimeout", o.DialTimeout, "shutdownDelay", o.ShutdownDelay, "shutdownGrace", o.ShutdownGrace)

	<-ctx.Done()
	if o.ShutdownDelay > 0 {
		klog.InfoS("shutdown requested: still serving for --shutdown-delay", "delay", o.ShutdownDelay)
		time.Sleep(o.ShutdownDelay)
	}
	klog.InfoS("shutting down: readiness false, listeners closed, draining", "open", activeConns(fwd), "grace", o.ShutdownGrace)
	pr.SetNotReady()
	m.Ready.Set(0)
	if fwd != nil {
		fwd.CloseListeners()
		<-served
		dctx, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
		if cut := fwd.Drain(dctx); cut > 0 {
			klog.InfoS("grace period over: closed connections still open", "closed", cut)
		}
		cancel()
		fwd.Close()
	}
	stopProbes()
	<-probesDone
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	klog.InfoS("ecsmeta-proxy stopped")
	return nil
}

func activeConns(f *forward.Forwarder) int {
	if f == nil {
		return 0
	}
	return f.Active()
}

func addressOnLo(ip netip.Addr) (bool, error) {
	lo, err := addrs.OpenLoopback()
	if err != nil {
		return false, err
	}
	list, err := lo.List()
	if err != nil {
		return false, err
	}
	for _, a := range list {
		if a.IP == ip {
			return true, nil
		}
	}
	return false, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func joinEndpoints(eps []config.Endpoint) string {
	s := make([]string, len(eps))
	for i, e := range eps {
		s[i] = e.String()
	}
	return strings.Join(s, ",")
}
