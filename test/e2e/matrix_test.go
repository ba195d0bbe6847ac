package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecsmeta/ecsmeta/internal/credtest"
	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

// layout is one pod set-up: a namespace with the test credential server on
// 127.0.0.1:1338 (unless the upstream is down), configured the way a user
// would.
type layout struct {
	ns          *nstest.NS
	dir         string
	serverToken string // file the server reads its expected token from, per request
	clientToken string // file the client reads its token from (…_TOKEN_FILE)
	serverLog   string
}

const (
	relativeURI = "/v1/credentials"
	// credentials expire within every SDK's refresh window (botocore 10
	// min, Go and JS 5 min), so each SDK's second look at them refreshes.
	expiry = "2m"
	// proxyListen is the proxy's loopback listener in the userspace and
	// restricted layouts.
	proxyListen = "127.0.0.1:15080"
)

func newLayout(t *testing.T, kind string) *layout {
	t.Helper()
	ns := nstest.New(t)
	l := &layout{ns: ns, dir: t.TempDir()}
	l.serverToken = filepath.Join(l.dir, "server-token")
	l.clientToken = filepath.Join(l.dir, "client-token")
	l.serverLog = filepath.Join(l.dir, "requests.jsonl")
	for _, f := range []string{l.serverToken, l.clientToken, l.serverLog} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if kind != "upstream-down" {
		ns.StartCredServer("127.0.0.1:1338", "--path", relativeURI, "--token-file", l.serverToken, "--log", l.serverLog,
			"--quiet", "--expiry", expiry, "--account-id", "123456789012", "--role-arn", "arn:aws:iam::123456789012:role/ecsmeta-e2e")
	}
	init := func(args ...string) {
		if r := ns.Exec(append([]string{nstest.Bin(t, "ecsmeta-init")}, args...)...); r.Code != 0 {
			t.Fatalf("ecsmeta-init %v: exit %d: %s", args, r.Code, r.Stderr)
		}
	}
	switch kind {
	case "dnat":
		init("--endpoint", "169.254.170.2:80,169.254.170.23:80")
		ns.StartProxy("--endpoint", "169.254.170.2:80,169.254.170.23:80")
		waitReady(t, ns, true)
	case "userspace":
		// The proxy follows a DNS-named upstream, as with a Service.
		ns.SetHosts("127.0.0.1 localhost credserver\n::1 localhost\n")
		init("--upstream", proxyListen)
		ns.StartProxy("--listen", proxyListen, "--upstream", "credserver:1338")
		waitReady(t, ns, true)
	case "restricted":
		// No init container, no capability: apps use the loopback FULL_URI.
		ns.StartProxy("--listen", proxyListen, "--endpoint", proxyListen)
		waitReady(t, ns, true)
	case "upstream-down":
		init()
		ns.StartProxy()
		waitReady(t, ns, false)
	default:
		t.Fatalf("unknown layout %q", kind)
	}
	return l
}

func waitReady(t *testing.T, ns *nstest.NS, want bool) {
	t.Helper()
	code := "200"
	if !want {
		code = "503"
	}
	var last nstest.Result
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		last = ns.Exec(nstest.Bin(t, "ecsmeta-testkit"), "get", "--timeout", "1s", "http://127.0.0.1:1339/readyz?verbose")
		if strings.HasPrefix(last.Stdout, code+"\n") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("readiness did not become %v: %s %s", want, last.Stdout, last.Stderr)
}

func (l *layout) set(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// records returns the server's request log from byte offset off on.
func (l *layout) records(t *testing.T, off int64) []credtest.Record {
	t.Helper()
	f, err := os.Open(l.serverLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(off, 0); err != nil {
		t.Fatal(err)
	}
	var out []credtest.Record
	s := bufio.NewScanner(f)
	for s.Scan() {
		var r credtest.Record
		if err := json.Unmarshal(s.Bytes(), &r); err != nil {
			t.Fatalf("server log: %v: %q", err, s.Text())
		}
		out = append(out, r)
	}
	return out
}

func (l *layout) logSize(t *testing.T) int64 {
	st, err := os.Stat(l.serverLog)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// variant is one column of the matrix.
type variant struct {
	key, title string
	layout     string
	// env of the case, given the token of its (first) fetch.
	env func(l *layout, tokenA string) []string
	// noToken: the server requires none; rotate: the token changes between
	// two fetches of one process.
	noToken   bool
	rotate    bool
	wantError string // "" wants credentials; "auth" an authorization error; "down" a prompt failure
}

var variants = []variant{
	{key: "relative", title: "RELATIVE_URI, no token", layout: "dnat", noToken: true,
		env: func(*layout, string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=" + relativeURI}
		}},
	{key: "relative-token", title: "RELATIVE_URI + TOKEN", layout: "dnat",
		env: func(_ *layout, tok string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=" + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN=" + tok}
		}},
	{key: "full-token", title: "FULL_URI 169.254.170.2 + TOKEN", layout: "dnat",
		env: func(_ *layout, tok string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.2" + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN=" + tok}
		}},
	{key: "full-token-file", title: "FULL_URI + TOKEN_FILE, rotated in one process", layout: "dnat", rotate: true,
		env: func(l *layout, _ string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.2" + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=" + l.clientToken}
		}},
	{key: "pod-identity", title: "EKS Pod Identity 169.254.170.23 + TOKEN", layout: "dnat",
		env: func(_ *layout, tok string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23" + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN=" + tok}
		}},
	{key: "userspace", title: "userspace path, RELATIVE_URI + TOKEN", layout: "userspace",
		env: func(_ *layout, tok string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=" + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN=" + tok}
		}},
	{key: "restricted", title: "restricted, FULL_URI 127.0.0.1:15080 + TOKEN", layout: "restricted",
		env: func(_ *layout, tok string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://" + proxyListen + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN=" + tok}
		}},
	{key: "wrong-token", title: "wrong token", layout: "dnat", wantError: "auth",
		env: func(*layout, string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=" + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN=not-the-token"}
		}},
	{key: "upstream-down", title: "upstream down", layout: "upstream-down", wantError: "down",
		env: func(_ *layout, tok string) []string {
			return []string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=" + relativeURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN=" + tok}
		}},
}

