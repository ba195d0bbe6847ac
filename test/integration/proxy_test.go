package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
	"github.com/ecsmeta/ecsmeta/internal/probe"
)

type readyReport struct {
	probe.Report
	code int
}

func readyz(t *testing.T, ns *nstest.NS) readyReport {
	t.Helper()
	r := ns.Get("http://127.0.0.1:1339/readyz?verbose")
	body := r.Stdout[strings.IndexByte(r.Stdout, '\n')+1:]
	var rep readyReport
	if err := json.Unmarshal([]byte(body), &rep.Report); err != nil {
		t.Fatalf("readyz: %v: %q %s", err, r.Stdout, r.Stderr)
	}
	fmt.Sscanf(r.Stdout, "%d", &rep.code)
	return rep
}

// waitReady waits up to a few probe intervals for readiness to be want.
func waitReady(t *testing.T, ns *nstest.NS, want bool) readyReport {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep := readyz(t, ns)
		if rep.Ready == want && (rep.code == 200) == want {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness stayed %v (HTTP %d), want %v: %+v", rep.Ready, rep.code, want, rep.Report)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func check(rep readyReport, target string) probe.Result {
	for _, c := range rep.Checks {
		if c.Target == target {
			return c
		}
	}
	return probe.Result{}
}

// metric returns the first sample line of name whose labels contain every
// one of labels.
func metric(t *testing.T, ns *nstest.NS, name string, labels ...string) string {
	t.Helper()
	r := ns.Get("http://127.0.0.1:1339/metrics")
next:
	for _, l := range strings.Split(r.Stdout, "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			for _, want := range labels {
				if !strings.Contains(l, want) {
					continue next
				}
			}
			return l
		}
	}
	return ""
}

func TestReadinessFollowsInitAndTheUpstream(t *testing.T) {
	ns := nstest.New(t)
	srv := ns.StartCredServer("127.0.0.1:1338")
	ns.StartProxy()
	rep := waitReady(t, ns, false)
	if c := check(rep, "endpoint 169.254.170.2:80"); c.AddressOnLo == nil || *c.AddressOnLo || !strings.Contains(c.Error, "not on lo") {
		t.Errorf("before init, verbose readiness should say the address is missing: %+v", c)
	}

	runInit(t, ns, 0)
	rep = waitReady(t, ns, true)
	if c := check(rep, "endpoint 169.254.170.2:80"); !c.OK || c.Status != 200 || c.AddressOnLo == nil || !*c.AddressOnLo {
		t.Errorf("after init: %+v", c)
	}

	srv.Stop()
	rep = waitReady(t, ns, false)
	if c := check(rep, "upstream 127.0.0.1:1338"); c.OK || c.Kind != "refused" {
		t.Errorf("the upstream check should say refused: %+v", c)
	}
	if c := check(rep, "endpoint 169.254.170.2:80"); c.Kind != "refused" || !*c.AddressOnLo {
		t.Errorf("endpoint with the upstream down: %+v", c)
	}
	ns.StartCredServer("127.0.0.1:1338")
	waitReady(t, ns, true)
}

func TestReadinessFallsWhenTheAliasOrTheRuleIsDeleted(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338")
	runInit(t, ns, 0)
	ns.StartProxy()
	waitReady(t, ns, true)

	ns.MustExec("iptables-nft", "-t", "nat", "-F", "ECSMETA-OUTPUT")
	rep := waitReady(t, ns, false)
	if c := check(rep, "endpoint 169.254.170.2:80"); c.Kind != "refused" || !*c.AddressOnLo {
		t.Errorf("rule gone, address present: %+v", c)
	}
	if c := check(rep, "upstream 127.0.0.1:1338"); !c.OK {
		t.Errorf("the upstream itself is fine and verbose readiness must say so: %+v", c)
	}
	runInit(t, ns, 0)
	waitReady(t, ns, true)

	ns.MustExec("ip", "addr", "del", "169.254.170.2/32", "dev", "lo")
	rep = waitReady(t, ns, false)
	if c := check(rep, "endpoint 169.254.170.2:80"); *c.AddressOnLo {
		t.Errorf("address deleted: %+v", c)
	}
	runInit(t, ns, 0)
	waitReady(t, ns, true)
}

func TestWrongPortIsNotReady(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338")
	// Another HTTP server answers 404 on the port the DNAT wrongly points at.
	ns.Start(nil, "socat", "TCP-LISTEN:8080,bind=127.0.0.1,reuseaddr,fork", "SYSTEM:echo HTTP/1.0 404 Not Found; echo; echo nope")
	runInit(t, ns, 0, "--upstream", "127.0.0.1:8080")
	ns.StartProxy()
	rep := waitReady(t, ns, false)
	if c := check(rep, "endpoint 169.254.170.2:80"); c.Kind != "bad_status" || c.Status != 404 {
		t.Errorf("a 404 through the endpoint must be unready and say so: %+v", c)
	}
}

