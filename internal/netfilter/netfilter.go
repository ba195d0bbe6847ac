// Package netfilter runs the iptables binaries for one backend (nft or
// legacy) and family: go-iptables opens and identifies the backend, and a
// family's rule changes go in as one iptables-restore --noflush transaction
// (go-iptables has no restore call), which is atomic per table and costs
// one process instead of one per rule.
package netfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"

	"github.com/ecsmeta/ecsmeta/internal/rules"
)

// Backend modes.
const (
	Nft    = "nft"
	Legacy = "legacy"
)

// Modes lists the backends in order of preference.
var Modes = []string{Nft, Legacy}

// Execs counts iptables processes started by this process (for the
// summary line and the benchmark).
var Execs atomic.Int64

// ErrUnavailable means the backend cannot be used here (binary missing,
// kernel support missing, no permission).
var ErrUnavailable = errors.New("iptables backend unavailable")

// Backend is one iptables backend for one family.
type Backend struct {
	Mode   string
	Family rules.Family
	bin    string // e.g. iptables-nft
	// Version is the iptables version go-iptables found.
	Version string
}

func (b *Backend) String() string { return b.bin }

// Binary returns the iptables binary name for mode and family.
func Binary(mode string, fam rules.Family) string {
	base := "iptables"
	if fam == rules.IPv6 {
		base = "ip6tables"
	}
	return base + "-" + mode
}

// Open finds the backend's binaries and checks through go-iptables that
// they run.
func Open(mode string, fam rules.Family) (*Backend, error) {
	b := &Backend{Mode: mode, Family: fam, bin: Binary(mode, fam)}
	path, err := exec.LookPath(b.bin)
	if err != nil {
		return nil, fmt.Errorf("%s not found in PATH: install the iptables package (Debian/Ubuntu: apt-get install iptables; Alpine: apk add iptables ip6tables): %w", b.bin, ErrUnavailable)
	}
	for _, tool := range []string{b.bin + "-save", b.bin + "-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found in PATH next to %s: install the iptables package completely: %w", tool, path, ErrUnavailable)
		}
	}
	proto := goipt.ProtocolIPv4
	if fam == rules.IPv6 {
		proto = goipt.ProtocolIPv6
	}
	Execs.Add(1)
	ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(path))
	if err != nil {
		return nil, fmt.Errorf("run %s --version: %v: %w", b.bin, err, ErrUnavailable)
	}
	v1, v2, v3 := ipt.GetIptablesVersion()
	b.Version = fmt.Sprintf("%d.%d.%d", v1, v2, v3)
	return b, nil
}

// Save returns iptables-save output for this backend and family.
func (b *Backend) Save(ctx context.Context) (string, error) {
	out, err := b.run(ctx, b.bin+"-save", nil)
	if err != nil {
		return "", fmt.Errorf("%s-save: %w", b.bin, err)
	}
	return out, nil
}

// Restore applies text with iptables-restore --noflush, waiting up to
// lockTimeout for the xtables lock (legacy; nft takes no lock).
func (b *Backend) Restore(ctx context.Context, text string, lockTimeout time.Duration) error {
	if text == "" {
		return nil
	}
	secs := int(math.Ceil(lockTimeout.Seconds()))
	if secs < 1 {
		secs = 1
	}
	klog.V(4).InfoS("iptables-restore input", "backend", b.bin, "text", text)
	_, err := b.run(ctx, b.bin+"-restore", []byte(text), "--noflush", "-w", strconv.Itoa(secs))
	if err != nil {
		return fmt.Errorf("%s-restore: %w", b.bin, err)
	}
	return nil
}

func (b *Backend) run(ctx context.Context, name string, stdin []byte, args ...string) (string, error) {
	Execs.Add(1)
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	start := time.Now()
	err := cmd.Run()
	klog.V(4).InfoS("ran", "cmd", name, "args", args, "elapsed", time.Since(start), "err", err)
	if err != nil {
		return "", explain(b.Mode, strings.TrimSpace(stderr.String()), err)
	}
	return stdout.String(), nil
}

// explain turns iptables' stderr into an error that names the fix.
func explain(mode, stderr string, err error) error {
	first := stderr
	if i := strings.IndexByte(first, '\n'); i >= 0 {
		first = first[:i]
	}
	low := strings.ToLower(stderr)
	// iptables-legacy without CAP_NET_RAW only says it cannot initialize
	// the table: our own capabilities tell the real cause.
	if miss := missingCaps(mode); miss != "" && !strings.Contains(low, "xtables lock") {
		return fmt.Errorf("%s: missing capability: add %s to the container: %w", first, miss, ErrUnavailable)
	}
	switch {
	case strings.Contains(low, "xtables lock") || strings.Contains(low, "another app is currently holding"):
		return fmt.Errorf("the xtables lock stayed busy for the whole --lock-timeout (%s): %w", first, ErrLockTimeout)
	case strings.Contains(low, "permission denied") || strings.Contains(low, "operation not permitted"):
		capHint := "CAP_NET_ADMIN"
		if mode == Legacy {
			capHint = "CAP_NET_ADMIN and CAP_NET_RAW (iptables-legacy needs both)"
		}
		return fmt.Errorf("%s: missing capability: add %s to the container: %w", first, capHint, ErrUnavailable)
	case strings.Contains(low, "table does not exist") || strings.Contains(low, "can't initialize") ||
		strings.Contains(low, "protocol not supported") || strings.Contains(low, "not supported"):
		return fmt.Errorf("%s: the kernel lacks %s iptables support (nat/filter tables; modules iptable_nat or nft_chain_nat): use --iptables-backend to pick the other backend, or --allow-fallback / --mode=alias-only: %w", first, mode, ErrUnavailable)
	case strings.Contains(low, "couldn't load") || strings.Contains(low, "unknown"):
		return fmt.Errorf("%s: the kernel or iptables lacks a needed extension (conntrack, DNAT, MASQUERADE): %w", first, ErrUnavailable)
	}
	if first == "" {
		return err
	}
	return fmt.Errorf("%s: %w", first, err)
}

// missingCaps names the capabilities the backend needs that this process
// lacks ("" when it has them, or cannot tell).
func missingCaps(mode string) string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	var eff uint64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return ""
			}
		}
	}
	const netAdmin, netRaw = 12, 13
	var miss []string
	if eff&(1<<netAdmin) == 0 {
		miss = append(miss, "CAP_NET_ADMIN")
	}
	if mode == Legacy && eff&(1<<netRaw) == 0 {
		miss = append(miss, "CAP_NET_RAW (iptables-legacy needs it)")
	}
	return strings.Join(miss, " and ")
}

// ErrLockTimeout means the xtables lock was held too long.
var ErrLockTimeout = errors.New("xtables lock timeout")
