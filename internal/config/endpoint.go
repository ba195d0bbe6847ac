// Package config holds the configuration shared by ecsmeta-init and
// ecsmeta-proxy: endpoint and upstream syntax, defaults, and the flag/env
// binding both binaries use.
package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Defaults, stated once for both binaries.
const (
	DefaultEndpoint = "169.254.170.2:80"
	DefaultUpstream = "127.0.0.1:1338"
	defaultPort     = 80
)

// Well-known credential endpoints, for documentation and tests.
var (
	ECSEndpoint         = netip.MustParseAddrPort("169.254.170.2:80")
	PodIdentityEndpoint = netip.MustParseAddrPort("169.254.170.23:80")
	PodIdentityIPv6     = netip.MustParseAddrPort("[fd00:ec2::23]:80")
)

// Endpoint is an address applications connect to for credentials.
type Endpoint struct {
	netip.AddrPort
}

// IsLoopback reports whether the endpoint is already local without an alias
// (127.0.0.0/8 or ::1).
func (e Endpoint) IsLoopback() bool { return e.Addr().IsLoopback() }

// Is6 reports whether the endpoint is IPv6.
func (e Endpoint) Is6() bool { return e.Addr().Is6() && !e.Addr().Is4In6() }

// ParseEndpoint parses "IP", "IP:port", "[IPv6]" or "[IPv6]:port"; the port
// defaults to 80.
func ParseEndpoint(s string) (Endpoint, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Endpoint{}, fmt.Errorf("empty endpoint")
	}
	// A bare address, v4 or v6 (without brackets or port).
	if a, err := netip.ParseAddr(s); err == nil {
		return newEndpoint(a, defaultPort)
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		a, err := netip.ParseAddr(s[1 : len(s)-1])
		if err != nil {
			return Endpoint{}, fmt.Errorf("endpoint %q: %q is not an IP address", s, s[1:len(s)-1])
		}
		return newEndpoint(a, defaultPort)
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: want IP, IP:port or [IPv6]:port", s)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %q is not an IP address (endpoints are addresses, not names)", s, host)
	}
	port, err := parsePort(portStr)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	return newEndpoint(a, port)
}

func newEndpoint(a netip.Addr, port uint16) (Endpoint, error) {
	if a.Zone() != "" {
		return Endpoint{}, fmt.Errorf("endpoint %s: zones are not supported", a)
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() {
		return Endpoint{}, fmt.Errorf("endpoint %s: must be a unicast address", a)
	}
	return Endpoint{netip.AddrPortFrom(a, port)}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// ParseEndpoints parses a comma-separated list, dropping duplicates.
func ParseEndpoints(s string) ([]Endpoint, error) {
	var out []Endpoint
	seen := map[netip.AddrPort]bool{}
	for _, part := range strings.Split(s, ",") {
		e, err := ParseEndpoint(part)
		if err != nil {
			return nil, err
		}
		if !seen[e.AddrPort] {
			seen[e.AddrPort] = true
			out = append(out, e)
		}
	}
	return out, nil
}

// Upstream is where the credential server listens: a literal address or a
// host name with a port.
type Upstream struct {
	Host string // IP literal (unbracketed) or DNS name
	Port uint16
}

func (u Upstream) String() string { return net.JoinHostPort(u.Host, strconv.Itoa(int(u.Port))) }

// Addr returns the literal address, if the upstream is one.
func (u Upstream) Addr() (netip.AddrPort, bool) {
	a, err := netip.ParseAddr(u.Host)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), u.Port), true
}

// ParseUpstream parses "IP:port", "[IPv6]:port" or "host:port".
func ParseUpstream(s string) (Upstream, error) {
	s = strings.TrimSpace(s)
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream %q: want IP:port, [IPv6]:port or host:port", s)
	}
	port, err := parsePort(portStr)
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream %q: %w", s, err)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return Upstream{}, fmt.Errorf("upstream %q: must be a unicast address without zone", s)
		}
		return Upstream{Host: a.Unmap().String(), Port: port}, nil
	}
	if !validHostname(host) {
		return Upstream{}, fmt.Errorf("upstream %q: %q is neither an IP address nor a valid host name", s, host)
	}
	return Upstream{Host: strings.ToLower(host), Port: port}, nil
}

// validHostname follows RFC 1123 loosely: dot-separated labels of letters,
// digits, '-' and '_' (compose service names may contain '_').
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return true
}

// ProxyUID is the uid ecsmeta-proxy runs as in its image; an owner filter
// always lets it through, so that its prober keeps working.
const ProxyUID = 65532

// ParsePorts parses a comma-separated list of TCP ports ("" is none).
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range splitList(s) {
		p, err := parsePort(f)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// ParseIDs parses a comma-separated list of numeric uids or gids ("" is none).
func ParseIDs(s string) ([]uint32, error) {
	var out []uint32
	for _, f := range splitList(s) {
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%q: want numeric ids, e.g. 1000,1001", f)
		}
		if !slices.Contains(out, uint32(n)) {
			out = append(out, uint32(n))
		}
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
