package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ecsmeta/ecsmeta/internal/credtest"
	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

const credURL = "http://169.254.170.2/v1/credentials"

func initBin(t *testing.T) string { return nstest.Bin(t, "ecsmeta-init") }

// runInit runs ecsmeta-init in ns and requires exit code want.
func runInit(t *testing.T, ns *nstest.NS, want int, args ...string) nstest.Result {
	t.Helper()
	r := ns.Exec(append([]string{initBin(t)}, args...)...)
	if r.Code != want {
		t.Fatalf("ecsmeta-init %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, want, r.Stdout, r.Stderr)
	}
	return r
}

// requireCreds asserts that a GET of url in ns returned the test server's
// credentials.
func requireCreds(t *testing.T, ns *nstest.NS, url string, extra ...string) credtest.Credentials {
	t.Helper()
	r := ns.WaitGet(url, 5*time.Second, extra...)
	if r.Code != 0 {
		t.Fatalf("GET %s: exit %d\n%s%s", url, r.Code, r.Stdout, r.Stderr)
	}
	body := r.Stdout[strings.IndexByte(r.Stdout, '\n')+1:]
	var c credtest.Credentials
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatalf("GET %s: not credentials: %v\n%s", url, err, r.Stdout)
	}
	if !strings.HasPrefix(c.AccessKeyId, "ASIAECSMETATEST") || c.SecretAccessKey == "" || c.Token == "" {
		t.Fatalf("GET %s: unexpected credentials %+v", url, c)
	}
	return c
}

func TestDNATCarriesCredentialRequestOnBothBackends(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			ns := nstest.New(t)
			ns.StartCredServer("127.0.0.1:1338", "--token", "sekrit")
			runInit(t, ns, 0, "--iptables-backend", backend)
			requireCreds(t, ns, credURL, "--auth", "sekrit")
			save := ns.Save("iptables-" + backend)
			for _, want := range []string{
				"-A OUTPUT -j ECSMETA-OUTPUT",
				"-A ECSMETA-OUTPUT -d 169.254.170.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:1338",
				"-A INPUT -j ECSMETA-INPUT",
			} {
				if !strings.Contains(save, want) {
					t.Errorf("iptables-%s-save lacks %q:\n%s", backend, want, save)
				}
			}
			other := map[string]string{"nft": "legacy", "legacy": "nft"}[backend]
			if s := ns.Save("iptables-" + other); strings.Contains(s, "ECSMETA") {
				t.Errorf("rules leaked into the %s backend:\n%s", other, s)
			}
			runInit(t, ns, 0, "--check", "--iptables-backend", backend)
			// Auto mode finds the backend that holds our rules.
			runInit(t, ns, 0, "--check")
			if r := runInit(t, ns, 0); strings.Contains(ns.Save("iptables-"+other), "ECSMETA") {
				t.Errorf("auto re-run switched backend: %s", r.Stderr)
			}
		})
	}
}

func TestRunningThreeTimesGivesTheSameStateAsOnce(t *testing.T) {
	ns := nstest.New(t)
	runInit(t, ns, 0)
	first := ns.Snapshot()
	for i := 0; i < 2; i++ {
		r := runInit(t, ns, 0)
		if !strings.Contains(r.Stderr, "changes=0") {
			t.Errorf("re-run %d changed something: %s", i+2, r.Stderr)
		}
	}
	if got := ns.Snapshot(); got != first {
		t.Fatalf("state after 3 runs differs from after 1:\n--- once\n%s\n--- thrice\n%s", first, got)
	}
}

func TestTwoConcurrentRunsGiveTheSameStateAsOne(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			ref := nstest.New(t)
			runInit(t, ref, 0, "--iptables-backend", backend)
			ns := nstest.New(t)
			var wg sync.WaitGroup
			res := make([]nstest.Result, 2)
			for i := range res {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					res[i] = ns.Exec(initBin(t), "--iptables-backend", backend)
				}(i)
			}
			wg.Wait()
			for i, r := range res {
				if r.Code != 0 {
					t.Fatalf("run %d: exit %d: %s", i, r.Code, r.Stderr)
				}
			}
			if got, want := ns.Save("iptables-"+backend), ref.Save("iptables-"+backend); got != want {
				t.Fatalf("concurrent runs:\n%s\nwant (one run):\n%s", got, want)
			}
			runInit(t, ns, 0, "--check")
		})
	}
}