func TestUserspaceLayoutWithADNSNamedUpstream(t *testing.T) {
	pod := nstest.New(t)
	remote := nstest.New(t)
	nstest.Veth(t, pod, "10.254.0.1/24", remote, "10.254.0.2/24")
	remote.StartCredServer("10.254.0.2:1338", "--token", "tok")
	pod.SetHosts("127.0.0.1 localhost\n10.254.0.2 credproxy\n")
	// Layout (2): init DNATs the endpoint to the proxy's loopback listener.
	runInit(t, pod, 0, "--upstream", "127.0.0.1:15080")
	pod.StartProxy("--listen", "127.0.0.1:15080", "--upstream", "credproxy:1338")
	rep := waitReady(t, pod, true)
	if c := check(rep, "endpoint 169.254.170.2:80"); c.ServedBy != "userspace" {
		t.Errorf("the probe should have come through our listener: %+v", c)
	}
	requireCreds(t, pod, credURL, "--auth", "tok")
}

func TestUpstreamWhoseAddressChangesIsFollowed(t *testing.T) {
	pod := nstest.New(t)
	remote := nstest.New(t)
	nstest.Veth(t, pod, "10.250.0.1/24", remote, "10.250.0.2/24")
	remote.MustExec("ip", "addr", "add", "10.250.0.3/24", "dev", remoteDev(t, remote))
	remote.StartCredServer("10.250.0.2:1338", "--account-id", "111111111111")
	remote.StartCredServer("10.250.0.3:1338", "--account-id", "222222222222")
	pod.SetHosts("10.250.0.2 credproxy\n")
	runInit(t, pod, 0, "--upstream", "127.0.0.1:15080")
	pod.StartProxy("--listen", "127.0.0.1:15080", "--upstream", "credproxy:1338")
	if c := requireCreds(t, pod, credURL); c.AccountId != "111111111111" {
		t.Fatalf("first upstream: %+v", c)
	}
	pod.SetHosts("10.250.0.3 credproxy\n") // the same file, rewritten in place
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c := requireCreds(t, pod, credURL); c.AccountId == "222222222222" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy kept using the old address")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func remoteDev(t *testing.T, ns *nstest.NS) string {
	t.Helper()
	for _, l := range strings.Split(ns.MustExec("ip", "-o", "link"), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && strings.HasPrefix(f[1], "vb") {
			return strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		}
	}
	t.Fatal("no veth in " + ns.Name)
	return ""
}

func TestUserspaceModeServesTheEndpointItself(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338", "--token", "tok")
	runInit(t, ns, 0, "--mode", "alias-only")
	ns.MustExec("sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=80")
	ns.StartProxy("--listen", "169.254.170.2:80")
	rep := waitReady(t, ns, true)
	if c := check(rep, "endpoint 169.254.170.2:80"); c.ServedBy != "userspace" {
		t.Errorf("servedBy: %+v", c)
	}
	requireCreds(t, ns, credURL, "--auth", "tok")
}

func TestLowPortBindErrorNamesTheSysctl(t *testing.T) {
	ns := nstest.New(t)
	runInit(t, ns, 0, "--mode", "alias-only")
	argv := append(append([]string{}, nstest.NonRoot...), nstest.Bin(t, "ecsmeta-proxy"), "--listen", "169.254.170.2:80")
	r := ns.Exec(argv...)
	if r.Code != 1 || !strings.Contains(r.Stderr, "net.ipv4.ip_unprivileged_port_start") ||
		!strings.Contains(r.Stderr, "securityContext.sysctls") || !strings.Contains(r.Stderr, "sysctls:") {
		t.Fatalf("want exit 1 naming the sysctl and where to set it, got %d:\n%s", r.Code, r.Stderr)
	}
}

func TestSafetyNetListenerCatchesTrafficWhenTheRuleDisappears(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338")
	runInit(t, ns, 0)
	ns.MustExec("sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=80")
	ns.StartProxy("--listen", "169.254.170.2:80")
	rep := waitReady(t, ns, true)
	if c := check(rep, "endpoint 169.254.170.2:80"); c.ServedBy != "kernel" {
		t.Errorf("while the DNAT exists it wins: %+v", c)
	}
	ns.MustExec("iptables-nft", "-t", "nat", "-F", "ECSMETA-OUTPUT")
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep = readyz(t, ns)
		if !rep.Ready {
			t.Fatalf("readiness fell although the listener serves: %+v", rep.Report)
		}
		if c := check(rep, "endpoint 169.254.170.2:80"); c.ServedBy == "userspace" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("verbose readiness never said userspace serves: %+v", rep.Report)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := metric(t, ns, "ecsmeta_endpoint_served_by_userspace"); !strings.HasSuffix(m, " 1") {
		t.Errorf("metric: %q", m)
	}
	requireCreds(t, ns, credURL)
}

