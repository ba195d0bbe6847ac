package integration

import (
	"regexp"
	"strings"
	"testing"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

const podIP, neighbourIP = "10.252.0.1", "10.252.0.2"

// podWithNeighbour is a pod netns and a neighbour on a veth pair that
// routes the link-local credential range through the pod.
func podWithNeighbour(t *testing.T) (pod, nb *nstest.NS) {
	t.Helper()
	pod, nb = nstest.New(t), nstest.New(t)
	nstest.Veth(t, pod, podIP+"/24", nb, neighbourIP+"/24")
	nb.MustExec("ip", "route", "add", "169.254.170.0/24", "via", podIP)
	return pod, nb
}

// offPodTargets are what a neighbour tries: the endpoint, and the pod's
// own address on the endpoint's and the upstream's ports.
var offPodTargets = []string{"http://169.254.170.2/v1/credentials", "http://" + podIP + ":80/v1/credentials", "http://" + podIP + ":1338/v1/credentials"}

// controlReachesEverything shows that, with nothing of ours in place, a
// listener on each target port is reachable from the neighbour: so each
// target's failure later means our set-up stopped it.
func controlReachesEverything(t *testing.T, pod, nb *nstest.NS) {
	t.Helper()
	pod.MustExec("ip", "addr", "add", "169.254.170.2/32", "dev", "lo")
	srv80 := pod.StartCredServer("0.0.0.0:80")
	srv1338 := pod.StartCredServer("0.0.0.0:1338")
	for _, u := range offPodTargets {
		if r := nb.Get(u); r.Code != 0 {
			t.Fatalf("control: the neighbour cannot reach %s even without ecsmeta: %s %s", u, r.Stdout, r.Stderr)
		}
	}
	srv80.Stop()
	srv1338.Stop()
	pod.MustExec("ip", "addr", "del", "169.254.170.2/32", "dev", "lo")
}

func requireUnreachable(t *testing.T, nb *nstest.NS, targets ...string) {
	t.Helper()
	for _, u := range targets {
		if r := nb.Get(u); r.Code == 0 {
			t.Errorf("a neighbour got credentials from %s: %s", u, r.Stdout)
		}
	}
}

// TestEndpointIsUnreachableFromAnotherNamespaceInEveryMode: kernel DNAT,
// the userspace listener behind the DNAT, the proxy on the endpoint itself
// (alias-only), and the safety net.
func TestEndpointIsUnreachableFromAnotherNamespaceInEveryMode(t *testing.T) {
	for _, mode := range []struct {
		name  string
		init  []string
		proxy []string
	}{
		{"dnat", nil, nil},
		{"userspace", []string{"--upstream", "127.0.0.1:15080"}, []string{"--listen", "127.0.0.1:15080"}},
		{"alias-only", []string{"--mode", "alias-only"}, []string{"--listen", "169.254.170.2:80"}},
		{"safety-net", nil, []string{"--listen", "169.254.170.2:80"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			pod, nb := podWithNeighbour(t)
			controlReachesEverything(t, pod, nb)
			pod.MustExec("sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=80")
			pod.StartCredServer("127.0.0.1:1338")
			runInit(t, pod, 0, mode.init...)
			pod.StartProxy(mode.proxy...)
			waitReady(t, pod, true)
			requireCreds(t, pod, credURL)
			requireUnreachable(t, nb, offPodTargets...)
			if v := strings.TrimSpace(pod.MustExec("sysctl", "-n", "net.ipv4.conf.all.route_localnet")); v != "0" {
				t.Errorf("route_localnet = %s, must stay 0", v)
			}
		})
	}
}

// TestUpstreamOnAllAddressesNeedsGuardPorts pins the decision: ecsmeta
// does not touch ports it was not asked about, so a credential server
// bound to 0.0.0.0:1338 is reachable at POD_IP:1338 until --guard-ports
// 1338 (the ECS agent guards its own port the same way).
func TestUpstreamOnAllAddressesNeedsGuardPorts(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			pod, nb := podWithNeighbour(t)
			pod.StartCredServer("0.0.0.0:1338")
			runInit(t, pod, 0, "--iptables-backend", backend)
			remote := "http://" + podIP + ":1338/v1/credentials"
			if r := nb.Get(remote); r.Code != 0 {
				t.Fatalf("control: without --guard-ports the neighbour should reach %s: %s", remote, r.Stderr)
			}
			runInit(t, pod, 0, "--iptables-backend", backend, "--guard-ports", "1338")
			requireUnreachable(t, nb, remote, "http://169.254.170.2/v1/credentials")
			requireCreds(t, pod, credURL)
			requireCreds(t, pod, "http://127.0.0.1:1338/v1/credentials")
			pod.StartProxy()
			waitReady(t, pod, true)
			runInit(t, pod, 0, "--iptables-backend", backend, "--guard-ports", "1338", "--check")
			runInit(t, pod, 0, "--iptables-backend", backend, "--guard-ports", "1338", "--cleanup")
			if r := nb.Get(remote); r.Code != 0 {
				t.Errorf("cleanup must remove the port guard too: %s", r.Stderr)
			}
		})
	}
}