// userState puts rules and an address of the user's own into ns, which
// ecsmeta must never touch.
func userState(t *testing.T, ns *nstest.NS) {
	t.Helper()
	ns.MustExec("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.10/32", "-p", "tcp", "-j", "DNAT", "--to-destination", "127.0.0.1:9")
	ns.MustExec("iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	ns.MustExec("ip6tables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	ns.MustExec("ip", "addr", "add", "192.0.2.99/32", "dev", "lo")
}

func TestCleanupReturnsTheNamespaceToItsOriginalState(t *testing.T) {
	ns := nstest.New(t)
	userState(t, ns)
	before := ns.Snapshot()
	runInit(t, ns, 0, "--endpoint", "169.254.170.2,169.254.170.23,[fd00:ec2::23]:80,127.0.0.1:8080", "--upstream", "127.0.0.1:1338", "--mode", "alias-only")
	runInit(t, ns, 0, "--cleanup")
	runInit(t, ns, 0, "--endpoint", "169.254.170.2", "--upstream", "10.9.8.7:1338")
	if ns.Snapshot() == before {
		t.Fatal("apply changed nothing")
	}
	runInit(t, ns, 0, "--cleanup")
	if after := ns.Snapshot(); after != before {
		t.Fatalf("cleanup left a different namespace:\n--- before\n%s\n--- after\n%s", before, after)
	}
	// Cleanup of a clean namespace is a no-op.
	runInit(t, ns, 0, "--cleanup")
}

func TestDryRunAndCheckChangeNothing(t *testing.T) {
	ns := nstest.New(t)
	userState(t, ns)
	before := ns.Snapshot()
	r := runInit(t, ns, 0, "--dry-run", "--upstream", "10.1.2.3:1338")
	for _, want := range []string{"169.254.170.2/32", "-j DNAT --to-destination 10.1.2.3:1338", "MASQUERADE", "*filter"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, r.Stdout)
		}
	}
	r = runInit(t, ns, 1, "--check")
	if !strings.Contains(r.Stdout, "drift: address 169.254.170.2 missing from lo") || !strings.Contains(r.Stdout, "missing chain ECSMETA-OUTPUT") {
		t.Errorf("check on an unconfigured namespace:\n%s", r.Stdout)
	}
	if after := ns.Snapshot(); after != before {
		t.Fatalf("dry-run/check changed the namespace:\n--- before\n%s\n--- after\n%s", before, after)
	}
	// --dry-run needs no privileges at all.
	cmd := exec.Command("setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", initBin(t), "--dry-run")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dry-run without privileges: %v\n%s", err, out)
	}
}

func TestCheckDetectsADeletedRuleAndADeletedAddress(t *testing.T) {
	ns := nstest.New(t)
	runInit(t, ns, 0)
	runInit(t, ns, 0, "--check")
	ns.MustExec("iptables-nft", "-t", "nat", "-D", "ECSMETA-OUTPUT", "1")
	r := runInit(t, ns, 1, "--check")
	if !strings.Contains(r.Stdout, "missing rule -A ECSMETA-OUTPUT -d 169.254.170.2/32") {
		t.Errorf("check missed the deleted rule:\n%s", r.Stdout)
	}
	runInit(t, ns, 0) // repairs
	runInit(t, ns, 0, "--check")
	ns.MustExec("ip", "addr", "del", "169.254.170.2/32", "dev", "lo")
	r = runInit(t, ns, 1, "--check")
	if !strings.Contains(r.Stdout, "address 169.254.170.2 missing from lo") {
		t.Errorf("check missed the deleted address:\n%s", r.Stdout)
	}
	ns.MustExec("iptables-nft", "-t", "nat", "-I", "OUTPUT", "1", "-p", "udp", "-j", "ACCEPT")
	r = runInit(t, ns, 1, "--check")
	if !strings.Contains(r.Stdout, "not at position 1") {
		t.Errorf("check missed the displaced jump:\n%s", r.Stdout)
	}
	runInit(t, ns, 0)
	runInit(t, ns, 0, "--check")
}

