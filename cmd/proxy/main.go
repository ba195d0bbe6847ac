// Command ecsmeta-proxy is the non-root sidecar: it reports end-to-end
// readiness of the credential endpoint, exports metrics and optionally
// forwards the endpoint in userspace.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecsmeta/ecsmeta/internal/config"
	"github.com/ecsmeta/ecsmeta/internal/forward"
	"github.com/ecsmeta/ecsmeta/internal/health"
	"github.com/ecsmeta/ecsmeta/internal/probe"
	"github.com/ecsmeta/ecsmeta/internal/sidecar"
)

const summary = `ecsmeta-proxy: the non-root sidecar of ecsmeta. It probes the credential
endpoint end to end (a real GET through 169.254.170.2 to the upstream), serves
/healthz, /readyz (?verbose for a JSON report) and /metrics, and with --listen
forwards connections to the upstream in userspace.

Usage: ecsmeta-proxy [flags]
       ecsmeta-proxy healthcheck [--url URL]   exit 0 when ready (for Docker HEALTHCHECK)
       ecsmeta-proxy pause                     hold the network namespace until SIGTERM (compose netns owner)
Exit codes: 0 ok (including a graceful stop), 1 failed to start, 2 bad flags or values.`

const healthSummary = `ecsmeta-proxy healthcheck: GET the proxy's /readyz; exit 0 when ready, 1 otherwise.
The URL defaults to /readyz on --health-addr (ECSMETA_HEALTH_ADDR), on loopback.

Usage: ecsmeta-proxy healthcheck [--url URL]`

const defaultHealthAddr = ":1339"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	klog.SetOutput(stderr)
	klog.LogToStderr(false)
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "ecsmeta-proxy: %v\n", err)
		return code
	}
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "pause" {
		// A compose project needs a long-lived owner of the shared network
		// namespace that never restarts: this image can be it, with nothing
		// else to pull.
		if len(args) > 1 {
			return fail(config.ExitUsage, config.Usagef("pause takes no arguments (see --help)"))
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		<-ctx.Done()
		return config.ExitOK
	}
	fs := config.NewFlagSet("ecsmeta-proxy", summary)
	endpoints := fs.AddEndpoints("endpoints to probe, comma-separated or repeated (same syntax as ecsmeta-init)")
	upstream := fs.AddUpstream("the credential server: IP:port or host:port (a name is resolved again for new connections, cached 1s)")
	listen := fs.String("listen", "", "comma-separated IP:port addresses to forward to the upstream in userspace, e.g. 127.0.0.1:15080 or 169.254.170.2:80")
	healthAddr := fs.String("health-addr", defaultHealthAddr, "address for /healthz, /readyz and /metrics")
	probePath := fs.String("probe-path", "/health", "path requested through each endpoint by the readiness prober")
	probeExpect := fs.String("probe-expect", "200-299", "status codes that count as ready, e.g. 200-299,404; any: every HTTP answer proves the path")
	probeInterval := fs.Duration("probe-interval", 2*time.Second, "time between probe rounds")
	probeTimeout := fs.Duration("probe-timeout", time.Second, "timeout of one probe")
	maxConns := fs.Int("max-conns", 1024, "concurrent forwarded connections; beyond it new ones are closed at once and counted")
	idleTimeout := fs.Duration("idle-timeout", 5*time.Minute, "close a forwarded connection idle this long in both directions")
	dialTimeout := fs.Duration("dial-timeout", 2*time.Second, "timeout to connect to the upstream")
	shutdownDelay := fs.Duration("shutdown-delay", 0, "on SIGTERM keep serving this long first (clusters without native sidecars)")
	shutdownGrace := fs.Duration("shutdown-grace", 10*time.Second, "then: readiness false, listeners close, open connections drain up to this long")
	fs.AddVerbosity()
	fs.AddVersion()
	if code, done := fs.ParseMain(args, stdout, stderr); done {
		return code
	}
	o := sidecar.Options{
		Endpoints: endpoints.List, Upstream: upstream.Upstream, HealthAddr: *healthAddr, ProbePath: *probePath,
		ProbeInterval: *probeInterval, ProbeTimeout: *probeTimeout, MaxConns: *maxConns, IdleTimeout: *idleTimeout,
		DialTimeout: *dialTimeout, ShutdownDelay: *shutdownDelay, ShutdownGrace: *shutdownGrace,
	}
	var err error
	if o.Listen, err = forward.ParseListen(*listen); err != nil {
		return fail(config.ExitUsage, config.Usagef("--listen: %v (see --help)", err))
	}
	if o.Expect, err = probe.ParseExpect(*probeExpect); err != nil {
		return fail(config.ExitUsage, config.Usagef("--probe-expect: %v (see --help)", err))
	}
	if _, err := health.URLFor(*healthAddr); err != nil {
		return fail(config.ExitUsage, config.Usagef("--health-addr: %v (see --help)", err))
	}
	if len(*probePath) == 0 || (*probePath)[0] != '/' {
		return fail(config.ExitUsage, config.Usagef("--probe-path %q: must start with / (see --help)", *probePath))
	}
	for name, d := range map[string]time.Duration{"probe-interval": *probeInterval, "probe-timeout": *probeTimeout, "idle-timeout": *idleTimeout, "dial-timeout": *dialTimeout} {
		if d <= 0 {
			return fail(config.ExitUsage, config.Usagef("--%s must be positive, e.g. 2s (see --help)", name))
		}
	}
	if *shutdownDelay < 0 || *shutdownGrace < 0 {
		return fail(config.ExitUsage, config.Usagef("--shutdown-delay and --shutdown-grace must not be negative (see --help)"))
	}
	if *maxConns < 1 {
		return fail(config.ExitUsage, config.Usagef("--max-conns must be at least 1 (see --help)"))
	}
	if *probeTimeout > *probeInterval {
		return fail(config.ExitUsage, config.Usagef("--probe-timeout (%s) must not exceed --probe-interval (%s) (see --help)", *probeTimeout, *probeInterval))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	defer klog.Flush()
	if err := sidecar.Run(ctx, o); err != nil {
		return fail(config.ExitFailed, err)
	}
	return config.ExitOK
}

func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := config.NewFlagSet("ecsmeta-proxy healthcheck", healthSummary)
	url := fs.String("url", "", "readiness URL (default: /readyz on ECSMETA_HEALTH_ADDR or "+defaultHealthAddr+", on loopback)")
	timeout := fs.Duration("timeout", 2*time.Second, "request timeout")
	if err := fs.Parse(args, stdout); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return config.ExitOK
		}
		fmt.Fprintf(stderr, "ecsmeta-proxy healthcheck: %v\n", err)
		return config.ExitUsage
	}
	u := *url
	if u == "" {
		addr := defaultHealthAddr
		if v := os.Getenv(config.EnvName("health-addr")); v != "" {
			addr = v
		}
		var err error
		if u, err = health.URLFor(addr); err != nil {
			fmt.Fprintf(stderr, "ecsmeta-proxy healthcheck: %v\n", err)
			return config.ExitUsage
		}
	}
	if err := health.Check(u, *timeout); err != nil {
		fmt.Fprintf(stderr, "ecsmeta-proxy healthcheck: not ready: %v\n", err)
		return config.ExitFailed
	}
	fmt.Fprintln(stdout, "ready")
	return config.ExitOK
}
