package rules

import (
	"fmt"
	"net/netip"

	"github.com/ecsmeta/ecsmeta/internal/config"
)

// Mode says what ecsmeta-init sets up.
type Mode string

const (
	// ModeDNAT adds the addresses and a kernel DNAT to the upstream.
	ModeDNAT Mode = "dnat"
	// ModeAliasOnly adds the addresses only; ecsmeta-proxy serves them.
	ModeAliasOnly Mode = "alias-only"
)

// ParseMode validates a --mode value.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeDNAT, ModeAliasOnly:
		return Mode(s), nil
	}
	return "", fmt.Errorf("mode %q: want %s or %s", s, ModeDNAT, ModeAliasOnly)
}

// Family is an IP family, named as iptables binaries are (iptables, ip6tables).
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

// Families lists both families in a stable order.
var Families = []Family{IPv4, IPv6}

// FamilyOf returns the family of a.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Chains we own.
const (
	ChainNATOutput      = ChainPrefix + "OUTPUT"
	ChainNATPostrouting = ChainPrefix + "POSTROUTING"
	ChainInputGuard     = ChainPrefix + "INPUT"
	ChainOwnerFilter    = ChainPrefix + "OWNER"
)

// Owners restricts who may open connections to the credential endpoint and
// the upstream, by socket owner (filter OUTPUT, which sees DNATed packets
// with their new destination).
type Owners struct {
	UIDs, GIDs []uint32
}

// Config is what the planner needs: validated flags with the upstream
// already resolved.
type Config struct {
	Endpoints []config.Endpoint
	Mode      Mode
	// Upstreams holds the resolved upstream per family (dnat mode only);
	// an endpoint's family must have one.
	Upstreams map[Family]netip.AddrPort
	// NoIptables plans addresses only (--allow-fallback when iptables is
	// unusable).
	NoIptables bool
	// GuardPorts are local TCP ports (e.g. a credential server bound to
	// 0.0.0.0:1338) that only this namespace may reach: new connections to
	// them that do not arrive on lo are dropped.
	GuardPorts []uint16
	// Owners, if set, lets only these uids/gids connect to the endpoints and
	// the upstream; others get a TCP reset.
	Owners *Owners
}

// Plan is the desired state of the network namespace.
type Plan struct {
	// Addresses go on lo as /32 or /128; loopback endpoints need none.
	Addresses []netip.Addr
	// Rules is our part of each family's ruleset; families we don't need
	// are absent.
	Rules map[Family]State
}

// Build turns configuration into the desired state. It is pure.
func Build(c Config) (Plan, error) {
	p := Plan{Rules: map[Family]State{}}
	if len(c.Endpoints) == 0 {
		return p, config.Usagef("no endpoint given (see --help)")
	}
	seenAddr := map[netip.Addr]bool{}
	for _, ep := range c.Endpoints {
		a := ep.Addr()
		fam := FamilyOf(a)
		if !ep.IsLoopback() && !seenAddr[a] {
			seenAddr[a] = true
			p.Addresses = append(p.Addresses, a)
		}
		if c.NoIptables {
			continue
		}
		st := p.Rules[fam]
		if st == nil {
			st = State{}
			p.Rules[fam] = st
		}
		if !ep.IsLoopback() {
			guard := st.table("filter")
			addJump(guard, "INPUT", ChainInputGuard)
			addRule(guard, ChainInputGuard, fmt.Sprintf("-d %s ! -i lo -m conntrack --ctstate INVALID,NEW -j DROP", prefix(a)))
		}
		for _, port := range c.GuardPorts {
			guard := st.table("filter")
			addJump(guard, "INPUT", ChainInputGuard)
			addRule(guard, ChainInputGuard, fmt.Sprintf("! -i lo -p tcp -m tcp --dport %d -m conntrack --ctstate INVALID,NEW -j DROP", port))
		}
		if c.Owners != nil {
			filterOwners(st.table("filter"), c.Owners,
				fmt.Sprintf("-p tcp -m conntrack --ctstate NEW --ctorigdst %s --ctorigdstport %d", a, ep.Port()))
			if up, ok := c.Upstreams[fam]; ok {
				filterOwners(st.table("filter"), c.Owners,
					fmt.Sprintf("-d %s -p tcp -m tcp --dport %d -m conntrack --ctstate NEW", prefix(up.Addr()), up.Port()))
			}
		}
		if c.Mode != ModeDNAT {
			continue
		}
		up, ok := c.Upstreams[fam]
		if !ok {
			other := IPv4
			if fam == IPv4 {
				other = IPv6
			}
			return p, config.Usagef("endpoint %s is %s but the upstream is %s only: the kernel cannot DNAT across families; use --mode=alias-only and let ecsmeta-proxy --listen forward it", ep, fam, other)
		}
		if up == ep.AddrPort {
			return p, config.Usagef("endpoint %s is the upstream itself: point --upstream at the credential server", ep)
		}
		if ep.IsLoopback() && !up.Addr().IsLoopback() {
			return p, config.Usagef("loopback endpoint %s needs a loopback upstream (the kernel will not route 127.0.0.0/8 off the host); use --mode=alias-only with ecsmeta-proxy, or a non-loopback endpoint", ep)
		}
		nat := st.table("nat")
		addJump(nat, "OUTPUT", ChainNATOutput)
		addRule(nat, ChainNATOutput, fmt.Sprintf("-d %s -p tcp -m tcp --dport %d -j DNAT --to-destination %s", prefix(a), ep.Port(), up))
		if !up.Addr().IsLoopback() {
			// The DNATed connection keeps the endpoint as its source, which
			// a remote upstream cannot answer.
			addJump(nat, "POSTROUTING", ChainNATPostrouting)
			addRule(nat, ChainNATPostrouting, fmt.Sprintf("-p tcp -m conntrack --ctorigdst %s --ctorigdstport %d -j MASQUERADE", a, ep.Port()))
		}
	}
	return p, nil
}

// filterOwners lets the allowed owners' new connections that match pass,
// and resets everyone else's.
func filterOwners(t *Table, o *Owners, match string) {
	addJump(t, "OUTPUT", ChainOwnerFilter)
	for _, u := range o.UIDs {
		addRule(t, ChainOwnerFilter, fmt.Sprintf("%s -m owner --uid-owner %d -j RETURN", match, u))
	}
	for _, g := range o.GIDs {
		addRule(t, ChainOwnerFilter, fmt.Sprintf("%s -m owner --gid-owner %d -j RETURN", match, g))
	}
	addRule(t, ChainOwnerFilter, match+" -j REJECT --reject-with tcp-reset")
}

func prefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

func addJump(t *Table, from, to string) {
	for _, j := range t.Jumps {
		if j.From == from && j.To == to {
			return
		}
	}
	t.Jumps = append(t.Jumps, Jump{From: from, To: to})
	if _, ok := t.Chains[to]; !ok {
		t.Chains[to] = nil
	}
}

func addRule(t *Table, chain, rule string) {
	for _, r := range t.Chains[chain] {
		if r == rule {
			return
		}
	}
	t.Chains[chain] = append(t.Chains[chain], rule)
}