func TestIPv6Endpoint(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("[::1]:1338")
	runInit(t, ns, 0, "--endpoint", "[fd00:ec2::23]:80", "--upstream", "[::1]:1338")
	requireCreds(t, ns, "http://[fd00:ec2::23]/v1/credentials")
	if s := ns.Save("ip6tables-nft"); !strings.Contains(s, "-d fd00:ec2::23/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [::1]:1338") {
		t.Errorf("ip6tables rules:\n%s", s)
	}
	if a := ns.MustExec("ip", "-6", "addr", "show", "dev", "lo"); !strings.Contains(a, "fd00:ec2::23/128") {
		t.Errorf("address missing:\n%s", a)
	}
	// IPv6 has no labels: --check and --cleanup recognise the address by
	// its IFA_PROTO mark (iproute2 6.1 does not print it).
	runInit(t, ns, 0, "--endpoint", "[fd00:ec2::23]:80", "--upstream", "[::1]:1338", "--check")
	runInit(t, ns, 0, "--cleanup")
	if a := ns.MustExec("ip", "-6", "addr", "show", "dev", "lo"); strings.Contains(a, "fd00:ec2::23") {
		t.Errorf("cleanup left the IPv6 address:\n%s", a)
	}
}

func TestIPv6DisabledNamesTheSysctl(t *testing.T) {
	ns := nstest.New(t)
	ns.MustExec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.lo.disable_ipv6=1")
	before := ns.Snapshot()
	r := runInit(t, ns, 1, "--endpoint", "[fd00:ec2::23]:80", "--upstream", "[::1]:1338")
	if !strings.Contains(r.Stderr, "disable_ipv6") {
		t.Errorf("error does not name the sysctl: %s", r.Stderr)
	}
	if ns.Snapshot() != before {
		t.Error("failed run changed the namespace")
	}
}

func TestEKSPodIdentityAddress(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338")
	runInit(t, ns, 0, "--endpoint", "169.254.170.23")
	requireCreds(t, ns, "http://169.254.170.23/v1/credentials")
}

func TestLoopbackEndpointNeedsNoAlias(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338")
	before := ns.MustExec("ip", "-o", "addr", "show", "dev", "lo")
	runInit(t, ns, 0, "--endpoint", "127.0.0.1:80")
	requireCreds(t, ns, "http://127.0.0.1/v1/credentials")
	if after := ns.MustExec("ip", "-o", "addr", "show", "dev", "lo"); after != before {
		t.Errorf("a loopback endpoint added an address:\n%s", after)
	}
	if s := ns.Save("iptables-nft"); strings.Contains(s, "ECSMETA-INPUT") {
		t.Errorf("a loopback endpoint needs no inbound guard (the kernel drops 127/8 from outside):\n%s", s)
	}
}

func TestRemoteUpstreamIsMasqueradedAndRepliesPassTheGuard(t *testing.T) {
	pod := nstest.New(t)
	remote := nstest.New(t)
	nstest.Veth(t, pod, "10.251.0.1/24", remote, "10.251.0.2/24")
	remote.StartCredServer("10.251.0.2:1338")
	runInit(t, pod, 0, "--upstream", "10.251.0.2:1338")
	requireCreds(t, pod, credURL)
	if s := pod.Save("iptables-nft"); !strings.Contains(s, "-A ECSMETA-POSTROUTING -p tcp -m conntrack --ctorigdst 169.254.170.2 --ctorigdstport 80 -j MASQUERADE") {
		t.Errorf("no scoped MASQUERADE:\n%s", s)
	}
	runInit(t, pod, 0, "--upstream", "10.251.0.2:1338", "--check")
}

