package probe

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock fires After only when the test says so.
type fakeClock struct {
	mu    sync.Mutex
	waits []chan time.Time
}

func (c *fakeClock) Now() time.Time { return time.Unix(0, 0) }
func (c *fakeClock) After(time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waits = append(c.waits, ch)
	return ch
}

// tick fires the pending timer, once the prober waits on one.
func (c *fakeClock) tick(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		if len(c.waits) > 0 {
			ch := c.waits[0]
			c.waits = c.waits[1:]
			c.mu.Unlock()
			ch <- time.Unix(0, 0)
			return
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("prober never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

// scripted answers each target from a table the test changes.
type scripted struct {
	mu    sync.Mutex
	ok    map[string]bool
	calls atomic.Int64
}

func (s *scripted) check(_ context.Context, t Target) Result {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ok[t.Name] {
		return Result{OK: true, Kind: "ok", Status: 200}
	}
	return Result{Kind: "refused", Error: "connection refused"}
}

func (s *scripted) set(name string, ok bool) {
	s.mu.Lock()
	s.ok[name] = ok
	s.mu.Unlock()
}

func newProber(s *scripted, clock Clock, changes *[]bool) *Prober {
	var mu sync.Mutex
	return &Prober{
		Targets: []Target{
			{Name: "endpoint a", Endpoint: true},
			{Name: "endpoint b", Endpoint: true},
			{Name: "upstream u"},
		},
		Check: s.check, Interval: time.Second, Timeout: time.Second, Clock: clock,
		OnReady: func(r bool) { mu.Lock(); *changes = append(*changes, r); mu.Unlock() },
	}
}

func waitRounds(t *testing.T, p *Prober, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Report().Rounds < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d rounds, want %d", p.Report().Rounds, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReadinessFollowsEveryEndpointButNotTheUpstream(t *testing.T) {
	s := &scripted{ok: map[string]bool{}}
	clock := &fakeClock{}
	var changes []bool
	p := newProber(s, clock, &changes)
	if p.Ready() || p.Report().Reason != "not probed yet" {
		t.Fatalf("ready before any probe: %+v", p.Report())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	waitRounds(t, p, 1)
	if p.Ready() {
		t.Fatal("ready with every target refusing")
	}

	s.set("endpoint a", true)
	s.set("endpoint b", true)
	clock.tick(t)
	waitRounds(t, p, 2)
	if !p.Ready() {
		t.Fatalf("not ready with both endpoints up: %+v", p.Report())
	}

	s.set("endpoint b", false)
	clock.tick(t)
	waitRounds(t, p, 3)
	if p.Ready() || !strings.Contains(p.Report().Reason, "endpoint b: connection refused") {
		t.Fatalf("one endpoint down must make it unready and say which: %+v", p.Report())
	}

	s.set("endpoint b", true)
	clock.tick(t)
	waitRounds(t, p, 4)
	if !p.Ready() {
		t.Fatal("did not recover")
	}
	cancel()
	clock.tick(t)
	<-done
	if got, want := fmt.Sprint(changes), fmt.Sprint([]bool{false, true, false, true}); got != want {
		t.Fatalf("readiness changes %s, want %s", got, want)
	}
}

func TestReadinessIsServedFromTheCache(t *testing.T) {
	s := &scripted{ok: map[string]bool{"endpoint a": true, "endpoint b": true}}
	var changes []bool
	p := newProber(s, &fakeClock{}, &changes)
	p.Round(context.Background())
	before := s.calls.Load()
	for i := 0; i < 1000; i++ {
		if !p.Ready() {
			t.Fatal("not ready")
		}
		_ = p.Report()
	}
	if s.calls.Load() != before {
		t.Fatalf("readiness queries caused %d probes", s.calls.Load()-before)
	}
}

func TestShutdownMakesItUnreadyForGood(t *testing.T) {
	s := &scripted{ok: map[string]bool{"endpoint a": true, "endpoint b": true}}
	var changes []bool
	p := newProber(s, &fakeClock{}, &changes)
	p.Round(context.Background())
	p.SetNotReady()
	p.Round(context.Background())
	if p.Ready() || p.Report().Reason != "shutting down" {
		t.Fatalf("%+v", p.Report())
	}
}

func TestHTTPCheckerTellsWrongPortFromRightAnswer(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(502) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	exp, _ := ParseExpect("200-299")
	ctx := context.Background()
	if r := HTTPChecker("/health", exp, nil)(ctx, Target{Addr: addr}); !r.OK || r.Status != 200 {
		t.Errorf("health: %+v", r)
	}
	if r := HTTPChecker("/nope", exp, nil)(ctx, Target{Addr: addr}); r.OK || r.Kind != "bad_status" || r.Status != 404 {
		t.Errorf("a 404 (another server behind a wrong DNAT) must not count: %+v", r)
	}
	if r := HTTPChecker("/broken", exp, nil)(ctx, Target{Addr: addr}); r.OK || !strings.Contains(r.Error, "502") {
		t.Errorf("5xx: %+v", r)
	}
	any, _ := ParseExpect("any")
	if r := HTTPChecker("/nope", any, nil)(ctx, Target{Addr: addr}); !r.OK {
		t.Errorf("any: %+v", r)
	}
	srv.Close()
	if r := HTTPChecker("/health", exp, nil)(ctx, Target{Addr: addr}); r.OK || r.Kind != "refused" {
		t.Errorf("closed server: %+v", r)
	}
}

func TestParseExpect(t *testing.T) {
	good := map[string]string{"200-299": "200-299", "200,204": "200,204", "any": "any", " 200-204,404 ": "200-204,404"}
	for in, want := range good {
		e, err := ParseExpect(in)
		if err != nil || e.String() != want {
			t.Errorf("ParseExpect(%q) = %v, %v", in, e, err)
		}
	}
	for _, in := range []string{"", "2xx", "299-200", "99", "600", "200-", "a-b", "200,,204"} {
		if _, err := ParseExpect(in); err == nil {
			t.Errorf("ParseExpect(%q): want an error", in)
		}
	}
}

func FuzzParseExpect(f *testing.F) {
	for _, s := range []string{"200-299", "any", "200,204,300-399", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseExpect(s)
		if err != nil {
			return
		}
		again, err := ParseExpect(e.String())
		if err != nil {
			t.Fatalf("%q -> %q does not parse: %v", s, e.String(), err)
		}
		for code := 100; code < 600; code++ {
			if e.Match(code) != again.Match(code) {
				t.Fatalf("%q and %q disagree on %d", s, e.String(), code)
			}
		}
	})
}
