// Command ecsmeta-testkit holds the small programs the demo, tests and
// benchmarks run inside network namespaces: a test credential server, an
// HTTP getter, a bounded load generator and an idle-connection holder.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ecsmeta/ecsmeta/internal/credtest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ecsmeta-testkit credserver|get|load|hold [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "credserver":
		err = credserver(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	case "hold":
		err = hold(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ecsmeta-testkit %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func credserver(args []string) error {
	fs := flag.NewFlagSet("credserver", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:1338", "listen address")
	s := &credtest.Server{}
	fs.StringVar(&s.Path, "path", "", "credentials path (empty: any path but /health)")
	fs.StringVar(&s.Token, "token", "", "required Authorization value")
	fs.StringVar(&s.TokenFile, "token-file", "", "file holding the required Authorization value, re-read per request")
	tokenEnv := fs.String("token-env", "", "environment variable holding the required Authorization value (as CredProxy takes it in a pod)")
	fs.DurationVar(&s.Expiry, "expiry", time.Hour, "lifetime of issued credentials")
	fs.StringVar(&s.AccountID, "account-id", "", "AccountId to include")
	fs.StringVar(&s.RoleArn, "role-arn", "", "RoleArn to include")
	fs.DurationVar(&s.Delay, "delay", 0, "hold every credential answer this long")
	logPath := fs.String("log", "", "append one JSON line per credential request to this file")
	quiet := fs.Bool("quiet", false, "no request log on stdout")
	_ = fs.Parse(args)
	if *tokenEnv != "" {
		s.Token = os.Getenv(*tokenEnv)
		if s.Token == "" {
			return fmt.Errorf("--token-env %s: the variable is empty", *tokenEnv)
		}
	}
	var logf *os.File
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		logf = f
	}
	s.Log = func(r credtest.Record) {
		b, _ := json.Marshal(r)
		if logf != nil {
			logf.Write(append(b, '\n'))
		}
		if !*quiet {
			fmt.Println(string(b))
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "credserver listening on %s\n", ln.Addr())
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	timeout := fs.Duration("timeout", 3*time.Second, "request timeout")
	auth := fs.String("auth", "", "Authorization header")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one URL")
	}
	req, err := http.NewRequest(http.MethodGet, fs.Arg(0), nil)
	if err != nil {
		return err
	}
	if *auth != "" {
		req.Header.Set("Authorization", *auth)
	}
	c := &http.Client{Timeout: *timeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d\n%s", resp.StatusCode, body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// LoadResult is printed as JSON by load.
type LoadResult struct {
	Requests   int64  `json:"requests"`
	Errors     int64  `json:"errors"`
	FirstError string `json:"firstError,omitempty"`
	// ErrorKinds counts errors by kind: refused, reset, eof, timeout,
	// status, other. A request cut mid-response shows as eof or reset.
	ErrorKinds map[string]int64 `json:"errorKinds,omitempty"`
	Seconds    float64          `json:"seconds"`
	RPS        float64          `json:"rps"`
	P50ms      float64          `json:"p50ms"`
	P99ms      float64          `json:"p99ms"`
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "", "URL to GET")
	auth := fs.String("auth", "", "Authorization header")
	n := fs.Int64("n", 0, "stop after this many requests (0: only the duration bounds it)")
	c := fs.Int("c", 1, "concurrency")
	dur := fs.Duration("duration", 10*time.Second, "stop after this long (always bounded)")
	_ = fs.Parse(args)
	if *url == "" || *dur <= 0 || *dur > 10*time.Minute {
		return fmt.Errorf("need --url and a --duration of at most 10m")
	}
	// A new connection per request and no retries, as SDK refreshes do.
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil, MaxIdleConnsPerHost: -1}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	deadline := time.Now().Add(*dur)
	var issued, errs atomic.Int64
	var firstErr atomic.Value
	var kindsMu sync.Mutex
	kinds := map[string]int64{}
	lat := make([][]time.Duration, *c)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if *n > 0 && issued.Add(1) > *n {
					return
				} else if *n == 0 {
					issued.Add(1)
				}
				t0 := time.Now()
				err := fetch(client, *url, *auth)
				lat[w] = append(lat[w], time.Since(t0))
				if err != nil {
					if errs.Add(1) == 1 {
						firstErr.Store(err.Error())
					}
					kindsMu.Lock()
					kinds[errorKind(err)]++
					kindsMu.Unlock()
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	res := LoadResult{Requests: int64(len(all)), Errors: errs.Load(), Seconds: elapsed.Seconds()}
	if len(kinds) > 0 {
		res.ErrorKinds = kinds
	}
	if v, ok := firstErr.Load().(string); ok {
		res.FirstError = v
	}
	if len(all) > 0 {
		res.RPS = float64(len(all)) / elapsed.Seconds()
		res.P50ms = float64(all[len(all)/2].Microseconds()) / 1000
		res.P99ms = float64(all[len(all)*99/100].Microseconds()) / 1000
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func errorKind(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return "refused"
	case strings.Contains(msg, "connection reset"):
		return "reset"
	case strings.Contains(msg, "EOF"):
		return "eof"
	case strings.Contains(msg, "Timeout") || strings.Contains(msg, "timeout"):
		return "timeout"
	case strings.HasPrefix(msg, "status"):
		return "status"
	}
	return "other"
}

func fetch(c *http.Client, url, auth string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var creds credtest.Credentials
	if err := json.NewDecoder(resp.Body).Decode(&creds); err != nil {
		return fmt.Errorf("status %d: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || creds.AccessKeyId == "" {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	addr := fs.String("addr", "", "address to connect to")
	n := fs.Int("n", 100, "connections to open")
	dur := fs.Duration("for", 30*time.Second, "how long to hold them (bounded)")
	_ = fs.Parse(args)
	if *n > 5000 || *dur > 10*time.Minute {
		return fmt.Errorf("at most 5000 connections for at most 10m")
	}
	var conns []net.Conn
	for i := 0; i < *n; i++ {
		c, err := net.DialTimeout("tcp", *addr, 2*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	fmt.Printf("holding %d\n", len(conns))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case <-ctx.Done():
	case <-time.After(*dur):
	}
	for _, c := range conns {
		c.Close()
	}
	return nil
}