func TestSIGTERMDrainsOpenConnectionsAndExitsZero(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338", "--delay", "1500ms", "--quiet")
	runInit(t, ns, 0, "--upstream", "127.0.0.1:15080")
	p := ns.StartProxy("--listen", "127.0.0.1:15080", "--shutdown-grace", "10s")
	load := ns.Start(nil, nstest.Bin(t, "ecsmeta-testkit"), "load", "--url", "http://127.0.0.1:15080/v1/credentials", "--c", "100", "--n", "100", "--duration", "20s")
	nstest.WaitFor(t, func() bool { return strings.HasSuffix(metric(t, ns, "ecsmeta_forward_connections_active"), " 100") })
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// ip netns exec passes the signal on by exec'ing setpriv, which execs the proxy.
	err := p.Cmd.Wait()
	if err != nil {
		t.Fatalf("proxy exit: %v\n%s", err, p.Out.String())
	}
	if err := load.Cmd.Wait(); err != nil {
		t.Fatalf("load: %v", err)
	}
	var res struct{ Requests, Errors int64 }
	out := load.Out.String()
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Requests != 100 || res.Errors != 0 {
		t.Fatalf("want 100 requests and no errors across the shutdown, got %s", out)
	}
	if !strings.Contains(p.Out.String(), "shutting down") {
		t.Errorf("no shutdown log:\n%s", p.Out.String())
	}
}

func TestConnectionsFromOutsideTheNamespaceAreRefused(t *testing.T) {
	pod := nstest.New(t)
	nb := nstest.New(t)
	nstest.Veth(t, pod, "10.249.0.1/24", nb, "10.249.0.2/24")
	pod.StartCredServer("127.0.0.1:1338")
	pod.StartProxy("--listen", "0.0.0.0:15080")
	requireCreds(t, pod, "http://10.249.0.1:15080/v1/credentials") // the pod itself, via its own IP
	if r := nb.Get("http://10.249.0.1:15080/v1/credentials"); r.Code == 0 {
		t.Fatalf("a neighbour got credentials through the listener: %s", r.Stdout)
	}
	if m := metric(t, pod, "ecsmeta_forward_connections_rejected_total", `reason="not_local"`); !strings.HasSuffix(m, " 1") {
		t.Errorf("rejection not counted: %q", m)
	}
}

func TestProxyBadInputGetsOneLineAndExit2(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", "localhost:80"}, {"--probe-expect", "2xx"}, {"--health-addr", "1339"}, {"--probe-path", "health"},
		{"--probe-interval", "0s"}, {"--probe-timeout", "5s"}, {"--max-conns", "0"}, {"--shutdown-grace", "-1s"},
		{"--upstream", "nohost"}, {"--endpoint", "x:y"}, {"--bogus"},
		{"--idle-timeout", "forever"}, {"--dial-timeout", "0s"}, {"--shutdown-delay", "-5s"}, {"--v", "loud"}, {"--version=maybe"},
		{"env", "ECSMETA_LISTEN=localhost:80"}, {"env", "ECSMETA_MAX_CONNS=many"}, {"env", "ECSMETA_PROBE_EXPECT=2xx"},
		{"env", "ECSMETA_ENDPOINT=169.254.170.2:0"}, {"env", "ECSMETA_IDLE_TIMEOUT=-1s"},
	} {
		cmdArgs := append([]string{nstest.Bin(t, "ecsmeta-proxy")}, args...)
		if args[0] == "env" { // a malformed variable, no flag
			cmdArgs = []string{"env", args[1], nstest.Bin(t, "ecsmeta-proxy")}
		}
		r := runHost(cmdArgs...)
		if r.Code != 2 || strings.Count(strings.TrimSpace(r.Stderr), "\n") != 0 || !strings.Contains(r.Stderr, "--") && !strings.Contains(r.Stderr, "ECSMETA_") {
			t.Errorf("%v: want exit 2 and one line naming a flag, got %d: %s", args, r.Code, r.Stderr)
		}
	}
}

func TestHealthcheckSubcommand(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338")
	ns.StartProxy("--health-addr", ":18081")
	hc := append(append([]string{}, nstest.NonRoot...), nstest.Bin(t, "ecsmeta-proxy"), "healthcheck")
	if r := ns.ExecEnv([]string{"ECSMETA_HEALTH_ADDR=:18081"}, hc...); r.Code != 1 {
		t.Fatalf("not ready yet: want exit 1, got %d %s", r.Code, r.Stderr)
	}
	runInit(t, ns, 0)
	nstest.WaitFor(t, func() bool { return ns.ExecEnv([]string{"ECSMETA_HEALTH_ADDR=:18081"}, hc...).Code == 0 })
	if r := ns.Exec(append(hc, "--url", "http://127.0.0.1:18081/readyz")...); r.Code != 0 {
		t.Fatalf("--url: %d %s", r.Code, r.Stderr)
	}
}

func runHost(args ...string) nstest.Result {
	cmd := execCommand(args...)
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if err != nil {
		code = cmd.ProcessState.ExitCode()
	}
	return nstest.Result{Stdout: so.String(), Stderr: se.String(), Code: code}
}
