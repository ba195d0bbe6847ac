// Package health serves ecsmeta-proxy's /healthz, /readyz and /metrics, and
// implements the `healthcheck` client used by Docker HEALTHCHECK.
package health

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ecsmeta/ecsmeta/internal/probe"
)

// Handler routes the health endpoints. Readiness comes from the prober's
// cache: a request never triggers a probe.
func Handler(p *probe.Prober, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		rep := p.Report()
		status := http.StatusOK
		if !rep.Ready {
			status = http.StatusServiceUnavailable
		}
		if _, verbose := r.URL.Query()["verbose"]; verbose {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(rep)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		if rep.Ready {
			fmt.Fprintln(w, "ready")
		} else {
			fmt.Fprintf(w, "not ready: %s\n", rep.Reason)
		}
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// URLFor returns the /readyz URL a local healthcheck should use for a
// --health-addr value: a wildcard host means loopback.
func URLFor(healthAddr string) (string, error) {
	host, port, err := net.SplitHostPort(healthAddr)
	if err != nil {
		return "", fmt.Errorf("health address %q: want [host]:port, e.g. :1339", healthAddr)
	}
	if host == "" || host == "0.0.0.0" {
		host = "127.0.0.1"
	} else if host == "::" {
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/readyz", nil
}

// Check GETs url and reports whether it answered 200 (for the
// `ecsmeta-proxy healthcheck` subcommand).
func Check(url string, timeout time.Duration) error {
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