// Outcomes a cell can have. Anything else is a failure of ours.
const (
	pass           = "pass"
	ignoresFile    = "no: ignores TOKEN_FILE (sends no Authorization)"
	refusesHost    = "no: refuses this FULL_URI host (sends nothing)"
	noRefresh      = "no: does not refresh within its window"
	passCLIRestart = "pass (one fetch per process: rotation across two runs)"
	passGeneric    = "pass, but the error does not say the token was refused"
)

// namesRefusal matches an error that tells the user the token was refused.
var namesRefusal = regexp.MustCompile(`(?i)\b40[13]\b|access ?denied|unauthori[sz]ed|forbidden|invalid authorization`)

// expected is each SDK version's documented behaviour where it differs from
// "pass". A cell that is not listed must pass.
var expected = map[string]string{
	// botocore 1.29 (Debian's boto3 1.26, and the CLI 2.9 that vendors it)
	// predates AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE and the EKS Pod
	// Identity host (botocore 1.31.x / CLI 2.13 added both).
	"AWS CLI v2/full-token-file":   ignoresFile,
	"AWS CLI v2/pod-identity":      refusesHost,
	"Python boto3/full-token-file": ignoresFile,
	"Python boto3/pod-identity":    refusesHost,
	// fromContainerMetadata is the legacy ECS provider: a FULL_URI must be
	// localhost or 127.0.0.1, and it reads no token file. The default chain
	// uses fromHttp, which allows the ECS and EKS addresses.
	"JS SDK v3 fromContainerMetadata/full-token":      refusesHost,
	"JS SDK v3 fromContainerMetadata/full-token-file": refusesHost,
	"JS SDK v3 fromContainerMetadata/pod-identity":    refusesHost,
	// Both JS providers fail at once on a 403 but report a generic
	// "Could not load credentials from any providers" / "Error response
	// received from instance metadata service".
	"JS SDK v3 default chain/wrong-token":         passGeneric,
	"JS SDK v3 fromContainerMetadata/wrong-token": passGeneric,
}

func expectedOutcome(c client, v variant) string {
	if e, ok := expected[c.name+"/"+v.key]; ok {
		return e
	}
	if c.oneShot && v.rotate {
		return passCLIRestart
	}
	return pass
}

