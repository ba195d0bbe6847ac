// Package nstest gives integration tests throw-away network namespaces
// with the real ip, iptables and ecsmeta binaries. Each namespace gets its
// own /etc/netns/NAME/{resolv.conf,hosts}, so name lookups inside it never
// leave the machine.
package nstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireRoot skips a test that needs root, loudly.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		msg := "SKIPPED: NOT ROOT: this integration test creates network namespaces and needs root; run `sudo make test` (CI runs as root and runs it)"
		fmt.Fprintln(os.Stderr, "*** "+msg)
		t.Skip(msg)
	}
}

// Binaries built once per test process.
var (
	buildMu sync.Mutex
	binDir  string
	built   = map[string]bool{}
)

var binPkgs = map[string]string{"ecsmeta-init": "./cmd/init", "ecsmeta-proxy": "./cmd/proxy", "ecsmeta-testkit": "./test/testkit", "e2e-goclient": "./test/e2e/goclient"}

// Bin returns the path of a binary built from the module: "ecsmeta-init",
// "ecsmeta-proxy" or "ecsmeta-testkit". The directory is world-readable so
// that processes running as another uid can execute it.
func Bin(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if binDir == "" {
		d, err := os.MkdirTemp("", "ecsmeta-bin-")
		if err != nil {
			t.Fatal(err)
		}
		must(t, os.Chmod(d, 0o755))
		binDir = d
	}
	path := filepath.Join(binDir, name)
	if !built[name] {
		cmd := exec.Command("go", "build", "-o", path, binPkgs[name])
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
		built[name] = true
	}
	return path
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// NS is a network namespace owned by one test.
type NS struct {
	Name string
	t    testing.TB
}

// New creates a namespace with lo up, deleted when the test ends.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := &NS{Name: "ecsm-" + hex.EncodeToString(b), t: t}
	etc := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	// A resolver that nothing answers: lookups fail fast and stay local.
	must(t, os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(etc, "hosts"), []byte("127.0.0.1 localhost\n::1 localhost\n"), 0o644))
	Run(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", ns.Name).Run()
		_ = os.RemoveAll(etc)
	})
	ns.MustExec("ip", "link", "set", "lo", "up")
	return ns
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// SetHosts writes the namespace's /etc/hosts (seen by processes started
// in it afterwards, and re-read by Go's resolver).
func (ns *NS) SetHosts(content string) {
	ns.t.Helper()
	must(ns.t, os.WriteFile(filepath.Join("/etc/netns", ns.Name, "hosts"), []byte(content), 0o644))
}

// Result is a finished command.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs a command on the host and fails the test on error.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Exec runs a command inside the namespace (bounded to 60 s).
func (ns *NS) Exec(args ...string) Result {
	return ns.ExecEnv(nil, args...)
}

// ExecEnv runs a command inside the namespace with extra environment.
func (ns *NS) ExecEnv(env []string, args ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	cmd.Env = append(cleanEnv(), env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			code = -1
			se.WriteString(err.Error())
		}
	}
	return Result{Stdout: so.String(), Stderr: se.String(), Code: code}
}

// cleanEnv keeps ECSMETA_* variables of the test process away from the
// binaries under test.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ECSMETA_") {
			out = append(out, kv)
		}
	}
	return out
}

