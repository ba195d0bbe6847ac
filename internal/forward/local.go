package forward

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// localAddrs answers whether an address belongs to this network namespace,
// refreshing its view at most once a second when it meets one it doesn't
// know (an alias added after start).
type localAddrs struct {
	mu        sync.Mutex
	set       map[netip.Addr]bool
	refreshed time.Time
	list      func() ([]netip.Addr, error)
}

func newLocalAddrs() *localAddrs {
	return &localAddrs{list: interfaceAddrs}
}

func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

func (l *localAddrs) contains(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set[a] {
		return true
	}
	if time.Since(l.refreshed) < time.Second && l.set != nil {
		return false
	}
	l.refreshed = time.Now()
	list, err := l.list()
	if err != nil {
		return false
	}
	l.set = make(map[netip.Addr]bool, len(list))
	for _, x := range list {
		l.set[x] = true
	}
	return l.set[a]
}
