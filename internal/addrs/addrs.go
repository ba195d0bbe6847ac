// Package addrs puts endpoint addresses on lo and finds them again. Ours are
// marked so that cleanup removes exactly what ecsmeta added: IPv4 addresses
// carry the label "lo:ecsmeta", and every address carries IFA_PROTO 0xec
// (IPv6 has no labels; IFA_PROTO needs Linux 6.1 or later).
package addrs

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	// Label marks our IPv4 addresses (at most 15 bytes, starting with "lo").
	Label = "lo:ecsmeta"
	// Proto is our IFA_PROTO value ("proto 236" in `ip addr`).
	Proto = 0xec
	// ifaProto is IFA_PROTO, missing from older x/sys.
	ifaProto = 11
)

// Addr is an address found on lo.
type Addr struct {
	IP    netip.Addr
	Label string
	Proto uint8
}

// Ours reports whether ecsmeta added it.
func (a Addr) Ours() bool { return a.Proto == Proto || a.Label == Label }

// Loopback is the lo link of the current network namespace.
type Loopback struct {
	Index int
	Up    bool
	link  netlink.Link
}

// OpenLoopback finds lo.
func OpenLoopback() (*Loopback, error) {
	l, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	return &Loopback{Index: l.Attrs().Index, Up: l.Attrs().Flags&unix.IFF_UP != 0, link: l}, nil
}

// SetUp brings lo up.
func (lo *Loopback) SetUp() error {
	if err := netlink.LinkSetUp(lo.link); err != nil {
		return fmt.Errorf("bring lo up: %w", Explain(err))
	}
	lo.Up = true
	return nil
}

// SetDown brings lo down (rollback only).
func (lo *Loopback) SetDown() error {
	if err := netlink.LinkSetDown(lo.link); err != nil {
		return fmt.Errorf("bring lo down: %w", Explain(err))
	}
	lo.Up = false
	return nil
}

// List returns the addresses on lo.
func (lo *Loopback) List() ([]Addr, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfAddrmsg(unix.AF_UNSPEC))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", Explain(err))
	}
	var out []Addr
	for _, m := range msgs {
		hdr := nl.DeserializeIfAddrmsg(m)
		if int(hdr.Index) != lo.Index {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[hdr.Len():])
		if err != nil {
			return nil, fmt.Errorf("parse address: %w", err)
		}
		var a Addr
		for _, at := range attrs {
			switch at.Attr.Type {
			case unix.IFA_LOCAL:
				a.IP, _ = netip.AddrFromSlice(at.Value)
			case unix.IFA_ADDRESS:
				if !a.IP.IsValid() {
					a.IP, _ = netip.AddrFromSlice(at.Value)
				}
			case unix.IFA_LABEL:
				a.Label = strings.TrimRight(string(at.Value), "\x00")
			case ifaProto:
				if len(at.Value) > 0 {
					a.Proto = at.Value[0]
				}
			}
		}
		if a.IP.IsValid() {
			a.IP = a.IP.Unmap()
			out = append(out, a)
		}
	}
	return out, nil
}

// Add puts ip/32 (or /128) on lo, marked as ours.
func (lo *Loopback) Add(ip netip.Addr) error {
	return lo.modify(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK, ip)
}

// Del removes ip from lo.
func (lo *Loopback) Del(ip netip.Addr) error {
	return lo.modify(unix.RTM_DELADDR, unix.NLM_F_ACK, ip)
}

func (lo *Loopback) modify(cmd, flags int, ip netip.Addr) error {
	fam := unix.AF_INET
	if ip.Is6() {
		fam = unix.AF_INET6
	}
	req := nl.NewNetlinkRequest(cmd, flags)
	msg := nl.NewIfAddrmsg(fam)
	msg.Index = uint32(lo.Index)
	msg.Prefixlen = uint8(ip.BitLen())
	if ip.Is4() {
		msg.Scope = unix.RT_SCOPE_HOST // never a source for off-host traffic
	}
	req.AddData(msg)
	raw := ip.AsSlice()
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, raw))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, raw))
	if cmd == unix.RTM_NEWADDR {
		if ip.Is4() {
			req.AddData(nl.NewRtAttr(unix.IFA_LABEL, nl.ZeroTerminated(Label)))
		} else {
			req.AddData(nl.NewRtAttr(unix.IFA_FLAGS, nl.Uint32Attr(unix.IFA_F_NODAD)))
		}
		req.AddData(nl.NewRtAttr(ifaProto, nl.Uint8Attr(Proto)))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	if err != nil {
		verb := "add"
		if cmd == unix.RTM_DELADDR {
			verb = "remove"
		}
		if ip.Is6() && errors.Is(err, syscall.EACCES) && IPv6Disabled() {
			return fmt.Errorf("%s %s on lo: IPv6 is disabled in this network namespace: set the sysctl net.ipv6.conf.all.disable_ipv6=0 (and net.ipv6.conf.lo.disable_ipv6=0), e.g. compose `sysctls:` or the pod's securityContext.sysctls", verb, ip)
		}
		return fmt.Errorf("%s %s on lo: %w", verb, ip, Explain(err))
	}
	return nil
}

// IPv6Disabled reports whether IPv6 is switched off on lo here.
func IPv6Disabled() bool {
	for _, p := range []string{"/proc/sys/net/ipv6/conf/lo/disable_ipv6", "/proc/sys/net/ipv6/conf/all/disable_ipv6"} {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			return true
		}
		if errors.Is(err, os.ErrNotExist) && p == "/proc/sys/net/ipv6/conf/all/disable_ipv6" {
			return true // no IPv6 in the kernel at all
		}
	}
	return false
}

// Explain names the missing capability behind a permission error.
func Explain(err error) error {
	if errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("%w: missing capability CAP_NET_ADMIN (add it to the container: cap_add NET_ADMIN / capabilities.add)", err)
	}
	return err
}
