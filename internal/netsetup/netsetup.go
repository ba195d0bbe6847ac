// Package netsetup is ecsmeta-init's executor: it takes the planner's
// desired state and applies it to the current network namespace, checks
// it, or removes it, with a rollback when an apply fails half way.
package netsetup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecsmeta/ecsmeta/internal/addrs"
	"github.com/ecsmeta/ecsmeta/internal/config"
	"github.com/ecsmeta/ecsmeta/internal/lock"
	"github.com/ecsmeta/ecsmeta/internal/netfilter"
	"github.com/ecsmeta/ecsmeta/internal/rules"
)

// Backend choices for --iptables-backend.
const BackendAuto = "auto"

// ParseBackend validates --iptables-backend.
func ParseBackend(s string) (string, error) {
	switch s {
	case BackendAuto, netfilter.Nft, netfilter.Legacy:
		return s, nil
	}
	return "", fmt.Errorf("iptables backend %q: want auto, nft or legacy", s)
}

// Options are ecsmeta-init's validated flags.
type Options struct {
	Endpoints     []config.Endpoint
	Upstream      config.Upstream
	Mode          rules.Mode
	AllowFallback bool
	Backend       string // auto, nft or legacy
	LockTimeout   time.Duration
	Force         bool
	// GuardPorts and Owners: see rules.Config.
	GuardPorts []uint16
	Owners     *rules.Owners
	// Lookup resolves a host name; nil means the system resolver.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// ErrDrift is returned by Check when the namespace differs from the plan.
var ErrDrift = errors.New("network namespace differs from the plan")

// Resolve turns the upstream into one address per family, once.
func Resolve(ctx context.Context, o Options) (map[rules.Family]netip.AddrPort, error) {
	out := map[rules.Family]netip.AddrPort{}
	if ap, ok := o.Upstream.Addr(); ok {
		out[rules.FamilyOf(ap.Addr())] = ap
		return out, nil
	}
	lookup := o.Lookup
	if lookup == nil {
		lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	ips, err := lookup(ctx, o.Upstream.Host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("upstream %s: the name resolves to no address (%v): check the name, or give an IP address", o.Upstream, err)
	}
	for _, ip := range ips {
		fam := rules.FamilyOf(ip)
		if _, ok := out[fam]; !ok {
			out[fam] = netip.AddrPortFrom(ip.Unmap(), o.Upstream.Port)
		}
	}
	return out, nil
}

// Plan resolves the upstream (dnat mode) and builds the desired state.
func Plan(ctx context.Context, o Options, noIptables bool) (rules.Plan, error) {
	c := rules.Config{Endpoints: o.Endpoints, Mode: o.Mode, NoIptables: noIptables, GuardPorts: o.GuardPorts, Owners: o.Owners}
	if o.Mode == rules.ModeDNAT {
		ups, err := Resolve(ctx, o)
		if err != nil {
			return rules.Plan{}, err
		}
		c.Upstreams = ups
	} else if ap, ok := o.Upstream.Addr(); ok && o.Owners != nil {
		// alias-only: the proxy forwards to the upstream; a literal address
		// is protected from other uids too (a name may not resolve here).
		c.Upstreams = map[rules.Family]netip.AddrPort{rules.FamilyOf(ap.Addr()): ap}
	}
	return rules.Build(c)
}

// DryRun prints the plan and changes nothing.
func DryRun(ctx context.Context, o Options, w io.Writer) error {
	p, err := Plan(ctx, o, false)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "# ecsmeta-init plan (mode %s)\n", o.Mode)
	fmt.Fprintln(w, "# addresses on lo:")
	for _, a := range p.Addresses {
		fmt.Fprintf(w, "#   %s/%d (marked %s)\n", a, a.BitLen(), ownerMark(a))
	}
	if len(p.Addresses) == 0 {
		fmt.Fprintln(w, "#   none (loopback endpoints only)")
	}
	for _, fam := range rules.Families {
		st, ok := p.Rules[fam]
		if !ok {
			continue
		}
		fmt.Fprintf(w, "# %s rules (iptables-restore --noflush input; jumps go first in their chains):\n", fam)
		fmt.Fprint(w, st.Save())
	}
	return nil
}

func ownerMark(a netip.Addr) string {
	if a.Is4() {
		return fmt.Sprintf("label %s, proto %d", addrs.Label, addrs.Proto)
	}
	return fmt.Sprintf("proto %d", addrs.Proto)
}

// backendView is one backend's reading of one family.
type backendView struct {
	b       *netfilter.Backend
	own     rules.State
	foreign rules.Foreign
}

// readBackends opens and reads every usable backend for fam, in order of
// preference. Unusable ones are returned as errors, by mode.
func readBackends(ctx context.Context, fam rules.Family) (map[string]*backendView, map[string]error) {
	views, errs := map[string]*backendView{}, map[string]error{}
	for _, mode := range netfilter.Modes {
		b, err := netfilter.Open(mode, fam)
		if err != nil {
			errs[mode] = err
			continue
		}
		save, err := b.Save(ctx)
		if err != nil {
			errs[mode] = err
			continue
		}
		own, fr, err := rules.Parse(save)
		if err != nil {
			errs[mode] = err
			continue
		}
		views[mode] = &backendView{b: b, own: own, foreign: fr}
	}
	return views, errs
}

// choose picks the backend: the requested one, or the one that already
// holds rules in this namespace, else the first that works (nft first).
func choose(requested string, views map[string]*backendView, errs map[string]error) (string, error) {
	if requested != BackendAuto {
		if _, ok := views[requested]; !ok {
			return "", errs[requested]
		}
		return requested, nil
	}
	best, bestScore := "", -1
	for _, mode := range netfilter.Modes {
		v, ok := views[mode]
		if !ok {
			continue
		}
		score := v.foreign.Rules
		for _, t := range v.own {
			score += len(t.Jumps)
		}
		if score > bestScore {
			best, bestScore = mode, score
		}
	}
	if best == "" {
		var msgs []string
		for _, mode := range netfilter.Modes {
			msgs = append(msgs, errs[mode].Error())
		}
		return "", fmt.Errorf("no usable iptables backend: %s: %w", strings.Join(msgs, "; "), netfilter.ErrUnavailable)
	}
	return best, nil
}

func meshWarning(fam rules.Family, chosen string, views map[string]*backendView) string {
	for mode, v := range views {
		if mode != chosen && v.foreign.NATOutputRules > 0 {
			return fmt.Sprintf("%s: %d nat OUTPUT rule(s) exist in the %s backend, which our position-1 jump in %s cannot order before; if one redirects all outbound traffic (a service mesh), exclude the endpoint from it (Istio excludeOutboundIPRanges, Linkerd skip-outbound-ips)",
				fam, v.foreign.NATOutputRules, netfilter.Binary(mode, fam), netfilter.Binary(chosen, fam))
		}
	}
	return ""
}

// change is one applied step, with its undo.
type change struct {
	what string
	undo func(context.Context) error
}

// Apply configures the namespace as planned. On failure it undoes what it
// did and returns the first error.
func Apply(ctx context.Context, o Options) (err error) {
	start := time.Now()
	netfilter.Execs.Store(0)
	p, err := Plan(ctx, o, false)
	if err != nil {
		return err
	}
	held, err := lock.Acquire(ctx, o.LockTimeout, func() {
		klog.InfoS("waiting for another ecsmeta-init in this network namespace", "lock", lock.Name, "timeout", o.LockTimeout)
	})
	if err != nil {
		return err
	}
	defer held.Release()

	lo, err := addrs.OpenLoopback()
	if err != nil {
		return err
	}
	present, err := lo.List()
	if err != nil {
		return err
	}
	var toAdd []netip.Addr
	for _, a := range p.Addresses {
		have, found := findAddr(present, a)
		switch {
		case !found:
			toAdd = append(toAdd, a)
		case have.Ours():
		case o.Force:
			klog.InfoS("WARNING: endpoint address exists and is not ours; using it because of --force", "ip", a)
		default:
			return fmt.Errorf("endpoint address %s already exists on lo and was not added by ecsmeta (a hostNetwork pod, or a node agent such as EKS Pod Identity?): refusing to hijack it; pass --force to use it anyway", a)
		}
		if a.Is6() && !found && addrs.IPv6Disabled() {
			return fmt.Errorf("endpoint %s: IPv6 is disabled in this network namespace: set the sysctl net.ipv6.conf.all.disable_ipv6=0 (and net.ipv6.conf.lo.disable_ipv6=0), e.g. compose `sysctls:` or the pod's securityContext.sysctls", a)
		}
	}

	// Read the rulesets before changing anything, so that a missing backend
	// fails early and the rollback knows what to return to.
	type famWork struct {
		chosen string
		views  map[string]*backendView
	}
	work := map[rules.Family]*famWork{}
	for _, fam := range rules.Families {
		if _, ok := p.Rules[fam]; !ok {
			continue
		}
		views, errs := readBackends(ctx, fam)
		chosen, cerr := choose(o.Backend, views, errs)
		if cerr != nil {
			if o.Mode == rules.ModeDNAT && !o.AllowFallback {
				return fmt.Errorf("%s: %w (or pass --allow-fallback to configure addresses only, or use --mode=alias-only with ecsmeta-proxy)", fam, cerr)
			}
			klog.InfoS("WARNING: iptables is unusable here: configuring addresses only; the endpoint is NOT guarded against off-pod access and nothing forwards it unless ecsmeta-proxy listens on it",
				"family", fam, "mode", o.Mode, "reason", cerr.Error())
			work = nil
			break
		}
		work[fam] = &famWork{chosen: chosen, views: views}
		if w := meshWarning(fam, chosen, views); w != "" {
			klog.InfoS("WARNING: " + w)
		}
	}
	if work == nil { // fallback: rebuild the plan without rules
		if p, err = Plan(ctx, o, true); err != nil {
			return err
		}
	}

	var done []change
	defer func() {
		if err == nil {
			return
		}
		for i := len(done) - 1; i >= 0; i-- {
			if uerr := done[i].undo(context.WithoutCancel(ctx)); uerr != nil {
				klog.ErrorS(uerr, "rollback step failed", "step", done[i].what)
			} else {
				klog.InfoS("rolled back", "step", done[i].what)
			}
		}
	}()

	changes := 0
	for _, fam := range rules.Families {
		fw := work[fam]
		if fw == nil {
			continue
		}
		for _, mode := range netfilter.Modes {
			v, ok := fw.views[mode]
			if !ok {
				continue
			}
			want := rules.State{}
			if mode == fw.chosen {
				want = p.Rules[fam]
			}
			text := rules.Transition(v.own, want)
			if text == "" {
				continue
			}
			if err := v.b.Restore(ctx, text, o.LockTimeout); err != nil {
				return fmt.Errorf("apply %s rules: %w", fam, err)
			}
			changes++
			if mode == fw.chosen {
				klog.InfoS("installed rules", "family", fam, "backend", v.b, "version", v.b.Version)
			} else {
				klog.InfoS("removed our rules from the backend not in use", "family", fam, "backend", v.b)
			}
			v, before := v, v.own
			done = append(done, change{what: "rules in " + v.b.String(), undo: func(ctx context.Context) error {
				return converge(ctx, v.b, before, o.LockTimeout)
			}})
		}
	}

	if !lo.Up {
		if err := lo.SetUp(); err != nil {
			return err
		}
		changes++
		klog.InfoS("brought lo up")
		done = append(done, change{what: "lo up", undo: func(context.Context) error { return lo.SetDown() }})
	}
	for _, a := range toAdd {
		if err := lo.Add(a); err != nil {
			return err
		}
		changes++
		klog.InfoS("added address", "ip", a, "dev", "lo")
		a := a
		done = append(done, change{what: "address " + a.String(), undo: func(context.Context) error { return lo.Del(a) }})
	}
	klog.InfoS("ecsmeta-init done", "mode", o.Mode, "endpoints", endpointList(o.Endpoints), "upstream", upstreamFor(o), "changes", changes,
		"iptablesExecs", netfilter.Execs.Load(), "elapsed", time.Since(start).Round(time.Microsecond))
	return nil
}

func upstreamFor(o Options) string {
	if o.Mode != rules.ModeDNAT {
		return "(userspace: ecsmeta-proxy)"
	}
	return o.Upstream.String()
}

func endpointList(eps []config.Endpoint) string {
	s := make([]string, len(eps))
	for i, e := range eps {
		s[i] = e.String()
	}
	return strings.Join(s, ",")
}

// converge re-reads the backend and moves our part of it to want.
func converge(ctx context.Context, b *netfilter.Backend, want rules.State, lockTimeout time.Duration) error {
	save, err := b.Save(ctx)
	if err != nil {
		return err
	}
	own, _, err := rules.Parse(save)
	if err != nil {
		return err
	}
	return b.Restore(ctx, rules.Transition(own, want), lockTimeout)
}

func findAddr(list []addrs.Addr, ip netip.Addr) (addrs.Addr, bool) {
	for _, a := range list {
		if a.IP == ip {
			return a, true
		}
	}
	return addrs.Addr{}, false
}

// Check compares the namespace with the plan and prints each difference
// to w. It changes nothing and returns ErrDrift when anything differs.
func Check(ctx context.Context, o Options, w io.Writer) error {
	p, err := Plan(ctx, o, false)
	if err != nil {
		return err
	}
	var drift, warnings []string
	lo, err := addrs.OpenLoopback()
	if err != nil {
		return err
	}
	present, err := lo.List()
	if err != nil {
		return err
	}
	if !lo.Up {
		drift = append(drift, "lo is down")
	}
	for _, a := range p.Addresses {
		have, found := findAddr(present, a)
		switch {
		case !found:
			drift = append(drift, fmt.Sprintf("address %s missing from lo", a))
		case !have.Ours():
			drift = append(drift, fmt.Sprintf("address %s on lo was not added by ecsmeta", a))
		}
	}
	for _, a := range present {
		if a.Ours() && !slices.Contains(p.Addresses, a.IP) {
			drift = append(drift, fmt.Sprintf("unexpected ecsmeta address %s on lo", a.IP))
		}
	}
	for _, fam := range rules.Families {
		want, planned := p.Rules[fam]
		views, errs := readBackends(ctx, fam)
		if !planned {
			for mode, v := range views {
				if !v.own.Empty() {
					drift = append(drift, fmt.Sprintf("%s: unexpected ecsmeta rules in %s", fam, netfilter.Binary(mode, fam)))
				}
			}
			continue
		}
		requested := o.Backend
		if requested == BackendAuto {
			// Check the backend that holds our rules, if any does.
			for _, mode := range netfilter.Modes {
				if v, ok := views[mode]; ok && !v.own.Empty() {
					requested = mode
					break
				}
			}
		}
		chosen, err := choose(requested, views, errs)
		if err != nil {
			drift = append(drift, fmt.Sprintf("%s: cannot read rules: %v", fam, err))
			continue
		}
		for mode, v := range views {
			if mode == chosen {
				for _, d := range rules.Diff(fmt.Sprintf("%s (%s)", fam, netfilter.Binary(mode, fam)), v.own, want) {
					drift = append(drift, d)
				}
			} else if !v.own.Empty() {
				drift = append(drift, fmt.Sprintf("%s: ecsmeta rules also in %s", fam, netfilter.Binary(mode, fam)))
			}
		}
		if m := meshWarning(fam, chosen, views); m != "" {
			warnings = append(warnings, m)
		}
	}
	for _, m := range warnings {
		fmt.Fprintf(w, "warning: %s\n", m)
	}
	for _, d := range drift {
		fmt.Fprintf(w, "drift: %s\n", d)
	}
	if len(drift) > 0 {
		return fmt.Errorf("%d difference(s): %w", len(drift), ErrDrift)
	}
	fmt.Fprintf(w, "ok: network namespace matches the plan (%d address(es), %d family rule set(s))\n", len(p.Addresses), len(p.Rules))
	return nil
}

// Cleanup removes exactly what ecsmeta-init adds: our chains and jumps in
// every backend and family, and our addresses on lo. It needs no plan.
func Cleanup(ctx context.Context, o Options) error {
	start := time.Now()
	held, err := lock.Acquire(ctx, o.LockTimeout, func() {
		klog.InfoS("waiting for another ecsmeta-init in this network namespace", "lock", lock.Name)
	})
	if err != nil {
		return err
	}
	defer held.Release()
	var errs []error
	removed := 0
	for _, fam := range rules.Families {
		views, _ := readBackends(ctx, fam)
		for _, mode := range netfilter.Modes {
			v, ok := views[mode]
			if !ok || v.own.Empty() {
				continue
			}
			if err := v.b.Restore(ctx, rules.Transition(v.own, rules.State{}), o.LockTimeout); err != nil {
				errs = append(errs, fmt.Errorf("remove %s rules: %w", fam, err))
				continue
			}
			removed++
			klog.InfoS("removed rules", "family", fam, "backend", v.b)
		}
	}
	lo, err := addrs.OpenLoopback()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	present, err := lo.List()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, a := range present {
		if !a.Ours() {
			continue
		}
		if err := lo.Del(a.IP); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
		klog.InfoS("removed address", "ip", a.IP, "dev", "lo")
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	klog.InfoS("ecsmeta-init cleanup done", "changes", removed, "elapsed", time.Since(start).Round(time.Microsecond))
	return nil
}
