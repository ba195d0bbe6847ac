package pods

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ecsmeta/ecsmeta/internal/credtest"
	"github.com/ecsmeta/ecsmeta/internal/nstest"
	"github.com/ecsmeta/ecsmeta/test/chart"
)

// The images hack/e2e-containers.sh builds before it runs this test.
const (
	initImage  = "localhost/ecsmeta-test/ecsmeta-init"
	proxyImage = "localhost/ecsmeta-test/ecsmeta-proxy"
	credImage  = "localhost/ecsmeta-test/credserver"
	appImage   = "localhost/ecsmeta-test/app"
	tag        = "test"
	token      = "ecsmeta-pods-test-token"
)

func values(mode string) map[string]any {
	img := func(repo string) map[string]any {
		return map[string]any{"repository": repo, "tag": tag, "pullPolicy": "Never"}
	}
	hardening := map[string]any{}
	if mode == "dnat-hardened" {
		// Only the apps' uid 1000 may fetch; CredProxy's port is guarded.
		mode, hardening = "dnat", map[string]any{"allowUIDs": []any{1000}, "guardCredproxyPort": true}
	}
	return map[string]any{
		"hardening": hardening,
		"mode":      mode,
		"auth":      map[string]any{"token": token},
		"init":      map[string]any{"image": img(initImage)},
		"proxy":     map[string]any{"image": img(proxyImage)},
		"credproxy": map[string]any{
			"image": img(credImage),
			// Like CredProxy: every address (the kubelet probes the pod IP),
			// token from the variable the chart sets from the Secret.
			"args": []any{"credserver", "--listen", ":1338", "--path", "/v1/credentials", "--token-env", "CREDPROXY_AUTH_TOKEN"},
		},
		"app": map[string]any{"containers": []any{map[string]any{
			"name": "app", "image": appImage + ":" + tag, "imagePullPolicy": "Never",
			"args": []any{"configure", "export-credentials", "--format", "process"},
			"env":  []any{map[string]any{"name": "HOME", "value": "/tmp"}, map[string]any{"name": "AWS_REGION", "value": "us-east-1"}},
		}}},
		"tests": map[string]any{"image": img(appImage)},
	}
}

// requirePodmanAndImages skips loudly without root, and fails outside
// hack/e2e-containers.sh, which builds the images these tests run.
func requirePodmanAndImages(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("*** SKIPPED: NOT ROOT: runs podman; `sudo make e2e-containers` runs it (CI does, as root)")
	}
	if os.Getenv("PODS_IMAGES") != "built" {
		t.Fatal("run through hack/e2e-containers.sh (make e2e-containers): it builds the images this test runs")
	}
}

// getter is the HTTP getter probes run inside the pod's netns.
func getter(t *testing.T) string { return nstest.Bin(t, "ecsmeta-testkit") }

func TestMain(m *testing.M) { nstest.Main(m, "the pod runs") }

var keyRE = regexp.MustCompile(`"AccessKeyId": "(ASIAECSMETATEST\d+)"`)

