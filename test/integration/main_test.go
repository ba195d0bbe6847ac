// Package integration runs the real ecsmeta binaries in throw-away network
// namespaces with real netlink and iptables. It needs root; without root
// every test skips and says so.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "*** WARNING: not root: every integration test will SKIP. Run `sudo make test`; CI runs them as root.")
	}
	code := m.Run()
	nstest.Cleanup()
	os.Exit(code)
}
