// Command ecsmeta-init configures a pod's network namespace so that the ECS
// credential endpoint (169.254.170.2:80) leads to a local credential server,
// then exits.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecsmeta/ecsmeta/internal/config"
	"github.com/ecsmeta/ecsmeta/internal/netsetup"
	"github.com/ecsmeta/ecsmeta/internal/rules"
)

const summary = `ecsmeta-init: make the ECS credential endpoint (169.254.170.2:80) lead to a
local credential server, inside this network namespace, then exit.

It adds each endpoint address to lo (marked as ecsmeta's), and in dnat mode
installs an iptables DNAT from the endpoint to the upstream in chains of its
own (ECSMETA-*), plus a filter rule that drops off-pod connections to the
endpoint. Needs CAP_NET_ADMIN and CAP_NET_RAW. Re-running is safe.

Usage: ecsmeta-init [flags]
Exit codes: 0 ok, 1 failed (or --check found drift), 2 bad flags or values.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := config.NewFlagSet("ecsmeta-init", summary)
	endpoints := fs.AddEndpoints("credential endpoints, comma-separated or repeated: IP[:port] or [IPv6][:port]; port defaults to 80")
	upstream := fs.AddUpstream("where the credential server listens: IP:port, or host:port resolved once at start (dnat mode)")
	mode := fs.String("mode", string(rules.ModeDNAT), "dnat: addresses + kernel DNAT to the upstream; alias-only: addresses (and the inbound guard) only, ecsmeta-proxy serves them")
	allowFallback := fs.Bool("allow-fallback", false, "in dnat mode, if iptables is unusable here, configure addresses only, warn loudly and exit 0")
	backend := fs.String("iptables-backend", netsetup.BackendAuto, "auto, nft or legacy; auto picks the backend that already holds rules here, else the first that works (nft first)")
	dryRun := fs.Bool("dry-run", false, "print the plan (addresses and rules in iptables-save form) and exit; needs no privileges, changes nothing")
	check := fs.Bool("check", false, "exit 0 if the namespace is configured exactly as planned, else print what differs and exit 1; changes nothing")
	cleanup := fs.Bool("cleanup", false, "remove exactly what ecsmeta-init adds (its chains, jumps and addresses) and nothing else")
	lockTimeout := fs.Duration("lock-timeout", 10*time.Second, "how long to wait for the xtables lock and for ecsmeta-init's own lock")
	force := fs.Bool("force", false, "use an endpoint address that already exists here although ecsmeta did not add it")
	guardPorts := fs.String("guard-ports", "", "comma-separated local TCP ports only this namespace may reach, e.g. 1338 when the credential server binds 0.0.0.0 (new connections not arriving on lo are dropped)")
	allowUIDs := fs.String("allow-uids", "", "comma-separated uids allowed to connect to the endpoints and the upstream; others get a TCP reset. The proxy's uid 65532 is always allowed")
	allowGIDs := fs.String("allow-gids", "", "comma-separated gids allowed like --allow-uids")
	fs.AddVerbosity()
	fs.AddVersion()

	klog.SetOutput(stderr)
	klog.LogToStderr(false)
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "ecsmeta-init: %v\n", err)
		return code
	}
	if code, done := fs.ParseMain(args, stdout, stderr); done {
		return code
	}
	m, err := rules.ParseMode(*mode)
	if err != nil {
		return fail(config.ExitUsage, config.Usagef("--mode: %v (see --help)", err))
	}
	b, err := netsetup.ParseBackend(*backend)
	if err != nil {
		return fail(config.ExitUsage, config.Usagef("--iptables-backend: %v (see --help)", err))
	}
	if *lockTimeout <= 0 {
		return fail(config.ExitUsage, config.Usagef("--lock-timeout must be positive, e.g. 10s (see --help)"))
	}
	actions := 0
	for _, on := range []bool{*dryRun, *check, *cleanup} {
		if on {
			actions++
		}
	}
	if actions > 1 {
		return fail(config.ExitUsage, config.Usagef("--dry-run, --check and --cleanup exclude each other: pick one (see --help)"))
	}
	if *allowFallback && m != rules.ModeDNAT {
		return fail(config.ExitUsage, config.Usagef("--allow-fallback only applies to --mode=dnat (alias-only never needs iptables to succeed) (see --help)"))
	}
	ports, err := config.ParsePorts(*guardPorts)
	if err != nil {
		return fail(config.ExitUsage, config.Usagef("--guard-ports: %v (see --help)", err))
	}
	uids, err := config.ParseIDs(*allowUIDs)
	if err != nil {
		return fail(config.ExitUsage, config.Usagef("--allow-uids: %v (see --help)", err))
	}
	gids, err := config.ParseIDs(*allowGIDs)
	if err != nil {
		return fail(config.ExitUsage, config.Usagef("--allow-gids: %v (see --help)", err))
	}
	opts := netsetup.Options{
		Endpoints: endpoints.List, Upstream: upstream.Upstream, Mode: m, AllowFallback: *allowFallback,
		Backend: b, LockTimeout: *lockTimeout, Force: *force, GuardPorts: ports,
	}
	if len(uids)+len(gids) > 0 {
		if !slices.Contains(uids, config.ProxyUID) {
			uids = append(uids, config.ProxyUID)
		}
		opts.Owners = &rules.Owners{UIDs: uids, GIDs: gids}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	defer klog.Flush()
	switch {
	case *dryRun:
		err = netsetup.DryRun(ctx, opts, stdout)
	case *check:
		err = netsetup.Check(ctx, opts, stdout)
	case *cleanup:
		err = netsetup.Cleanup(ctx, opts)
	default:
		err = netsetup.Apply(ctx, opts)
	}
	switch {
	case err == nil:
		return config.ExitOK
	case config.IsUsage(err):
		return fail(config.ExitUsage, err)
	case errors.Is(err, netsetup.ErrDrift):
		return fail(config.ExitFailed, err)
	default:
		return fail(config.ExitFailed, err)
	}
}
