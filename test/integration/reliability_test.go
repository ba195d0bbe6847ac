package integration

import (
	"encoding/json"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

type loadResult struct {
	Requests, Errors int64
	FirstError       string
	ErrorKinds       map[string]int64
	RPS, P50ms       float64
	P99ms            float64
}

// load runs n requests (a new connection each, no retries) at concurrency
// c, bounded by dur, from inside ns.
func load(t *testing.T, ns *nstest.NS, url string, n, c int, dur time.Duration) loadResult {
	t.Helper()
	r := ns.Exec(nstest.Bin(t, "ecsmeta-testkit"), "load", "--url", url, "--n", strconv.Itoa(n), "--c", strconv.Itoa(c), "--duration", dur.String())
	var res loadResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("load: %v: %s %s", err, r.Stdout, r.Stderr)
	}
	return res
}

func parseLoad(t *testing.T, out string) loadResult {
	t.Helper()
	var res loadResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &res); err != nil {
		t.Fatalf("load output: %v: %q", err, out)
	}
	return res
}

// proxyStats reads the proxy's goroutines, open fds and RSS from /metrics.
type proxyStats struct{ goroutines, fds, rssMiB float64 }

func stats(t *testing.T, ns *nstest.NS, healthPort string) proxyStats {
	t.Helper()
	r := ns.Get("http://127.0.0.1:" + healthPort + "/metrics")
	get := func(name string) float64 {
		for _, l := range strings.Split(r.Stdout, "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		t.Fatalf("metric %s missing", name)
		return 0
	}
	return proxyStats{get("go_goroutines"), get("process_open_fds"), get("process_resident_memory_bytes") / (1 << 20)}
}

// TestLoad100kThroughEachPathWithZeroFailures: kernel DNAT and the
// userspace listener, 100,000 requests each at concurrency 128, then the
// proxy's goroutines, fds and RSS return to their baseline.
func TestLoad100kThroughEachPathWithZeroFailures(t *testing.T) {
	ns := nstest.New(t)
	// New connections to 169.254.170.2 get no TIME_WAIT reuse: widen the range.
	ns.MustExec("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
	ns.StartCredServer("127.0.0.1:1338", "--quiet")
	runInit(t, ns, 0)
	ns.StartProxy("--listen", "127.0.0.1:15080")
	waitReady(t, ns, true)
	load(t, ns, "http://127.0.0.1:15080/v1/credentials", 2000, 16, 30*time.Second) // warm up
	time.Sleep(time.Second)
	base := stats(t, ns, "1339")
	for _, path := range []struct{ name, url string }{{"kernel DNAT", credURL}, {"userspace listener", "http://127.0.0.1:15080/v1/credentials"}} {
		res := load(t, ns, path.url, 100000, 128, 55*time.Second)
		t.Logf("%s: %d requests, %d errors, %.0f req/s, p50 %.2f ms, p99 %.2f ms", path.name, res.Requests, res.Errors, res.RPS, res.P50ms, res.P99ms)
		if res.Requests != 100000 || res.Errors != 0 {
			t.Errorf("%s: want 100000 requests and no error, got %d requests, %d errors (first: %s)", path.name, res.Requests, res.Errors, res.FirstError)
		}
	}
	var after proxyStats
	deadline := time.Now().Add(15 * time.Second)
	for {
		after = stats(t, ns, "1339")
		if after.goroutines <= base.goroutines+3 && after.fds <= base.fds+3 && after.rssMiB <= base.rssMiB+8 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("proxy before: %.0f goroutines, %.0f fds, %.1f MiB RSS; after: %.0f, %.0f, %.1f MiB", base.goroutines, base.fds, base.rssMiB, after.goroutines, after.fds, after.rssMiB)
	if after.goroutines > base.goroutines+3 || after.fds > base.fds+3 || after.rssMiB > base.rssMiB+8 {
		t.Errorf("the proxy did not return to its baseline within 15 s")
	}
}

// TestUpstreamKilledMidLoadAndRestarted: requests fail fast while it is
// down, readiness follows, and everything recovers without a restart.
func TestUpstreamKilledMidLoadAndRestarted(t *testing.T) {
	ns := nstest.New(t)
	srv := ns.StartCredServer("127.0.0.1:1338", "--quiet")
	runInit(t, ns, 0)
	ns.StartProxy("--listen", "127.0.0.1:15080")
	waitReady(t, ns, true)
	kit := nstest.Bin(t, "ecsmeta-testkit")
	loads := map[string]*nstest.Proc{}
	for name, url := range map[string]string{"kernel": credURL, "userspace": "http://127.0.0.1:15080/v1/credentials"} {
		loads[name] = ns.Start(nil, kit, "load", "--url", url, "--c", "8", "--duration", "6s")
	}
	time.Sleep(1500 * time.Millisecond)
	srv.Stop()
	waitReady(t, ns, false)
	for _, u := range []string{credURL, "http://127.0.0.1:15080/v1/credentials"} {
		start := time.Now()
		if r := ns.Get(u); r.Code == 0 || time.Since(start) > time.Second {
			t.Errorf("%s with the upstream down: exit %d after %s, want a prompt failure", u, r.Code, time.Since(start))
		}
	}
	time.Sleep(time.Second)
	ns.StartCredServer("127.0.0.1:1338", "--quiet")
	waitReady(t, ns, true)
	for name, p := range loads {
		_ = p.Cmd.Wait()
		res := parseLoad(t, p.Out.String())
		t.Logf("%s: %d requests, %d failed while the upstream was down: %v", name, res.Requests, res.Errors, res.ErrorKinds)
		if res.Errors == 0 || res.Errors == res.Requests {
			t.Errorf("%s: want some failures while down and successes before and after: %+v", name, res)
		}
		if res.ErrorKinds["timeout"] > 0 {
			t.Errorf("%s: requests hung instead of failing fast: %v", name, res.ErrorKinds)
		}
	}
	requireCreds(t, ns, credURL)
	requireCreds(t, ns, "http://127.0.0.1:15080/v1/credentials")
}

// TestTimeoutsCloseStuckAndSilentConnections: an upstream that accepts and
// never answers (idle timeout), one that never accepts (dial timeout), and
// a client that connects and sends nothing (idle timeout); no fd piles up.
func TestTimeoutsCloseStuckAndSilentConnections(t *testing.T) {
	ns := nstest.New(t)
	// Accepts, reads the request, never answers.
	ns.StartCredServer("127.0.0.1:1338", "--quiet", "--delay", "10m")
	ns.MustExec("iptables-nft", "-I", "INPUT", "-i", "lo", "-p", "tcp", "--dport", "1340", "-j", "DROP") // never accepts
	// Its prober would keep one stuck connection open: probe once only.
	ns.StartProxy("--listen", "127.0.0.1:15080", "--idle-timeout", "1s", "--endpoint", "127.0.0.1:15080", "--probe-interval", "1h")
	ns.StartProxy("--listen", "127.0.0.1:15081", "--upstream", "127.0.0.1:1340", "--dial-timeout", "500ms",
		"--health-addr", ":1341", "--endpoint", "127.0.0.1:15081")
	time.Sleep(500 * time.Millisecond)
	base := stats(t, ns, "1339")

	t0 := time.Now()
	start := time.Now()
	r := ns.Exec(nstest.Bin(t, "ecsmeta-testkit"), "get", "--timeout", "10s", "http://127.0.0.1:15080/v1/credentials")
	t.Logf("stuck upstream: exit %d after %s: %s", r.Code, time.Since(start), strings.TrimSpace(r.Stderr))
	if took := time.Since(start); r.Code == 0 || took > 4*time.Second {
		t.Errorf("a never-answering upstream: exit %d after %s, want the 1s idle timeout to close it", r.Code, took)
	}
	start = time.Now()
	r = ns.Exec(nstest.Bin(t, "ecsmeta-testkit"), "get", "--timeout", "10s", "http://127.0.0.1:15081/v1/credentials")
	t.Logf("unreachable upstream: exit %d after %s: %s", r.Code, time.Since(start), strings.TrimSpace(r.Stderr))
	if took := time.Since(start); r.Code == 0 || took > 3*time.Second {
		t.Errorf("an upstream that never accepts: exit %d after %s, want the 500ms dial timeout", r.Code, took)
	}
	if m := metricAt(t, ns, "1341", "ecsmeta_upstream_dial_errors_total"); strings.HasSuffix(m, " 0") {
		t.Errorf("dial error not counted: %s", m)
	}

	holder := ns.Start(nil, nstest.Bin(t, "ecsmeta-testkit"), "hold", "--addr", "127.0.0.1:15080", "--n", "50", "--for", "5s")
	nstest.WaitFor(t, func() bool {
		return strings.Contains(holder.Out.String(), "holding 50") || holder.Cmd.ProcessState != nil
	})
	if !strings.Contains(holder.Out.String(), "holding 50") {
		t.Fatalf("holder: %s", holder.Out.String())
	}
	t.Logf("holding 50 silent connections, %s into the test", time.Since(t0))
	nstest.WaitFor(t, func() bool {
		return strings.HasSuffix(metricAt(t, ns, "1339", "ecsmeta_forward_connections_active"), " 0")
	})
	time.Sleep(300 * time.Millisecond)
	if after := stats(t, ns, "1339"); after.fds > base.fds+2 {
		t.Errorf("fds piled up: %.0f before, %.0f after the timeouts", base.fds, after.fds)
	}
}

func metricAt(t *testing.T, ns *nstest.NS, port, name string) string {
	t.Helper()
	r := ns.Get("http://127.0.0.1:" + port + "/metrics")
	for _, l := range strings.Split(r.Stdout, "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			return l
		}
	}
	t.Fatalf("metric %s missing", name)
	return ""
}

func TestMaxConnsExceededClosesNewConnectionsAtOnce(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338", "--quiet")
	ns.StartProxy("--listen", "127.0.0.1:15080", "--max-conns", "10", "--endpoint", "127.0.0.1:15080")
	holder := ns.Start(nil, nstest.Bin(t, "ecsmeta-testkit"), "hold", "--addr", "127.0.0.1:15080", "--n", "10", "--for", "20s")
	nstest.WaitFor(t, func() bool { return strings.Contains(holder.Out.String(), "holding 10") })
	nstest.WaitFor(t, func() bool { return strings.HasSuffix(metric(t, ns, "ecsmeta_forward_connections_active"), " 10") })
	start := time.Now()
	if r := ns.Get("http://127.0.0.1:15080/v1/credentials"); r.Code == 0 || time.Since(start) > time.Second {
		t.Errorf("the 11th connection: exit %d after %s, want closed at once", r.Code, time.Since(start))
	}
	if m := metric(t, ns, "ecsmeta_forward_connections_rejected_total", `reason="max_conns"`); strings.HasSuffix(m, " 0") {
		t.Errorf("rejection not counted: %s", m)
	}
	holder.Stop()
	nstest.WaitFor(t, func() bool { return ns.Get("http://127.0.0.1:15080/v1/credentials").Code == 0 })
}

// TestSIGTERMDuringLoadCutsNoResponse: within the grace period every
// request that got through finishes; later ones are refused, never cut.
func TestSIGTERMDuringLoadCutsNoResponse(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338", "--quiet", "--delay", "100ms")
	p := ns.StartProxy("--listen", "127.0.0.1:15080", "--shutdown-grace", "5s", "--endpoint", "127.0.0.1:15080")
	waitReady(t, ns, true)
	l := ns.Start(nil, nstest.Bin(t, "ecsmeta-testkit"), "load", "--url", "http://127.0.0.1:15080/v1/credentials", "--c", "32", "--n", "200000", "--duration", "3s")
	time.Sleep(time.Second)
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := p.Cmd.Wait()
	_ = l.Cmd.Wait()
	res := parseLoad(t, l.Out.String())
	t.Logf("during SIGTERM: %d requests, errors %v", res.Requests, res.ErrorKinds)
	if err != nil {
		t.Errorf("proxy exit: %v\n%s", err, p.Out.String())
	}
	for kind, n := range res.ErrorKinds {
		if kind != "refused" {
			t.Errorf("%d requests failed with %s: a response was cut (first: %s)", n, kind, res.FirstError)
		}
	}
	if res.Requests-res.Errors < 100 {
		t.Errorf("too few requests completed before the shutdown: %+v", res)
	}
}

// TestHandFlushedRulesAndAddressTurnReadinessFalseWithinAProbeInterval,
// then a second ecsmeta-init run repairs them and readiness returns.
func TestHandFlushedRulesAndAddressTurnReadinessFalseWithinAProbeInterval(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338", "--quiet")
	runInit(t, ns, 0)
	ns.StartProxy("--probe-interval", "500ms", "--probe-timeout", "200ms")
	waitReady(t, ns, true)
	start := time.Now()
	ns.MustExec("iptables-nft", "-t", "nat", "-F", "ECSMETA-OUTPUT")
	ns.MustExec("iptables-nft", "-F", "ECSMETA-INPUT")
	ns.MustExec("ip", "addr", "del", "169.254.170.2/32", "dev", "lo")
	waitReady(t, ns, false)
	// One interval plus the probe's own time, and slack for a busy machine.
	if took := time.Since(start); took > 500*time.Millisecond+200*time.Millisecond+500*time.Millisecond {
		t.Errorf("readiness turned false after %s, want within one probe interval (500ms)", took)
	}
	runInit(t, ns, 0)
	waitReady(t, ns, true)
	requireCreds(t, ns, credURL)
	runInit(t, ns, 0, "--check")
}
