// Package chart checks charts/ecsmeta with Helm's own Go packages (lint and
// a client-side install, i.e. `helm template`), decodes every rendered
// object strictly into its Kubernetes Go type, evaluates the pods against
// Pod Security with k8s.io/pod-security-admission, and keeps manifests/ in
// step with the chart.
package chart

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage"
	"helm.sh/helm/v4/pkg/storage/driver"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

var chartDir = filepath.Join("..", "..", "charts", "ecsmeta")

// rendered is one client-side install: every object, strictly decoded.
type rendered struct {
	Deployment      *appsv1.Deployment
	Secret          *corev1.Secret
	Service         *corev1.Service
	NetworkPolicy   *networkingv1.NetworkPolicy
	ServiceMonitor  *monitoringv1.ServiceMonitor
	TestPod         *corev1.Pod
	Notes, Manifest string
}

// render runs what `helm install --dry-run=client` (helm template) runs,
// with the values schema, and decodes the result strictly.
func render(t *testing.T, vals map[string]any) (*rendered, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &action.Configuration{Releases: storage.Init(driver.NewMemory()), Capabilities: common.DefaultCapabilities}
	inst := action.NewInstall(cfg)
	inst.DryRunStrategy = action.DryRunClient
	inst.Replace = true
	inst.ReleaseName = "demo"
	inst.Namespace = "apps"
	kv, err := common.ParseKubeVersion("v1.31.0")
	if err != nil {
		t.Fatal(err)
	}
	inst.KubeVersion = kv
	inst.APIVersions = common.VersionSet{"monitoring.coreos.com/v1"}
	r, err := inst.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		t.Fatalf("unexpected release type %T", r)
	}
	out := &rendered{Notes: rel.Info.Notes, Manifest: rel.Manifest}
	docs := strings.Split(rel.Manifest, "\n---\n")
	for _, h := range rel.Hooks {
		docs = append(docs, h.Manifest)
	}
	for _, doc := range docs {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, doc)
		}
		var target any
		switch meta.Kind {
		case "Deployment":
			out.Deployment = &appsv1.Deployment{}
			target = out.Deployment
		case "Secret":
			out.Secret = &corev1.Secret{}
			target = out.Secret
		case "Service":
			out.Service = &corev1.Service{}
			target = out.Service
		case "NetworkPolicy":
			out.NetworkPolicy = &networkingv1.NetworkPolicy{}
			target = out.NetworkPolicy
		case "ServiceMonitor":
			out.ServiceMonitor = &monitoringv1.ServiceMonitor{}
			target = out.ServiceMonitor
		case "Pod":
			out.TestPod = &corev1.Pod{}
			target = out.TestPod
		default:
			t.Fatalf("the chart renders a %q this test does not know: add its Go type", meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), target); err != nil {
			t.Fatalf("%s does not decode strictly into its Go type: %v\n%s", meta.Kind, err, doc)
		}
	}
	return out, nil
}

func mustRender(t *testing.T, vals map[string]any) *rendered {
	t.Helper()
	r, err := render(t, vals)
	if err != nil {
		t.Fatalf("render %v: %v", vals, err)
	}
	if r.Deployment == nil || r.TestPod == nil {
		t.Fatalf("render %v: no Deployment or test pod", vals)
	}
	return r
}

func stripComments(doc string) string {
	var keep []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// valuesFile reads one of the chart's example values files.
func valuesFile(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "ci", name))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func exampleValues(t *testing.T) map[string]map[string]any {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example values in %s/ci: %v", chartDir, err)
	}
	out := map[string]map[string]any{"defaults": nil}
	for _, f := range files {
		out[filepath.Base(f)] = valuesFile(t, filepath.Base(f))
	}
	return out
}

func TestLintPassesForEveryExample(t *testing.T) {
	for name, vals := range exampleValues(t) {
		res := action.NewLint().Run([]string{chartDir}, vals)
		for _, m := range res.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("%s: helm lint: %s", name, m)
			}
		}
		for _, err := range res.Errors {
			t.Errorf("%s: helm lint: %v", name, err)
		}
	}
}