// MustExec runs a command in the namespace and fails the test unless it
// exits 0.
func (ns *NS) MustExec(args ...string) string {
	ns.t.Helper()
	r := ns.Exec(args...)
	if r.Code != 0 {
		ns.t.Fatalf("in %s: %s: exit %d\nstdout: %s\nstderr: %s", ns.Name, strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// Proc is a background process in a namespace.
type Proc struct {
	Cmd *exec.Cmd
	Out *SyncBuffer
}

// SyncBuffer is a goroutine-safe output buffer.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs a command in the namespace in the background; it is killed
// when the test ends.
func (ns *NS) Start(env []string, args ...string) *Proc {
	ns.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	cmd.Env = append(cleanEnv(), env...)
	p := &Proc{Cmd: cmd, Out: &SyncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.Out, p.Out
	must(ns.t, cmd.Start())
	ns.t.Cleanup(func() { p.Stop() })
	return p
}

// Stop kills the process and waits for it.
func (p *Proc) Stop() {
	if p.Cmd.ProcessState != nil {
		return
	}
	_ = p.Cmd.Process.Kill()
	_ = p.Cmd.Wait()
}

var countersRE = regexp.MustCompile(`\[\d+:\d+\]`)

// Save returns iptables-save (or ip6tables-save) output of a backend
// without comments and counters, for comparisons.
func (ns *NS) Save(bin string) string {
	ns.t.Helper()
	out := ns.MustExec(bin + "-save")
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		keep = append(keep, countersRE.ReplaceAllString(l, "[0:0]"))
	}
	return strings.Join(keep, "\n")
}

// Snapshot is everything ecsmeta-init may touch: every backend's rules in
// both families and the addresses on lo.
func (ns *NS) Snapshot() string {
	ns.t.Helper()
	var b strings.Builder
	for _, bin := range []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
		fmt.Fprintf(&b, "== %s\n%s\n", bin, ns.Save(bin))
	}
	fmt.Fprintf(&b, "== addresses\n%s", ns.MustExec("ip", "-o", "addr", "show", "dev", "lo"))
	fmt.Fprintf(&b, "== link\n%s", ns.MustExec("ip", "-o", "link", "show", "dev", "lo"))
	return b.String()
}

// Veth joins two namespaces with a veth pair and gives each end an address
// (CIDR notation).
func Veth(t testing.TB, a *NS, aAddr string, b *NS, bAddr string) (aDev, bDev string) {
	t.Helper()
	r := make([]byte, 3)
	_, _ = rand.Read(r)
	aDev, bDev = "va"+hex.EncodeToString(r), "vb"+hex.EncodeToString(r)
	Run(t, "ip", "link", "add", aDev, "netns", a.Name, "type", "veth", "peer", "name", bDev, "netns", b.Name)
	a.MustExec("ip", "addr", "add", aAddr, "dev", aDev)
	b.MustExec("ip", "addr", "add", bAddr, "dev", bDev)
	a.MustExec("ip", "link", "set", aDev, "up")
	b.MustExec("ip", "link", "set", bDev, "up")
	return aDev, bDev
}

// WaitGet polls url from inside the namespace until it answers 2xx or
// the timeout passes; it returns the last result.
func (ns *NS) WaitGet(url string, timeout time.Duration, extra ...string) Result {
	ns.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := ns.Exec(append([]string{Bin(ns.t, "ecsmeta-testkit"), "get", "--timeout", "1s"}, append(extra, url)...)...)
		if r.Code == 0 || time.Now().After(deadline) {
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Get fetches url once from inside the namespace.
func (ns *NS) Get(url string, extra ...string) Result {
	return ns.Exec(append([]string{Bin(ns.t, "ecsmeta-testkit"), "get", "--timeout", "2s"}, append(extra, url)...)...)
}

// StartCredServer starts the test credential server in the namespace and
// waits until it answers /health.
func (ns *NS) StartCredServer(listen string, args ...string) *Proc {
	ns.t.Helper()
	p := ns.Start(nil, append([]string{Bin(ns.t, "ecsmeta-testkit"), "credserver", "--listen", listen}, args...)...)
	host := listen
	if r := ns.WaitGet("http://"+host+"/health", 10*time.Second); r.Code != 0 {
		ns.t.Fatalf("credential server on %s did not come up: %s %s\n%s", listen, r.Stdout, r.Stderr, p.Out.String())
	}
	return p
}

// Main is a root-needing suite's TestMain: it warns loudly when not root
// (every such test then skips), runs the tests and removes the binaries.
func Main(m *testing.M, suite string) {
	if os.Geteuid() != 0 {
		fmt.Fprintf(os.Stderr, "*** WARNING: not root: %s will SKIP. Run `sudo make test`; CI runs it as root.\n", suite)
	}
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// Cleanup removes the built binaries; call it from TestMain.
func Cleanup() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
}