// getAs fetches url from inside ns as uid:gid.
func getAs(t *testing.T, ns *nstest.NS, uid, gid, url string) nstest.Result {
	return ns.Exec("setpriv", "--reuid="+uid, "--regid="+gid, "--clear-groups", nstest.Bin(t, "ecsmeta-testkit"), "get", "--timeout", "2s", url)
}

func TestOwnerFilterLetsOnlyAllowedUIDsAndGIDsReachCredentials(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			ns := nstest.New(t)
			ns.StartCredServer("127.0.0.1:1338")
			runInit(t, ns, 0, "--iptables-backend", backend, "--allow-uids", "1000", "--allow-gids", "3000")
			ns.StartProxy()
			waitReady(t, ns, true) // the proxy's uid 65532 is always allowed
			for _, c := range []struct {
				uid, gid string
				ok       bool
			}{{"1000", "1000", true}, {"2000", "3000", true}, {"2000", "2000", false}, {"0", "0", false}} {
				for _, u := range []string{credURL, "http://127.0.0.1:1338/v1/credentials"} {
					r := getAs(t, ns, c.uid, c.gid, u)
					if (r.Code == 0) != c.ok {
						t.Errorf("uid %s gid %s, %s: exit %d (want allowed=%v): %s %s", c.uid, c.gid, u, r.Code, c.ok, r.Stdout, r.Stderr)
					}
					if !c.ok && !strings.Contains(r.Stderr, "reset") && !strings.Contains(r.Stderr, "refused") {
						t.Errorf("a denied uid must get a prompt reset, got: %s", r.Stderr)
					}
				}
			}
			waitReady(t, ns, true)
			runInit(t, ns, 0, "--iptables-backend", backend, "--allow-uids", "1000", "--allow-gids", "3000", "--check")
		})
	}
}

// TestRulesStayInTheirPlace: nat rules only from OUTPUT and POSTROUTING,
// filter rules only the inbound guard, nothing in PREROUTING or FORWARD.
func TestRulesStayInTheirPlace(t *testing.T) {
	ns := nstest.New(t)
	runInit(t, ns, 0, "--upstream", "10.9.9.9:1338")
	save := ns.Save("iptables-nft")
	jump := regexp.MustCompile(`(?m)^-A (\S+) .*-j (ECSMETA-\S+)`)
	for _, m := range jump.FindAllStringSubmatch(save, -1) {
		if !map[string]bool{"OUTPUT": true, "POSTROUTING": true, "INPUT": true}[m[1]] {
			t.Errorf("a jump to %s from %s", m[2], m[1])
		}
	}
	table := ""
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
		if strings.HasPrefix(l, "-A ECSMETA-") {
			chain := strings.Fields(l)[1]
			ok := table == "nat" && (chain == "ECSMETA-OUTPUT" || chain == "ECSMETA-POSTROUTING") ||
				table == "filter" && chain == "ECSMETA-INPUT" && strings.HasSuffix(l, "-j DROP")
			if !ok {
				t.Errorf("rule out of place in %s: %s", table, l)
			}
		}
	}
	if v := strings.TrimSpace(ns.MustExec("sysctl", "-n", "net.ipv4.conf.lo.route_localnet")); v != "0" {
		t.Errorf("route_localnet on lo = %s", v)
	}
}

