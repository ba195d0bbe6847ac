// Command goclient fetches credentials with aws-sdk-go-v2's default chain,
// as an unmodified Go application does, for the end-to-end matrix. It
// prints one JSON line per fetch; with argument 2 it waits for a line on
// stdin between the two fetches (the test rotates the token meanwhile), so
// that the second fetch is the SDK's own refresh in the same process.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
)

type result struct {
	OK              bool   `json:"ok"`
	Error           string `json:"error,omitempty"`
	AccessKeyId     string `json:"AccessKeyId,omitempty"`
	SecretAccessKey string `json:"SecretAccessKey,omitempty"`
	SessionToken    string `json:"SessionToken,omitempty"`
	Expiration      string `json:"Expiration,omitempty"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println(sdkVersion())
		return
	}
	fetches := 1
	if len(os.Args) > 1 && os.Args[1] == "2" {
		fetches = 2
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		emit(result{Error: err.Error()})
		os.Exit(1)
	}
	in := bufio.NewReader(os.Stdin)
	for i := 0; i < fetches; i++ {
		if i > 0 {
			_, _ = in.ReadString('\n')
		}
		c, err := cfg.Credentials.Retrieve(ctx)
		if err != nil {
			emit(result{Error: err.Error()})
			os.Exit(1)
		}
		emit(result{OK: true, AccessKeyId: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey,
			SessionToken: c.SessionToken, Expiration: c.Expires.UTC().Format(time.RFC3339)})
	}
}

func emit(r result) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

// sdkVersion is the version of the config module this binary was built with.
func sdkVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if strings.HasSuffix(d.Path, "aws-sdk-go-v2/config") {
			return d.Version
		}
	}
	return "unknown"
}
