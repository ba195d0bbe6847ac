// Package metrics defines ecsmeta-proxy's Prometheus metrics, registered on
// a registry of their own so that tests can read them.
package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ecsmeta/ecsmeta/internal/config"
)

// Set is every metric the proxy exports.
type Set struct {
	Registry *prometheus.Registry

	Ready             prometheus.Gauge
	ProbeSuccess      *prometheus.GaugeVec   // target
	ProbeDuration     *prometheus.GaugeVec   // target
	ProbesTotal       *prometheus.CounterVec // target, result
	AddressOnLo       *prometheus.GaugeVec   // endpoint
	ServedByUserspace *prometheus.GaugeVec   // endpoint
	ConnsActive       *prometheus.GaugeVec   // listener
	ConnsTotal        *prometheus.CounterVec // listener
	ConnsRejected     *prometheus.CounterVec // listener, reason
	Bytes             *prometheus.CounterVec // direction
	DialErrors        prometheus.Counter
	DialDuration      prometheus.Histogram
}

// New registers the metrics, with Go and process collectors and build info.
func New() *Set {
	r := prometheus.NewRegistry()
	s := &Set{
		Registry: r,
		Ready:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "ecsmeta_ready", Help: "1 when every endpoint answered the last probe as expected."}),
		ProbeSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ecsmeta_probe_success",
			Help: "1 when the last probe of the target (endpoint or upstream) answered as expected."}, []string{"target"}),
		ProbeDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ecsmeta_probe_duration_seconds",
			Help: "Latency of the last probe of the target."}, []string{"target"}),
		ProbesTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ecsmeta_probes_total",
			Help: "Probes by target and result (ok, refused, timeout, no_route, bad_status, error)."}, []string{"target", "result"}),
		AddressOnLo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ecsmeta_endpoint_address_on_lo",
			Help: "1 when the endpoint's address is present in the network namespace."}, []string{"endpoint"}),
		ServedByUserspace: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ecsmeta_endpoint_served_by_userspace",
			Help: "1 when the last probe of the endpoint was carried by ecsmeta-proxy's listener (the kernel path is absent)."}, []string{"endpoint"}),
		ConnsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ecsmeta_forward_connections_active",
			Help: "Forwarded connections open now."}, []string{"listener"}),
		ConnsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ecsmeta_forward_connections_total",
			Help: "Connections accepted for forwarding."}, []string{"listener"}),
		ConnsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ecsmeta_forward_connections_rejected_total",
			Help: "Connections closed at once: max_conns reached, or not_local (source outside this network namespace)."}, []string{"listener", "reason"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ecsmeta_forward_bytes_total",
			Help: "Bytes forwarded, by direction (to_upstream, to_client)."}, []string{"direction"}),
		DialErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "ecsmeta_upstream_dial_errors_total",
			Help: "Failed connections to the upstream (resolution or connect)."}),
		DialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ecsmeta_upstream_dial_duration_seconds",
			Help: "Time to connect to the upstream.", Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ecsmeta_build_info", Help: "Build information; always 1.",
		ConstLabels: prometheus.Labels{"version": config.Version, "goversion": runtime.Version()}})
	build.Set(1)
	r.MustRegister(s.Ready, s.ProbeSuccess, s.ProbeDuration, s.ProbesTotal, s.AddressOnLo, s.ServedByUserspace,
		s.ConnsActive, s.ConnsTotal, s.ConnsRejected, s.Bytes, s.DialErrors, s.DialDuration, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return s
}