// seqOf reads the request number the test server encodes in the key id.
func seqOf(accessKeyID string) int64 {
	n, err := strconv.ParseInt(strings.TrimPrefix(accessKeyID, "ASIAECSMETATEST"), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// verify checks that f is exactly what the server issued for one of recs,
// and that the server saw token (or none) on that request.
func verify(c client, f fetch, recs []credtest.Record, token string) error {
	seq := seqOf(f.AccessKeyId)
	var rec *credtest.Record
	for i := range recs {
		if recs[i].Seq == seq && recs[i].Status == 200 {
			rec = &recs[i]
		}
	}
	if rec == nil {
		return fmt.Errorf("credentials %q were not issued during this run", f.AccessKeyId)
	}
	want := credtest.CredentialsFor(seq, time.Time{}, "", "")
	if f.SecretAccessKey != want.SecretAccessKey || f.SessionToken != want.Token {
		return fmt.Errorf("secret or session token of %s differ from what the server issued", f.AccessKeyId)
	}
	got, err1 := time.Parse(time.RFC3339, f.Expiration)
	issued, err2 := time.Parse(time.RFC3339, rec.Expiration)
	if err1 != nil || err2 != nil || !got.Equal(issued.Add(-c.expiryWindow)) {
		return fmt.Errorf("expiration %q, server issued %q (client's expiry window %s)", f.Expiration, rec.Expiration, c.expiryWindow)
	}
	switch {
	case token == "" && rec.Auth != "none-required":
		return fmt.Errorf("server saw auth %q, want none", rec.Auth)
	case token != "" && (rec.Auth != "ok" || rec.AuthHash != credtest.HashToken(token)):
		return fmt.Errorf("server saw auth %q (hash %s), want the token of this fetch", rec.Auth, rec.AuthHash)
	}
	return nil
}

// classify turns one run into the outcome of its cell, or an error that
// says what went wrong.
func classify(c client, v variant, r run, recs []credtest.Record, tokens []string) (string, error) {
	if r.killed {
		return "", fmt.Errorf("hung: killed after %s", clientBound)
	}
	if len(r.fetches) == 0 {
		return "", fmt.Errorf("printed nothing; stderr: %s", r.stderr)
	}
	first := r.fetches[0]
	switch v.wantError {
	case "auth":
		if first.OK {
			return "", fmt.Errorf("got credentials with a wrong token")
		}
		for _, rec := range recs {
			if rec.Auth == "wrong" && rec.Status == 403 {
				if namesRefusal.MatchString(first.Error) {
					return pass, nil
				}
				return passGeneric, nil
			}
		}
		return "", fmt.Errorf("failed, but the server never refused a wrong token: %s", first.Error)
	case "down":
		if first.OK {
			return "", fmt.Errorf("got credentials with the upstream down")
		}
		return pass, nil
	}
	if !first.OK {
		if len(recs) == 0 {
			return refusesHost, nil
		}
		if v.rotate && recs[0].Auth == "missing" {
			return ignoresFile, nil
		}
		return "", fmt.Errorf("fetch failed: %s (server saw %+v)", first.Error, recs)
	}
	if err := verify(c, first, recs, tokens[0]); err != nil {
		return "", fmt.Errorf("first fetch: %w", err)
	}
	if !v.rotate {
		return pass, nil
	}
	if len(r.fetches) < 2 {
		return "", fmt.Errorf("no second fetch; stderr: %s", r.stderr)
	}
	second := r.fetches[1]
	if !second.OK {
		return "", fmt.Errorf("second fetch, after rotation, failed: %s", second.Error)
	}
	if second.AccessKeyId == first.AccessKeyId {
		return noRefresh, nil
	}
	if seqOf(second.AccessKeyId) < seqOf(first.AccessKeyId) {
		return "", fmt.Errorf("second fetch returned older credentials")
	}
	if err := verify(c, second, recs, tokens[1]); err != nil {
		return "", fmt.Errorf("second fetch, after rotation: %w", err)
	}
	return pass, nil
}

// TestSDKMatrix runs every real client against every variant and checks
// the README's table against what it saw.
func TestSDKMatrix(t *testing.T) {
	nstest.RequireRoot(t)
	cs := clients(t)
	home := t.TempDir()
	versions := map[string]string{}
	for _, c := range cs {
		out, err := execOut(c.version...)
		if err != nil {
			t.Fatalf("%s version: %v: %s", c.name, err, out)
		}
		versions[c.name] = clientVersion(c.name, out)
	}
	observed := map[string]string{}
	layouts := map[string]*layout{}
	start := time.Now()
	for _, v := range variants {
		l := layouts[v.layout]
		if l == nil {
			l = newLayout(t, v.layout)
			layouts[v.layout] = l
		}
		for _, c := range cs {
			c, v := c, v
			t.Run(v.key+"/"+slug(c.name), func(t *testing.T) {
				tokA := "ecsmeta-e2e-token-A-" + v.key
				tokB := "ecsmeta-e2e-token-B-" + v.key
				tokens := []string{tokA, tokB}
				if v.noToken {
					tokens = []string{"", ""}
				}
				l.set(t, l.serverToken, tokens[0])
				l.set(t, l.clientToken, tokA)
				off := l.logSize(t)
				var between func()
				if v.rotate {
					between = func() {
						l.set(t, l.clientToken, tokB)
						l.set(t, l.serverToken, tokB)
					}
				}
				r := runClient(t, l.ns, c, append(baseEnv(home), v.env(l, tokA)...), between)
				recs := l.records(t, off)
				got, err := classify(c, v, r, recs, tokens)
				if err != nil {
					t.Fatalf("%s, %s: %v\nstderr: %s", c.name, v.title, err, r.stderr)
				}
				observed[c.name+"/"+v.key] = got
				detail := ""
				if len(r.fetches) > 0 && !r.fetches[0].OK {
					detail = ": " + firstLine(r.fetches[0].Error)
				}
				t.Logf("%s after %s%s", got, r.elapsed.Round(time.Millisecond), detail)
				if want := expectedOutcome(c, v); got != want {
					t.Errorf("%s %s, %s: got %q, want %q (the SDK's documented behaviour)", c.name, versions[c.name], v.title, got, want)
				}
			})
		}
	}
	t.Logf("matrix: %d cells in %s", len(cs)*len(variants), time.Since(start).Round(time.Second))
	if t.Failed() {
		return
	}
	checkReadme(t, renderTable(cs, versions, observed))
}

func slug(s string) string {
	f := strings.Fields(s)
	return strings.Trim(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.Join(f, "-")), "-")
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}
