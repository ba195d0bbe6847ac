// Package chart renders charts/ecsmeta with Helm's own Go packages (a
// client-side install, i.e. `helm template`) and decodes every object
// strictly into its Kubernetes Go type. Its tests lint the chart, evaluate
// the pods against Pod Security with k8s.io/pod-security-admission and keep
// manifests/ in step; test/pods runs the rendered pods for real.
package chart

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage"
	"helm.sh/helm/v4/pkg/storage/driver"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// ChartDir is charts/ecsmeta, from this package's directory.
var ChartDir = filepath.Join(moduleRoot(), "charts", "ecsmeta")

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Rendered is one client-side install: every object, strictly decoded.
type Rendered struct {
	Deployment      *appsv1.Deployment
	Secret          *corev1.Secret
	Service         *corev1.Service
	NetworkPolicy   *networkingv1.NetworkPolicy
	ServiceMonitor  *monitoringv1.ServiceMonitor
	TestPod         *corev1.Pod
	Notes, Manifest string
}

// Render runs what `helm install --dry-run=client` (helm template) runs,
// with the values schema, and decodes the result strictly.
func Render(vals map[string]any) (*Rendered, error) {
	ch, err := loader.Load(ChartDir)
	if err != nil {
		return nil, err
	}
	cfg := &action.Configuration{Releases: storage.Init(driver.NewMemory()), Capabilities: common.DefaultCapabilities}
	inst := action.NewInstall(cfg)
	inst.DryRunStrategy = action.DryRunClient
	inst.Replace = true
	inst.ReleaseName = "demo"
	inst.Namespace = "apps"
	kv, err := common.ParseKubeVersion("v1.31.0")
	if err != nil {
		return nil, err
	}
	inst.KubeVersion = kv
	inst.APIVersions = common.VersionSet{"monitoring.coreos.com/v1"}
	r, err := inst.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return nil, fmt.Errorf("unexpected release type %T", r)
	}
	out := &Rendered{Notes: rel.Info.Notes, Manifest: rel.Manifest}
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
			return nil, fmt.Errorf("rendered YAML does not parse: %v\n%s", err, doc)
		}
		// A pointer to the field: decoding allocates the object.
		var target any
		switch meta.Kind {
		case "Deployment":
			target = &out.Deployment
		case "Secret":
			target = &out.Secret
		case "Service":
			target = &out.Service
		case "NetworkPolicy":
			target = &out.NetworkPolicy
		case "ServiceMonitor":
			target = &out.ServiceMonitor
		case "Pod":
			target = &out.TestPod
		default:
			return nil, fmt.Errorf("the chart renders a %q this test does not know: add its Go type", meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), target); err != nil {
			return nil, fmt.Errorf("%s does not decode strictly into its Go type: %v\n%s", meta.Kind, err, doc)
		}
	}
	return out, nil
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
