// Package integration runs the real ecsmeta binaries in throw-away network
// namespaces with real netlink and iptables. It needs root; without root
// every test skips and says so.
package integration

import (
	"testing"

	"github.com/ecsmeta/ecsmeta/internal/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m, "every integration test") }
