package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseEndpoint(t *testing.T) {
	good := map[string]string{
		"169.254.170.2":          "169.254.170.2:80",
		"169.254.170.2:80":       "169.254.170.2:80",
		" 169.254.170.23:8080 ":  "169.254.170.23:8080",
		"[fd00:ec2::23]:80":      "[fd00:ec2::23]:80",
		"[fd00:ec2::23]":         "[fd00:ec2::23]:80",
		"fd00:ec2::23":           "[fd00:ec2::23]:80",
		"127.0.0.1:80":           "127.0.0.1:80",
		"[::ffff:169.254.170.2]": "169.254.170.2:80",
	}
	for in, want := range good {
		e, err := ParseEndpoint(in)
		if err != nil || e.String() != want {
			t.Errorf("ParseEndpoint(%q) = %v, %v; want %s", in, e, err, want)
		}
	}
	for _, in := range []string{"", "metadata:80", "169.254.170.2:0", "169.254.170.2:65536", "169.254.170.2:x",
		"0.0.0.0", "[::]:80", "224.0.0.1", "[fe80::1%eth0]:80", "[fd00::1", "1.2.3.4:80:80", "http://169.254.170.2"} {
		if e, err := ParseEndpoint(in); err == nil {
			t.Errorf("ParseEndpoint(%q) = %v, want an error", in, e)
		}
	}
}

func TestParseEndpointsDropsDuplicates(t *testing.T) {
	e, err := ParseEndpoints("169.254.170.2,169.254.170.2:80,169.254.170.23")
	if err != nil || len(e) != 2 {
		t.Fatalf("got %v, %v", e, err)
	}
}

func TestParseUpstream(t *testing.T) {
	good := map[string]string{
		"127.0.0.1:1338": "127.0.0.1:1338",
		"[::1]:1338":     "[::1]:1338",
		"credproxy:1338": "credproxy:1338",
		"CredProxy.default.svc.cluster.local:1338": "credproxy.default.svc.cluster.local:1338",
		"my_service:80": "my_service:80",
	}
	for in, want := range good {
		u, err := ParseUpstream(in)
		if err != nil || u.String() != want {
			t.Errorf("ParseUpstream(%q) = %v, %v; want %s", in, u, err, want)
		}
	}
	for _, in := range []string{"", "127.0.0.1", "credproxy", ":1338", "0.0.0.0:1338", "bad name:1", "-x:1", "a..b:1", "h:0", "h:99999"} {
		if u, err := ParseUpstream(in); err == nil {
			t.Errorf("ParseUpstream(%q) = %v, want an error", in, u)
		}
	}
}

func newFS() (*FlagSet, *EndpointsValue, *UpstreamValue, *time.Duration) {
	fs := NewFlagSet("t", "test")
	e := fs.AddEndpoints("endpoints")
	u := fs.AddUpstream("upstream")
	d := fs.Duration("lock-timeout", time.Second, "timeout")
	return fs, e, u, d
}

func TestFlagsWinOverEnvAndEnvFillsTheRest(t *testing.T) {
	t.Setenv("ECSMETA_ENDPOINT", "169.254.170.23")
	t.Setenv("ECSMETA_UPSTREAM", "10.0.0.1:1")
	t.Setenv("ECSMETA_LOCK_TIMEOUT", "3s")
	fs, e, u, d := newFS()
	if err := fs.Parse([]string{"--upstream", "127.0.0.1:2"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if e.String() != "169.254.170.23:80" || u.String() != "127.0.0.1:2" || *d != 3*time.Second {
		t.Errorf("got endpoint %s upstream %s timeout %s", e, u, *d)
	}
}

func TestRepeatedEndpointFlagReplacesTheDefaultThenAppends(t *testing.T) {
	fs, e, _, _ := newFS()
	if err := fs.Parse([]string{"--endpoint", "169.254.170.23", "--endpoint", "[fd00:ec2::23],169.254.170.23"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if e.String() != "169.254.170.23:80,[fd00:ec2::23]:80" {
		t.Errorf("got %s", e)
	}
}

func TestBadInputIsOneUsageLineNamingTheFlag(t *testing.T) {
	cases := map[string]struct {
		args []string
		env  string
		want string
	}{
		"unknown flag":  {args: []string{"--nope"}, want: "unknown flag --nope"},
		"bad endpoint":  {args: []string{"--endpoint", "x"}, want: "--endpoint"},
		"bad env":       {env: "ECSMETA_UPSTREAM=nohostport", want: "ECSMETA_UPSTREAM"},
		"missing value": {args: []string{"--upstream"}, want: "--upstream"},
		"stray arg":     {args: []string{"extra"}, want: "unexpected argument"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if c.env != "" {
				k, v, _ := strings.Cut(c.env, "=")
				t.Setenv(k, v)
			}
			fs, _, _, _ := newFS()
			err := fs.Parse(c.args, &bytes.Buffer{})
			if err == nil || !IsUsage(err) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v; want one usage line containing %q", err, c.want)
			}
		})
	}
}

func TestHelpListsEveryFlagWithItsVariable(t *testing.T) {
	fs, _, _, _ := newFS()
	var out bytes.Buffer
	if err := fs.Parse([]string{"--help"}, &out); err != ErrHelp {
		t.Fatalf("got %v", err)
	}
	for _, want := range []string{"--endpoint  [ECSMETA_ENDPOINT] (default 169.254.170.2:80)", "--upstream  [ECSMETA_UPSTREAM] (default 127.0.0.1:1338)", "ECSMETA_LOCK_TIMEOUT"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func FuzzParseEndpoints(f *testing.F) {
	for _, s := range []string{"169.254.170.2", "[fd00:ec2::23]:80", "1.2.3.4:80,5.6.7.8", "[::1", ":80", "a,b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		eps, err := ParseEndpoints(s)
		if err != nil {
			return
		}
		for _, e := range eps {
			if e.Port() == 0 || !e.Addr().IsValid() || e.Addr().IsUnspecified() {
				t.Fatalf("%q gave invalid endpoint %v", s, e)
			}
			// What we print parses back to the same endpoint.
			again, err := ParseEndpoint(e.String())
			if err != nil || again != e {
				t.Fatalf("%q: %v does not round-trip: %v %v", s, e, again, err)
			}
		}
	})
}

func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{"127.0.0.1:1338", "[::1]:1338", "credproxy:1338", "x", "a b:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUpstream(s)
		if err != nil {
			return
		}
		again, err := ParseUpstream(u.String())
		if err != nil || again != u {
			t.Fatalf("%q: %v does not round-trip: %v %v", s, u, again, err)
		}
	})
}

func TestParsePortsAndIDs(t *testing.T) {
	if p, err := ParsePorts(" 1338, 15080,1338 "); err != nil || len(p) != 2 || p[0] != 1338 || p[1] != 15080 {
		t.Errorf("ParsePorts: %v %v", p, err)
	}
	if p, err := ParsePorts(""); err != nil || p != nil {
		t.Errorf("empty list: %v %v", p, err)
	}
	for _, bad := range []string{"0", "65536", "http", "1338;1339", "-1"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) accepted", bad)
		}
	}
	if ids, err := ParseIDs("1000,0,1000,4294967295"); err != nil || len(ids) != 3 {
		t.Errorf("ParseIDs: %v %v", ids, err)
	}
	for _, bad := range []string{"-1", "root", "4294967296", "1.5"} {
		if _, err := ParseIDs(bad); err == nil {
			t.Errorf("ParseIDs(%q) accepted", bad)
		}
	}
}