// TestInitNeedsExactlyNetAdminAndNetRaw runs ecsmeta-init with a bounding
// set of just those two capabilities, on both backends.
func TestInitNeedsExactlyNetAdminAndNetRaw(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			ns := nstest.New(t)
			ns.StartCredServer("127.0.0.1:1338")
			caps := []string{"setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all"}
			r := ns.Exec(append(caps, initBin(t), "--iptables-backend", backend)...)
			if r.Code != 0 {
				t.Fatalf("with exactly NET_ADMIN + NET_RAW: exit %d: %s", r.Code, r.Stderr)
			}
			requireCreds(t, ns, credURL)
			r = ns.Exec(append(caps, initBin(t), "--iptables-backend", backend, "--check")...)
			if r.Code != 0 {
				t.Errorf("--check with the same capabilities: %s", r.Stderr)
			}
		})
	}
	// One capability less fails with the missing one named, and changes nothing.
	for _, c := range []struct{ backend, keep, missing string }{{"legacy", "+net_admin", "CAP_NET_RAW"}, {"nft", "+net_raw", "CAP_NET_ADMIN"}} {
		ns := nstest.New(t)
		before := ns.Snapshot()
		r := ns.Exec("setpriv", "--bounding-set=-all,"+c.keep, "--inh-caps=-all", initBin(t), "--iptables-backend", c.backend)
		if r.Code != 1 || !strings.Contains(r.Stderr, "missing capability: add "+c.missing) || strings.Count(strings.TrimSpace(r.Stderr), "\n") > 0 {
			t.Errorf("%s without %s: exit %d, want 1 and one line naming it: %s", c.backend, c.missing, r.Code, r.Stderr)
		}
		if ns.Snapshot() != before {
			t.Errorf("%s without %s changed the namespace", c.backend, c.missing)
		}
	}
}

// TestTokensAreNeverLogged runs everything at the highest verbosity with a
// token through both paths and greps every log.
func TestTokensAreNeverLogged(t *testing.T) {
	const token = "SECRET-TOKEN-must-not-appear-3f9a"
	ns := nstest.New(t)
	ns.StartCredServer("127.0.0.1:1338", "--token", token, "--quiet")
	initLog := runInit(t, ns, 0, "--v", "10", "--upstream", "127.0.0.1:15080")
	proxy := ns.StartProxy("--v", "10", "--listen", "127.0.0.1:15080")
	waitReady(t, ns, true)
	requireCreds(t, ns, credURL, "--auth", token)
	requireCreds(t, ns, "http://127.0.0.1:15080/v1/credentials", "--auth", token)
	if r := ns.Get(credURL, "--auth", "wrong-"+token); r.Code == 0 {
		t.Fatal("a wrong token got credentials")
	}
	logs := initLog.Stdout + initLog.Stderr + proxy.Out.String()
	if !strings.Contains(proxy.Out.String(), "forwarding") {
		t.Fatalf("expected per-connection lines at --v=10; is the log captured? %s", proxy.Out.String())
	}
	if strings.Contains(logs, token) || strings.Contains(logs, "ecsmeta-test-session-token") || strings.Contains(logs, "ecsmeta/test/secret") {
		t.Error("a token or credential appears in the logs")
	}
}