func TestEveryExampleRendersAndDecodesStrictly(t *testing.T) {
	for name, vals := range exampleValues(t) {
		t.Run(name, func(t *testing.T) { mustRender(t, vals) })
	}
}

func TestBadValuesFailWithAClearMessage(t *testing.T) {
	for _, c := range []struct {
		vals map[string]any
		want string
	}{
		{map[string]any{"mode": "kernel"}, "mode"},
		{map[string]any{"endpoints": []any{"169.254.170.2:eighty"}}, "endpoints"},
		{map[string]any{"endpoints": []any{}}, "endpoints"},
		{map[string]any{"proxy": map[string]any{"healthPort": 70000}}, "healthPort"},
		{map[string]any{"proxy": map[string]any{"probeInterval": "2 seconds"}}, "probeInterval"},
		{map[string]any{"init": map[string]any{"iptablesBackend": "iptables"}}, "iptablesBackend"},
		{map[string]any{"upstream": map[string]any{"address": "credproxy"}}, "address"},
		{map[string]any{"credproxy": map[string]any{"enabled": false}}, "upstream.address is required"},
		{map[string]any{"proxyy": true}, "proxyy"},
	} {
		_, err := render(t, c.vals)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("values %v: error %v, want one that names %q", c.vals, err, c.want)
		}
	}
}

func TestRenderingIsReproducible(t *testing.T) {
	a, b := mustRender(t, nil), mustRender(t, nil)
	if a.Manifest != b.Manifest {
		t.Error("two renders of the same values differ: no random values at render time")
	}
	if !strings.Contains(a.Notes, "WARNING: auth.token is the documented placeholder") {
		t.Errorf("NOTES must warn while the placeholder token is in use:\n%s", a.Notes)
	}
}

// manifests/ecsmeta.yaml is the chart rendered with default values.
func TestManifestsAreUpToDate(t *testing.T) {
	r := mustRender(t, nil)
	var b strings.Builder
	b.WriteString("# Generated by `make manifests` from charts/ecsmeta with default values\n")
	b.WriteString("# (release \"demo\", namespace \"apps\"); CI fails when it is out of date.\n")
	fmt.Fprintf(&b, "---\n%s\n", strings.TrimPrefix(strings.TrimSpace(r.Manifest), "---\n"))
	path := filepath.Join("..", "..", "manifests", "ecsmeta.yaml")
	have, _ := os.ReadFile(path)
	if string(have) == b.String() {
		return
	}
	if os.Getenv("UPDATE_MANIFESTS") == "1" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("manifests/ecsmeta.yaml is out of date with the chart: run `make manifests`")
}

// freeForm values are Kubernetes objects passed through as they are.
var freeForm = map[string]bool{"resources": true, "securityContext": true, "podSecurityContext": true, "nodeSelector": true,
	"affinity": true, "commonLabels": true, "commonAnnotations": true, "podLabels": true, "podAnnotations": true, "labels": true}

func leaves(prefix string, v map[string]any, out *[]string) {
	for k, x := range v {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		if m, ok := x.(map[string]any); ok && !freeForm[k] && len(m) > 0 {
			leaves(p, m, out)
			continue
		}
		*out = append(*out, p)
	}
}

// Every value is in the chart README's table, as `a.b.c` or as `.c` on a row
// that names a sibling `a.b.x`.
func TestChartReadmeDocumentsEveryValue(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal(raw, &vals); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	leaves("", vals, &keys)
	rows := strings.Split(string(readme), "\n")
	for _, k := range keys {
		i := strings.LastIndexByte(k, '.')
		documented := false
		for _, row := range rows {
			if !strings.HasPrefix(row, "| `") {
				continue
			}
			if strings.Contains(row, "`"+k+"`") || i > 0 && strings.Contains(row, "`"+k[:i+1]) && strings.Contains(row, "`"+k[i:]+"`") {
				documented = true
				break
			}
		}
		if !documented {
			t.Errorf("value %s is not in charts/ecsmeta/README.md's table", k)
		}
	}
}
