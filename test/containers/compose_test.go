// Package containers validates the docker compose examples statically with
// compose-go (the loader docker compose itself uses); hack/e2e-containers.sh
// runs them for real.
package containers

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

const owner = "pod"

func load(t *testing.T, file string, env ...string) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join("..", "..", "examples", "compose", file)},
		cli.WithEnv(env), cli.WithInterpolation(true), cli.WithConsistency(true))
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

func mustLoad(t *testing.T, file string) *types.Project {
	t.Helper()
	p, err := load(t, file, "CREDPROXY_TOKEN=test-token")
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return p
}

var examples = []struct {
	file string
	init bool // has an ecsmeta-init service
	// inPod: services that must join the owner's network namespace.
	inPod []string
}{
	{"compose.yaml", true, []string{"credproxy", "ecsmeta-init", "ecsmeta-proxy", "app"}},
	{"compose.userspace.yaml", true, []string{"ecsmeta-init", "ecsmeta-proxy", "app"}},
	{"compose.restricted.yaml", false, []string{"credproxy", "ecsmeta-proxy", "app"}},
}

func TestExamplesShareALongLivedOwnersNetworkNamespace(t *testing.T) {
	for _, ex := range examples {
		p := mustLoad(t, ex.file)
		pod := p.Services[owner]
		if pod.NetworkMode != "" || !slices.Equal(pod.Command, types.ShellCommand{"pause"}) || pod.Restart != "unless-stopped" {
			t.Errorf("%s: the netns owner must be the pause service that always restarts: network_mode %q, command %q, restart %q",
				ex.file, pod.NetworkMode, pod.Command, pod.Restart)
		}
		for _, name := range ex.inPod {
			if got := p.Services[name].NetworkMode; got != "service:"+owner {
				t.Errorf("%s: %s has network_mode %q, want service:%s", ex.file, name, got, owner)
			}
		}
		for name, s := range p.Services {
			if s.NetworkMode == "service:credproxy" {
				t.Errorf("%s: %s joins CredProxy's netns: a CredProxy restart would strand it", ex.file, name)
			}
		}
	}
}

func TestExamplesGrantLeastPrivilege(t *testing.T) {
	for _, ex := range examples {
		p := mustLoad(t, ex.file)
		proxy := p.Services["ecsmeta-proxy"]
		if proxy.User != "65532:65532" || !slices.Equal(proxy.CapDrop, []string{"ALL"}) || len(proxy.CapAdd) > 0 || !proxy.ReadOnly ||
			!slices.Contains(proxy.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: ecsmeta-proxy must be uid 65532, no capabilities, read-only, no-new-privileges: %+v", ex.file, proxy)
		}
		init, ok := p.Services["ecsmeta-init"]
		if ok != ex.init {
			t.Fatalf("%s: ecsmeta-init present %v, want %v", ex.file, ok, ex.init)
		}
		if ex.init {
			caps := slices.Clone(init.CapAdd)
			slices.Sort(caps)
			if !slices.Equal(caps, []string{"NET_ADMIN", "NET_RAW"}) || !slices.Equal(init.CapDrop, []string{"ALL"}) || !init.ReadOnly || init.Restart != "no" {
				t.Errorf("%s: ecsmeta-init must add exactly NET_ADMIN + NET_RAW to cap_drop ALL, read-only, restart \"no\": %+v", ex.file, init)
			}
		}
		for name, s := range p.Services {
			if name != "ecsmeta-init" && len(s.CapAdd) > 0 {
				t.Errorf("%s: %s adds capabilities %v: only ecsmeta-init may", ex.file, name, s.CapAdd)
			}
			if s.Privileged {
				t.Errorf("%s: %s is privileged", ex.file, name)
			}
		}
	}
}

