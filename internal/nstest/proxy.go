package nstest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// NonRoot runs a command as uid/gid 65532 with no capabilities at all, as
// the proxy's container does.
var NonRoot = []string{"setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"}

// StartProxy runs ecsmeta-proxy in the namespace as NonRoot, probing every
// 200 ms, and waits until its health server answers.
func (ns *NS) StartProxy(args ...string) *Proc {
	ns.t.Helper()
	argv := append(append(append([]string{}, NonRoot...), Bin(ns.t, "ecsmeta-proxy"), "--probe-interval", "200ms", "--probe-timeout", "150ms"), args...)
	p := ns.Start(nil, argv...)
	port := "1339"
	for i, a := range args {
		if a == "--health-addr" {
			port = strings.TrimPrefix(args[i+1], ":")
		}
	}
	WaitFor(ns.t, func() bool { return ns.Get("http://127.0.0.1:"+port+"/healthz").Code == 0 })
	return p
}

// WaitFor polls cond for up to 10 s and fails the test if it never holds.
func WaitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Command returns a command that runs in the namespace with exactly env as
// its environment (nothing of the test process leaks in), killed when ctx
// ends.
func (ns *NS) Command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, "env", "-i"}, append(env, args...)...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}