func runPod(t *testing.T, spec corev1.PodSpec, secret *corev1.Secret, get string) (*Runner, map[string]string) {
	t.Helper()
	r := &Runner{Spec: spec, Secrets: map[string]*corev1.Secret{secret.Name: secret}, Getter: get, Log: t.Logf}
	t.Cleanup(r.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logs, err := r.Run(ctx)
	if err != nil {
		for c, l := range logs {
			t.Logf("--- %s logs:\n%s", c, l)
		}
		t.Fatal(err)
	}
	return r, logs
}

func index(events []Event, ctr, what string) int {
	for i, e := range events {
		if e.Container == ctr && e.What == what {
			return i
		}
	}
	return -1
}

// TestRenderedPodsRunForReal runs the chart's Deployment pod and its helm
// test pod for every mode, and checks the app got credentials the server
// issued for the right token, in the right order.
func TestRenderedPodsRunForReal(t *testing.T) {
	requirePodmanAndImages(t)
	get := getter(t)
	for _, mode := range []string{"dnat", "userspace", "restricted", "dnat-hardened"} {
		t.Run(mode, func(t *testing.T) {
			r, err := chart.Render(values(mode))
			if err != nil {
				t.Fatal(err)
			}
			for _, pod := range []struct {
				name string
				spec corev1.PodSpec
				app  string
			}{{"deployment", r.Deployment.Spec.Template.Spec, "app"}, {"helm-test", r.TestPod.Spec, "fetch-credentials"}} {
				t.Run(pod.name, func(t *testing.T) {
					run, logs := runPod(t, pod.spec, r.Secret, get)
					m := keyRE.FindStringSubmatch(logs[pod.app])
					if m == nil {
						t.Fatalf("%s printed no test credentials:\n%s", pod.app, logs[pod.app])
					}
					hash := fmt.Sprintf(`"auth":"ok","authHash":"%s"`, credtest.HashToken(token))
					if !strings.Contains(logs["credproxy"], hash) {
						t.Errorf("the credential server did not see the token from the Secret:\n%s", logs["credproxy"])
					}
					ev := run.Events()
					credReady, proxyStart := index(ev, "credproxy", "startup-ok"), index(ev, "ecsmeta-proxy", "started")
					if mode == "dnat-hardened" { // CredProxy has no probes: its port is guarded
						credReady = index(ev, "credproxy", "started")
					}
					proxyReady, appStart := index(ev, "ecsmeta-proxy", "startup-ok"), index(ev, pod.app, "started")
					if credReady < 0 || proxyStart < credReady || proxyReady < proxyStart || appStart < proxyReady {
						t.Errorf("order: CredProxy ready (%d) < proxy started (%d) < proxy startup ok (%d) < app started (%d): %+v",
							credReady, proxyStart, proxyReady, appStart, ev)
					}
					if mode != "restricted" && index(ev, "ecsmeta-init", "exited 0") > credReady {
						t.Errorf("ecsmeta-init must finish first: %+v", ev)
					}
					t.Logf("%s %s: %s got %s", mode, pod.name, pod.app, m[1])
				})
			}
		})
	}
}

// TestRunnerCatchesAHealthServerOnLoopbackAndAWrongPort proves the probes
// go to the pod IP: a proxy whose health server listens on 127.0.0.1 only,
// or a startupProbe on the wrong port, never becomes ready.
func TestRunnerCatchesAHealthServerOnLoopbackAndAWrongPort(t *testing.T) {
	requirePodmanAndImages(t)
	get := getter(t)
	for name, mutate := range map[string]func(c *corev1.Container){
		"health on loopback": func(c *corev1.Container) {
			for i, a := range c.Args {
				if strings.HasPrefix(a, "--health-addr=") {
					c.Args[i] = "--health-addr=127.0.0.1:1339"
				}
			}
		},
		"wrong probe port": func(c *corev1.Container) { c.Ports[0].ContainerPort = 1340 },
	} {
		t.Run(name, func(t *testing.T) {
			r, err := chart.Render(values("dnat"))
			if err != nil {
				t.Fatal(err)
			}
			spec := r.Deployment.Spec.Template.Spec
			for i := range spec.InitContainers {
				if spec.InitContainers[i].Name == "ecsmeta-proxy" {
					mutate(&spec.InitContainers[i])
					spec.InitContainers[i].StartupProbe.FailureThreshold = 5
				}
			}
			run := &Runner{Spec: spec, Secrets: map[string]*corev1.Secret{r.Secret.Name: r.Secret}, Getter: get, Log: t.Logf}
			t.Cleanup(run.Close)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_, err = run.Run(ctx)
			if err == nil || !strings.Contains(err.Error(), "ecsmeta-proxy: startup-ok probe") {
				t.Fatalf("want the proxy's startupProbe to fail, got %v", err)
			}
			if index(run.Events(), "app", "started") >= 0 {
				t.Error("the app started although the proxy never passed its startupProbe")
			}
		})
	}
}

func TestRunnerRefusesFieldsItDoesNotImplement(t *testing.T) {
	spec := corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Name: "x", Image: "y", WorkingDir: "/w"}}}
	no := false
	spec.AutomountServiceAccountToken = &no
	err := (&Runner{Spec: spec}).check()
	if err == nil || !strings.Contains(err.Error(), "spec.hostNetwork") || !strings.Contains(err.Error(), "container x.workingDir") {
		t.Fatalf("want both unimplemented fields named, got %v", err)
	}
}
