package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

// clientBound is our own limit on one client run: some SDKs have no timeout
// of their own against a server that accepts and never answers.
const clientBound = 45 * time.Second

// client is one real AWS SDK or CLI, run as an ordinary process.
type client struct {
	name string
	// argv for a run that fetches n times (n is 1 or 2).
	argv func(t *testing.T, n int) []string
	// oneShot: a process fetches once (the CLI); a two-fetch run is two
	// processes.
	oneShot bool
	// version prints the exact version of the SDK under test.
	version []string
	// expiryWindow is how much earlier than issued the client reports the
	// expiration: aws-sdk-go-v2's cache moves Expires forward by its
	// ExpiryWindow.
	expiryWindow time.Duration
}

// fetch is what a client printed for one fetch.
type fetch struct {
	OK              bool   `json:"ok"`
	Error           string `json:"error"`
	AccessKeyId     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	SessionToken    string `json:"SessionToken"`
	Expiration      string `json:"Expiration"`
}

// run is one client process (or two, for a one-shot client).
type run struct {
	fetches []fetch
	stderr  string
	elapsed time.Duration
	killed  bool // our bound ended it: the SDK hung
}

func e2eDir() string {
	wd, _ := os.Getwd()
	return wd
}

func clients(t *testing.T) []client {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: run hack/e2e-deps.sh (make test does)")
	}
	mjs := filepath.Join(e2eDir(), "node", "client.mjs")
	if _, err := os.Stat(filepath.Join(e2eDir(), "node", "node_modules", "@aws-sdk", "credential-providers")); err != nil {
		t.Fatal("the JavaScript SDK is not installed: run hack/e2e-deps.sh (make test does)")
	}
	py := filepath.Join(e2eDir(), "python", "client.py")
	goclient := nstest.Bin(t, "e2e-goclient")
	n := func(n int) string { return fmt.Sprint(n) }
	return []client{
		{name: "AWS CLI v2", oneShot: true, version: []string{"/usr/bin/aws", "--version"},
			argv: func(*testing.T, int) []string {
				return []string{"/usr/bin/aws", "configure", "export-credentials", "--format", "process"}
			}},
		{name: "Python boto3", version: []string{"/usr/bin/python3", "-I", py, "version"},
			argv: func(_ *testing.T, k int) []string { return []string{"/usr/bin/python3", "-I", py, n(k)} }},
		{name: "Go SDK v2 (LoadDefaultConfig)", version: []string{goclient, "version"}, expiryWindow: 5 * time.Minute,
			argv: func(_ *testing.T, k int) []string { return []string{goclient, n(k)} }},
		{name: "JS SDK v3 default chain", version: []string{node, mjs, "version"},
			argv: func(_ *testing.T, k int) []string { return []string{node, mjs, "chain", n(k)} }},
		{name: "JS SDK v3 fromContainerMetadata", version: []string{node, mjs, "version"},
			argv: func(_ *testing.T, k int) []string { return []string{node, mjs, "container", n(k)} }},
	}
}

// baseEnv is the clean environment every client gets, before the
// variables of its case: nothing of this machine's AWS set-up, no IMDS.
func baseEnv(home string) []string {
	return []string{
		"PATH=/usr/bin:/bin", "HOME=" + home, "LANG=C.UTF-8",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_REGION=us-east-1",
		"AWS_CONFIG_FILE=/nonexistent/config", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent/credentials",
		"AWS_PAGER=",
	}
}

// cliFetch turns `aws configure export-credentials --format process`
// output into a fetch.
func cliFetch(stdout, stderr string, code int) fetch {
	if code != 0 {
		return fetch{Error: strings.TrimSpace(stderr)}
	}
	var f fetch
	if err := json.Unmarshal([]byte(stdout), &f); err != nil {
		return fetch{Error: fmt.Sprintf("unreadable CLI output: %v: %q", err, stdout)}
	}
	f.OK = true
	return f
}

// runClient runs c in ns with env, fetching once, or twice with between()
// called after the first fetch (in the same process where the client can).
func runClient(t *testing.T, ns *nstest.NS, c client, env []string, between func()) run {
	t.Helper()
	n := 1
	if between != nil {
		n = 2
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), clientBound)
	defer cancel()
	var r run
	if c.oneShot {
		for i := 0; i < n; i++ {
			if i > 0 {
				between()
			}
			cmd := ns.Command(ctx, env, c.argv(t, 1)...)
			var so, se strings.Builder
			cmd.Stdout, cmd.Stderr = &so, &se
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			r.stderr += se.String()
			r.fetches = append(r.fetches, cliFetch(so.String(), se.String(), code))
			if !r.fetches[i].OK {
				break
			}
		}
	} else {
		cmd := ns.Command(ctx, env, c.argv(t, n)...)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var se strings.Builder
		cmd.Stderr = &se
		if err := cmd.Start(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		lines := bufio.NewScanner(stdout)
		lines.Buffer(make([]byte, 1<<20), 1<<20)
		for i := 0; i < n && lines.Scan(); i++ {
			var f fetch
			if err := json.Unmarshal(lines.Bytes(), &f); err != nil {
				f = fetch{Error: fmt.Sprintf("unreadable client output %q", lines.Text())}
			}
			r.fetches = append(r.fetches, f)
			if !f.OK {
				break
			}
			if i == 0 && n == 2 {
				between()
				_, _ = io.WriteString(stdin, "next\n")
			}
		}
		_ = stdin.Close()
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
		r.stderr = se.String()
	}
	r.elapsed = time.Since(start)
	r.killed = ctx.Err() != nil
	return r
}