func TestUpstreamByNameIsResolvedOnce(t *testing.T) {
	pod := nstest.New(t)
	remote := nstest.New(t)
	nstest.Veth(t, pod, "10.252.0.1/24", remote, "10.252.0.2/24")
	remote.StartCredServer("10.252.0.2:1338")
	pod.SetHosts("127.0.0.1 localhost\n10.252.0.2 credproxy\n")
	runInit(t, pod, 0, "--upstream", "credproxy:1338")
	requireCreds(t, pod, credURL)
	if s := pod.Save("iptables-nft"); !strings.Contains(s, "--to-destination 10.252.0.2:1338") {
		t.Errorf("name not resolved into the rule:\n%s", s)
	}
}

func TestMeshCatchAllRedirectDoesNotCaptureCredentialTraffic(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			ns := nstest.New(t)
			ns.StartCredServer("127.0.0.1:1338")
			// A sidecar mesh's catch-all: every outbound TCP connection goes to
			// its proxy on 15001, where nothing credential-like answers.
			ns.MustExec("iptables-"+backend, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001")
			sink := ns.Start(nil, "socat", "TCP-LISTEN:15001,reuseaddr,fork", "SYSTEM:echo HTTP/1.0 418 mesh")
			_ = sink
			runInit(t, ns, 0)
			requireCreds(t, ns, credURL)
			if s := ns.Save("iptables-" + backend); !strings.Contains(s, "-A OUTPUT -j ECSMETA-OUTPUT\n-A OUTPUT -p tcp -j REDIRECT") {
				t.Errorf("our jump is not before the mesh's redirect:\n%s", s)
			}
		})
	}
}

func TestForeignAddressIsRefusedUnlessForced(t *testing.T) {
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338")
	// A node agent (EKS Pod Identity) owns 169.254.170.23 here.
	ns.MustExec("ip", "addr", "add", "169.254.170.23/32", "dev", "lo")
	before := ns.Snapshot()
	r := runInit(t, ns, 1, "--endpoint", "169.254.170.23")
	if !strings.Contains(r.Stderr, "--force") || strings.Count(strings.TrimSpace(r.Stderr), "\n") != 0 {
		t.Errorf("want one line naming --force, got:\n%s", r.Stderr)
	}
	if ns.Snapshot() != before {
		t.Fatal("refused run changed the namespace")
	}
	runInit(t, ns, 0, "--endpoint", "169.254.170.23", "--force")
	requireCreds(t, ns, "http://169.254.170.23/v1/credentials")
	runInit(t, ns, 0, "--cleanup")
	if a := ns.MustExec("ip", "-o", "addr", "show", "dev", "lo"); !strings.Contains(a, "169.254.170.23/32") {
		t.Errorf("cleanup removed an address that was not ours:\n%s", a)
	}
}

// TestInboundGuard proves the guard both ways: a neighbour that routes
// 169.254.170.0/24 to the pod reaches a listener on the endpoint without
// the guard, and not with it.
func TestInboundGuard(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			pod := nstest.New(t)
			nb := nstest.New(t)
			nstest.Veth(t, pod, "10.253.0.1/24", nb, "10.253.0.2/24")
			nb.MustExec("ip", "route", "add", "169.254.170.0/24", "via", "10.253.0.1")
			runInit(t, pod, 0, "--mode", "alias-only", "--iptables-backend", backend)
			// A userspace listener on the endpoint, as ecsmeta-proxy would have.
			pod.StartCredServer("169.254.170.2:80")
			requireCreds(t, pod, credURL)

			pod.MustExec("iptables-"+backend, "-D", "INPUT", "-j", "ECSMETA-INPUT")
			if r := nb.Get(credURL); r.Code != 0 {
				t.Fatalf("control: without the guard the neighbour should reach the listener: %s %s", r.Stdout, r.Stderr)
			}
			runInit(t, pod, 0, "--mode", "alias-only", "--iptables-backend", backend) // repairs the guard
			if r := nb.Get(credURL); r.Code == 0 {
				t.Fatalf("with the guard the neighbour still got credentials: %s", r.Stdout)
			}
			requireCreds(t, pod, credURL)
		})
	}
}

