package forward

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ecsmeta/ecsmeta/internal/config"
	"github.com/ecsmeta/ecsmeta/internal/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream runs handler on every connection to a loopback listener.
func upstream(t *testing.T, handler func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handler(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func start(t *testing.T, up string, mod func(*Options)) (*Forwarder, string, *metrics.Set) {
	t.Helper()
	u, err := config.ParseUpstream(up)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	o := Options{Listen: []string{"127.0.0.1:0"}, Resolver: &Resolver{Upstream: u}, MaxConns: 16,
		IdleTimeout: 5 * time.Second, DialTimeout: time.Second, Metrics: m}
	if mod != nil {
		mod(&o)
	}
	f := New(o)
	if err := f.Listen(); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { f.Serve(); close(served) }()
	t.Cleanup(func() {
		f.CloseListeners()
		<-served
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		f.Drain(ctx)
		f.Close()
	})
	return f, f.Addrs()[0].String(), m
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func TestForwardsARequestAndItsAnswerUntouched(t *testing.T) {
	body := strings.Repeat("credential-json-", 4000) // 64 KB: several reads
	up := upstream(t, func(c net.Conn) {
		req, _ := io.ReadAll(io.LimitReader(c, int64(len("GET / HTTP/1.0\r\nAuthorization: tok\r\n\r\n"))))
		if !bytes.Contains(req, []byte("Authorization: tok")) {
			return
		}
		io.WriteString(c, body)
	})
	_, addr, m := start(t, up, nil)
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.0\r\nAuthorization: tok\r\n\r\n")
	got, err := io.ReadAll(c)
	if err != nil || string(got) != body {
		t.Fatalf("got %d bytes (%v), want %d", len(got), err, len(body))
	}
	if n := testutil.ToFloat64(m.Bytes.WithLabelValues("to_client")); n != float64(len(body)) {
		t.Errorf("to_client bytes metric %v", n)
	}
}

func TestHalfCloseReachesTheUpstreamAndTheAnswerStillFlows(t *testing.T) {
	up := upstream(t, func(c net.Conn) {
		got, _ := io.ReadAll(c) // until the client's half-close
		io.WriteString(c, "echo:"+string(got))
	})
	_, addr, _ := start(t, up, nil)
	c := dial(t, addr)
	io.WriteString(c, "hello")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "echo:hello" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	up := upstream(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	f, addr, _ := start(t, up, func(o *Options) { o.IdleTimeout = 200 * time.Millisecond })
	c := dial(t, addr)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	if err != io.EOF && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("want the idle connection closed, got %v", err)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("closed after %s, before the idle timeout", el)
	}
	waitActive(t, f, 0)
}

func TestActivityInOneDirectionKeepsTheConnectionOpen(t *testing.T) {
	// The upstream streams slowly while the client sends nothing.
	up := upstream(t, func(c net.Conn) {
		for i := 0; i < 6; i++ {
			io.WriteString(c, "x")
			time.Sleep(80 * time.Millisecond)
		}
	})
	_, addr, _ := start(t, up, func(o *Options) { o.IdleTimeout = 200 * time.Millisecond })
	c := dial(t, addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if string(got) != "xxxxxx" {
		t.Fatalf("got %q: a connection with traffic one way was cut as idle", got)
	}
}

func TestMaxConnsClosesTheExtraAndCountsIt(t *testing.T) {
	up := upstream(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	f, addr, m := start(t, up, func(o *Options) { o.MaxConns = 2 })
	dial(t, addr)
	dial(t, addr)
	waitActive(t, f, 2)
	// The extra connection is reset at once: either the dial or the first
	// read sees it.
	if extra, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		defer extra.Close()
		extra.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := extra.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("the connection beyond --max-conns was served: %v", err)
		}
	}
	waitFor(t, func() bool { return testutil.ToFloat64(m.ConnsRejected.WithLabelValues(addr, "max_conns")) == 1 })
}

func TestUpstreamDownClosesTheClientFast(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	_, addr, m := start(t, dead, nil)
	// The client is reset at once: the dial or the first read sees it.
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("want the client closed at once, got %v", err)
		}
	}
	waitFor(t, func() bool { return testutil.ToFloat64(m.DialErrors) == 1 })
}

func TestDrainClosesWhatOutlivesTheGrace(t *testing.T) {
	up := upstream(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	f, addr, _ := start(t, up, nil)
	dial(t, addr)
	waitActive(t, f, 1)
	f.CloseListeners()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if n := f.Drain(ctx); n != 1 {
		t.Fatalf("drain closed %d, want 1", n)
	}
}

func TestWatchPortSeesTheProbesOwnConnection(t *testing.T) {
	up := upstream(t, func(c net.Conn) {})
	f, addr, _ := start(t, up, nil)
	c := dial(t, addr)
	port := c.LocalAddr().(*net.TCPAddr).AddrPort().Port()
	waitActive(t, f, 1) // the kernel completes the handshake before Accept returns
	served := f.WatchPort(port) // registered after the accept: not seen
	if served() {
		t.Fatal("a port registered after its connection was accepted counted as served")
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0}}
	ln, _ := net.Listen("tcp", "127.0.0.1:0") // find a free port
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p}
	served = f.WatchPort(uint16(p))
	c2, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	waitActive(t, f, 2)
	if !served() {
		t.Fatal("the watched port's connection was not seen")
	}
}

func TestResolverCachesNamesBriefly(t *testing.T) {
	now := time.Unix(100, 0)
	calls := 0
	ip := netip.MustParseAddr("10.0.0.1")
	r := &Resolver{Upstream: config.Upstream{Host: "credproxy", Port: 1338}, Now: func() time.Time { return now },
		Lookup: func(context.Context, string) ([]netip.Addr, error) { calls++; return []netip.Addr{ip}, nil }}
	for i := 0; i < 3; i++ {
		if a, err := r.Resolve(context.Background()); err != nil || a[0].String() != "10.0.0.1:1338" {
			t.Fatal(a, err)
		}
	}
	ip = netip.MustParseAddr("10.0.0.2")
	now = now.Add(ResolveTTL + time.Millisecond)
	if a, _ := r.Resolve(context.Background()); a[0].String() != "10.0.0.2:1338" || calls != 2 {
		t.Fatalf("after the TTL: %v, %d lookups", a, calls)
	}
}

func TestListenErrorsNameTheFix(t *testing.T) {
	m := metrics.New()
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	for addr, want := range map[string]string{
		busy.Addr().String(): "another process already listens",
		"192.0.2.1:15080":    "ecsmeta-init --mode=alias-only",
	} {
		f := New(Options{Listen: []string{"127.0.0.1:0", addr}, MaxConns: 1, Metrics: m})
		err := f.Listen()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", addr, err, want)
		}
	}
}

func TestParseListen(t *testing.T) {
	if l, err := ParseListen("127.0.0.1:15080, 169.254.170.2:80,[::1]:15080"); err != nil || len(l) != 3 {
		t.Fatal(l, err)
	}
	for _, bad := range []string{"localhost:1", "127.0.0.1", ":80", "127.0.0.1:0", "1.2.3.4:99999"} {
		if _, err := ParseListen(bad); err == nil {
			t.Errorf("ParseListen(%q): want an error", bad)
		}
	}
}

func waitActive(t *testing.T, f *Forwarder, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for f.Active() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d active, want %d", f.Active(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 3s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