func TestExamplesStartInOrder(t *testing.T) {
	for _, ex := range examples {
		p := mustLoad(t, ex.file)
		proxy := p.Services["ecsmeta-proxy"]
		if ex.init {
			if d := proxy.DependsOn["ecsmeta-init"]; d.Condition != types.ServiceConditionCompletedSuccessfully {
				t.Errorf("%s: ecsmeta-proxy must wait for ecsmeta-init to complete successfully, has %q", ex.file, d.Condition)
			}
		}
		if hc := proxy.HealthCheck; hc == nil || hc.Disable || !strings.Contains(strings.Join(hc.Test, " "), "ecsmeta-proxy healthcheck") {
			t.Errorf("%s: ecsmeta-proxy needs its healthcheck: %+v", ex.file, hc)
		}
		app := p.Services["app"]
		if d := app.DependsOn["ecsmeta-proxy"]; d.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s: app must wait for a healthy ecsmeta-proxy, has %q", ex.file, d.Condition)
		}
	}
}

func TestExampleAppsUseTheStandardVariables(t *testing.T) {
	want := map[string]string{
		"compose.yaml":            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v1/credentials",
		"compose.userspace.yaml":  "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v1/credentials",
		"compose.restricted.yaml": "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:15080/v1/credentials",
	}
	for _, ex := range examples {
		env := mustLoad(t, ex.file).Services["app"].Environment
		k, v, _ := strings.Cut(want[ex.file], "=")
		if got := env[k]; got == nil || *got != v {
			t.Errorf("%s: app %s = %v, want %s", ex.file, k, got, v)
		}
		if tok := env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]; tok == nil || *tok != "test-token" {
			t.Errorf("%s: app must get the token from CREDPROXY_TOKEN, has %v", ex.file, tok)
		}
	}
}

func TestExamplesRefuseToStartWithoutAToken(t *testing.T) {
	for _, ex := range examples {
		_, err := load(t, ex.file)
		if err == nil || !strings.Contains(err.Error(), "set CREDPROXY_TOKEN") {
			t.Errorf("%s without CREDPROXY_TOKEN: %v, want an error that says to set it", ex.file, err)
		}
	}
}

func TestTestOverridesOnlySwapTheServerAndCutTheNetwork(t *testing.T) {
	for _, o := range []struct{ base, override string }{
		{"compose.yaml", "compose.test.yaml"}, {"compose.restricted.yaml", "compose.test.yaml"},
		{"compose.userspace.yaml", "compose.userspace.test.yaml"},
	} {
		opts, err := cli.NewProjectOptions([]string{
			filepath.Join("..", "..", "examples", "compose", o.base), o.override,
		}, cli.WithEnv([]string{"CREDPROXY_TOKEN=test-token"}))
		if err != nil {
			t.Fatal(err)
		}
		p, err := opts.LoadProject(context.Background())
		if err != nil {
			t.Fatalf("%s + %s: %v", o.base, o.override, err)
		}
		base := mustLoad(t, o.base)
		for name, s := range base.Services {
			got := p.Services[name]
			if name == "credproxy" || name == owner {
				continue
			}
			if got.NetworkMode != s.NetworkMode || got.User != s.User || !slices.Equal(got.CapAdd, s.CapAdd) || got.ReadOnly != s.ReadOnly {
				t.Errorf("%s + %s: the override changes %s, which the test must run as users do", o.base, o.override, name)
			}
		}
		if o.override == "compose.test.yaml" && p.Services[owner].NetworkMode != "none" {
			t.Errorf("%s + %s: the pod must have no network in the test", o.base, o.override)
		}
	}
}

func TestHardenedOverrideAllowsTheAppsUIDAndGuardsCredProxy(t *testing.T) {
	opts, err := cli.NewProjectOptions([]string{
		filepath.Join("..", "..", "examples", "compose", "compose.yaml"),
		filepath.Join("..", "..", "examples", "compose", "compose.hardened.yaml"),
	}, cli.WithEnv([]string{"CREDPROXY_TOKEN=test-token"}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	env := p.Services["ecsmeta-init"].Environment
	appUID, _, _ := strings.Cut(p.Services["app"].User, ":")
	if u := env["ECSMETA_ALLOW_UIDS"]; u == nil || !slices.Contains(strings.Split(*u, ","), appUID) {
		t.Errorf("ECSMETA_ALLOW_UIDS %v must include the app's uid %s", u, appUID)
	}
	if g := env["ECSMETA_GUARD_PORTS"]; g == nil || *g != "1338" {
		t.Errorf("ECSMETA_GUARD_PORTS %v, want CredProxy's 1338", g)
	}
}
