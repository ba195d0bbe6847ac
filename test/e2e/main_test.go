// Package e2e proves the product with the real AWS SDKs and CLI: each runs
// as an ordinary process in a network namespace configured by the real
// ecsmeta-init (and ecsmeta-proxy), against the test credential server.
// It needs root, the clients that hack/deps.sh e2e installs, and nothing
// beyond this machine.
package e2e

import (
	"testing"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m, "the SDK matrix") }
