// Package e2e proves the product with the real AWS SDKs and CLI: each runs
// as an ordinary process in a network namespace configured by the real
// ecsmeta-init (and ecsmeta-proxy), against the test credential server.
// It needs root, the clients that hack/e2e-deps.sh installs, and nothing
// beyond this machine.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "*** WARNING: not root: the SDK matrix will SKIP. Run `sudo make test`; CI runs it as root.")
	}
	code := m.Run()
	nstest.Cleanup()
	os.Exit(code)
}
