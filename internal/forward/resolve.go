package forward

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ecsmeta/ecsmeta/internal/config"
)

// ResolveTTL is how long a resolved upstream name is reused: short, so that
// an upstream whose address changes (a restarted compose service, a
// Service's endpoints) is followed within about a second.
const ResolveTTL = time.Second

// Resolver turns the upstream into addresses, caching names for ResolveTTL.
type Resolver struct {
	Upstream config.Upstream
	Lookup   func(ctx context.Context, host string) ([]netip.Addr, error)
	Now      func() time.Time

	mu      sync.Mutex
	addrs   []netip.AddrPort
	expires time.Time
}

// Resolve returns the upstream's addresses.
func (r *Resolver) Resolve(ctx context.Context) ([]netip.AddrPort, error) {
	if ap, ok := r.Upstream.Addr(); ok {
		return []netip.AddrPort{ap}, nil
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	r.mu.Lock()
	if len(r.addrs) > 0 && now().Before(r.expires) {
		a := r.addrs
		r.mu.Unlock()
		return a, nil
	}
	r.mu.Unlock()
	lookup := r.Lookup
	if lookup == nil {
		lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	ips, err := lookup(ctx, r.Upstream.Host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("resolve upstream %s: no address (%v)", r.Upstream.Host, err)
	}
	out := make([]netip.AddrPort, len(ips))
	for i, ip := range ips {
		out[i] = netip.AddrPortFrom(ip.Unmap(), r.Upstream.Port)
	}
	r.mu.Lock()
	r.addrs, r.expires = out, now().Add(ResolveTTL)
	r.mu.Unlock()
	return out, nil
}