func TestOwnLockHeldMakesInitWaitOrTimeOut(t *testing.T) {
	ns := nstest.New(t)
	holder := ns.Start(nil, "socat", "ABSTRACT-LISTEN:ecsmeta-init.lock", "STDOUT")
	nstest.WaitFor(t, func() bool { return strings.Contains(ns.MustExec("ss", "-xl"), "ecsmeta-init.lock") })
	before := ns.Snapshot()
	r := runInit(t, ns, 1, "--lock-timeout", "300ms")
	if !strings.Contains(r.Stderr, "--lock-timeout") {
		t.Errorf("timeout error does not name --lock-timeout: %s", r.Stderr)
	}
	if ns.Snapshot() != before {
		t.Fatal("timed-out run changed the namespace")
	}
	go func() { time.Sleep(500 * time.Millisecond); holder.Stop() }()
	r = runInit(t, ns, 0, "--lock-timeout", "10s")
	if !strings.Contains(r.Stderr, "waiting for another ecsmeta-init") {
		t.Errorf("no wait was logged: %s", r.Stderr)
	}
	runInit(t, ns, 0, "--check")
}

func TestXtablesLockHeldMakesLegacyWaitOrTimeOut(t *testing.T) {
	ns := nstest.New(t)
	lockFile := filepath.Join(t.TempDir(), "xtables.lock")
	env := []string{"XTABLES_LOCKFILE=" + lockFile}
	f, err := os.Create(lockFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	before := ns.Snapshot()
	r := ns.ExecEnv(env, initBin(t), "--iptables-backend", "legacy", "--lock-timeout", "1s")
	if r.Code != 1 || !strings.Contains(r.Stderr, "xtables lock") {
		t.Fatalf("want exit 1 naming the xtables lock, got %d: %s", r.Code, r.Stderr)
	}
	if ns.Snapshot() != before {
		t.Fatal("timed-out run changed the namespace")
	}
	go func() { time.Sleep(1500 * time.Millisecond); _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }()
	r = ns.ExecEnv(env, initBin(t), "--iptables-backend", "legacy", "--lock-timeout", "10s")
	if r.Code != 0 {
		t.Fatalf("after the lock was freed: exit %d: %s", r.Code, r.Stderr)
	}
	runInit(t, ns, 0, "--check", "--iptables-backend", "legacy")
}

func TestBadInputGetsOneLineExit2AndChangesNothing(t *testing.T) {
	ns := nstest.New(t)
	userState(t, ns)
	before := ns.Snapshot()
	cases := []struct {
		args []string
		env  []string
	}{
		{args: []string{"--endpoint", "169.254.170.2:99999"}},
		{args: []string{"--endpoint", "metadata.local:80"}},
		{args: []string{"--endpoint", ""}},
		{args: []string{"--endpoint", "0.0.0.0"}},
		{args: []string{"--upstream", "127.0.0.1"}},
		{args: []string{"--upstream", "bad name:1338"}},
		{args: []string{"--upstream", "[::1]:1338"}}, // IPv4 endpoint, IPv6 upstream
		{args: []string{"--endpoint", "[fd00:ec2::23]", "--upstream", "127.0.0.1:1338"}},
		{args: []string{"--endpoint", "127.0.0.1:1338"}}, // endpoint is the upstream
		{args: []string{"--mode", "socat"}},
		{args: []string{"--iptables-backend", "ebpf"}},
		{args: []string{"--lock-timeout", "soon"}},
		{args: []string{"--lock-timeout", "-1s"}},
		{args: []string{"--check", "--cleanup"}},
		{args: []string{"--mode", "alias-only", "--allow-fallback"}},
		{args: []string{"--force=maybe"}},
		{args: []string{"--no-such-flag"}},
		{args: []string{"stray-argument"}},
		{env: []string{"ECSMETA_ENDPOINT=not-an-ip"}},
		{env: []string{"ECSMETA_MODE=nat"}},
		{env: []string{"ECSMETA_LOCK_TIMEOUT=10"}},
		{env: []string{"ECSMETA_DRY_RUN=yes please"}},
		{args: []string{"--guard-ports", "0"}},
		{args: []string{"--guard-ports", "1338,http"}},
		{args: []string{"--allow-uids", "-1"}},
		{args: []string{"--allow-gids", "wheel"}},
		{env: []string{"ECSMETA_ALLOW_UIDS=1000;1001"}},
		{env: []string{"ECSMETA_GUARD_PORTS=65536"}},
	}
	for _, c := range cases {
		name := strings.Join(append(c.env, c.args...), " ")
		r := ns.ExecEnv(c.env, append([]string{initBin(t)}, c.args...)...)
		lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
		if r.Code != 2 || len(lines) != 1 || !strings.HasPrefix(lines[0], "ecsmeta-init: ") {
			t.Errorf("%s: want exit 2 and one line, got exit %d:\n%s", name, r.Code, r.Stderr)
		}
		if !strings.Contains(r.Stderr, "--") && !strings.Contains(r.Stderr, "ECSMETA_") {
			t.Errorf("%s: the error names no flag or variable to fix: %s", name, r.Stderr)
		}
	}
	if ns.Snapshot() != before {
		t.Fatal("bad input changed the namespace")
	}
	// The flag wins over its variable.
	runInit(t, ns, 0, "--dry-run", "--mode", "dnat")
	r := ns.ExecEnv([]string{"ECSMETA_MODE=alias-only"}, initBin(t), "--dry-run", "--mode", "dnat")
	if r.Code != 0 || !strings.Contains(r.Stdout, "DNAT") {
		t.Errorf("flag did not win over ECSMETA_MODE: %d %s %s", r.Code, r.Stdout, r.Stderr)
	}
}

func TestUnresolvableUpstreamExits1AndChangesNothing(t *testing.T) {
	ns := nstest.New(t)
	before := ns.Snapshot()
	r := runInit(t, ns, 1, "--upstream", "no-such-credential-server.invalid:1338")
	if !strings.Contains(r.Stderr, "resolves to no address") || strings.Count(strings.TrimSpace(r.Stderr), "\n") != 0 {
		t.Errorf("want one line saying the name resolves to nothing: %s", r.Stderr)
	}
	if ns.Snapshot() != before {
		t.Fatal("changed the namespace")
	}
}

// TestFailureHalfWayRollsBack breaks ip6tables-restore (a wrapper that
// fails, first in PATH): the IPv4 rules are already in when the IPv6 ones
// fail, and the run must leave the namespace as it found it.
func TestFailureHalfWayRollsBack(t *testing.T) {
	ns := nstest.New(t)
	userState(t, ns)
	before := ns.Snapshot()
	dir := t.TempDir()
	for _, b := range []string{"ip6tables-nft-restore", "ip6tables-legacy-restore"} {
		script := "#!/bin/sh\necho 'ip6tables-restore: line 2 failed' >&2\nexit 1\n"
		if err := os.WriteFile(filepath.Join(dir, b), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"PATH=" + dir + ":" + os.Getenv("PATH")}
	r := ns.ExecEnv(env, initBin(t), "--endpoint", "169.254.170.2,[fd00:ec2::23]", "--mode", "alias-only")
	if r.Code != 1 || !strings.Contains(r.Stderr, "rolled back") {
		t.Fatalf("want exit 1 after a rollback, got %d:\n%s", r.Code, r.Stderr)
	}
	if after := ns.Snapshot(); after != before {
		t.Fatalf("failed run did not roll back:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

func execCommand(args ...string) *exec.Cmd { return exec.Command(args[0], args[1:]...) }
