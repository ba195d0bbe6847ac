package chart

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

func modeValues(mode string) map[string]any { return map[string]any{"mode": mode} }

var evaluator = func() policy.Evaluator {
	e, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		panic(err)
	}
	return e
}()

// violations returns the Pod Security checks spec fails at level.
func violations(spec *corev1.PodSpec, level api.Level) []string {
	var out []string
	var meta corev1.Pod
	for _, r := range evaluator.EvaluatePod(api.LevelVersion{Level: level, Version: api.LatestVersion()}, &meta.ObjectMeta, spec) {
		if !r.Allowed {
			out = append(out, r.ForbiddenReason+": "+r.ForbiddenDetail)
		}
	}
	return out
}

func container(t *testing.T, spec *corev1.PodSpec, name string) (corev1.Container, bool) {
	t.Helper()
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		if c.Name == name {
			return c, true
		}
	}
	return corev1.Container{}, false
}

func TestPodSecurityLevels(t *testing.T) {
	for _, mode := range []string{"dnat", "userspace", "restricted"} {
		r := mustRender(t, modeValues(mode))
		for _, pod := range []*corev1.PodSpec{&r.Deployment.Spec.Template.Spec, &r.TestPod.Spec} {
			if mode == "restricted" {
				if v := violations(pod, api.LevelRestricted); len(v) > 0 {
					t.Errorf("restricted mode must meet Pod Security restricted: %v", v)
				}
				continue
			}
			// NET_ADMIN and NET_RAW are beyond baseline: exactly privileged.
			v := violations(pod, api.LevelBaseline)
			if len(v) != 1 || !strings.Contains(v[0], "NET_ADMIN") || !strings.Contains(v[0], "NET_RAW") {
				t.Errorf("%s: baseline must reject the init container's NET_ADMIN + NET_RAW and nothing else: %v", mode, v)
			}
			if v := violations(pod, api.LevelPrivileged); len(v) > 0 {
				t.Errorf("%s: must be admitted at privileged: %v", mode, v)
			}
			// Everything but ecsmeta-init meets restricted.
			rest := pod.DeepCopy()
			rest.InitContainers = slices.DeleteFunc(rest.InitContainers, func(c corev1.Container) bool { return c.Name == "ecsmeta-init" })
			if v := violations(rest, api.LevelRestricted); len(v) > 0 {
				t.Errorf("%s: the pod without ecsmeta-init must meet restricted: %v", mode, v)
			}
		}
	}
}

func TestInitHasExactlyNetAdminAndNetRawAndAReadOnlyRoot(t *testing.T) {
	r := mustRender(t, nil)
	c, ok := container(t, &r.Deployment.Spec.Template.Spec, "ecsmeta-init")
	if !ok {
		t.Fatal("no ecsmeta-init in dnat mode")
	}
	sc := c.SecurityContext
	add := slices.Clone(sc.Capabilities.Add)
	slices.Sort(add)
	if !slices.Equal(add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation {
		t.Errorf("ecsmeta-init security context: %+v", sc)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("ecsmeta-init must not be privileged")
	}
}

func TestNativeSidecarOrderGatesTheApp(t *testing.T) {
	spec := mustRender(t, nil).Deployment.Spec.Template.Spec
	var names []string
	for _, c := range spec.InitContainers {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"ecsmeta-init", "credproxy", "ecsmeta-proxy"}) {
		t.Fatalf("init containers %v: CredProxy must start (and pass its startupProbe) before ecsmeta-proxy, whose startupProbe needs it", names)
	}
	always := corev1.ContainerRestartPolicyAlways
	for _, c := range spec.InitContainers[1:] {
		if c.RestartPolicy == nil || *c.RestartPolicy != always || c.StartupProbe == nil {
			t.Errorf("%s must be a native sidecar with a startupProbe", c.Name)
		}
	}
	proxy := spec.InitContainers[2]
	if g := proxy.StartupProbe.HTTPGet; g == nil || g.Path != "/readyz" || g.Port.String() != "ecsmeta-health" {
		t.Errorf("the proxy's startupProbe must ask /readyz on its health port: %+v", proxy.StartupProbe)
	}
	if len(proxy.Ports) != 1 || proxy.Ports[0].ContainerPort != 1339 || !slices.Contains(proxy.Args, "--health-addr=:1339") {
		t.Errorf("probe port and --health-addr must agree, on every address: ports %+v args %v", proxy.Ports, proxy.Args)
	}
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "app" {
		t.Errorf("containers: %+v", spec.Containers)
	}
}

func TestOlderClustersGetRegularContainers(t *testing.T) {
	spec := mustRender(t, map[string]any{"proxy": map[string]any{"nativeSidecar": false, "shutdownDelay": "5s"}}).Deployment.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "ecsmeta-init" {
		t.Errorf("without native sidecars only ecsmeta-init is an init container: %+v", spec.InitContainers)
	}
	proxy, ok := container(t, &spec, "ecsmeta-proxy")
	if !ok || proxy.RestartPolicy != nil || !slices.Contains(proxy.Args, "--shutdown-delay=5s") {
		t.Errorf("the proxy must be a regular container that keeps serving after SIGTERM: %+v", proxy)
	}
}

func env(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func TestModesWireInitProxyAndApps(t *testing.T) {
	for _, c := range []struct {
		vals             map[string]any
		initUpstream     string // "" no init
		proxyArgs        []string
		appVar, appValue string
	}{
		{nil, "--upstream=127.0.0.1:1338", []string{"--upstream=127.0.0.1:1338"},
			"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v1/credentials"},
		{valuesFile(t, "userspace-values.yaml"), "--upstream=127.0.0.1:15080",
			[]string{"--upstream=credproxy.credentials.svc.cluster.local:1338", "--listen=127.0.0.1:15080"},
			"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v1/credentials"},
		{modeValues("restricted"), "", []string{"--listen=127.0.0.1:15080", "--endpoint=127.0.0.1:15080"},
			"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:15080/v1/credentials"},
		{valuesFile(t, "pod-identity-values.yaml"), "--upstream=127.0.0.1:1338", []string{"--endpoint=169.254.170.23:80,169.254.170.2:80"},
			"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials"},
		{valuesFile(t, "ipv6-values.yaml"), "--upstream=[::1]:1338", []string{"--endpoint=[fd00:ec2::23]:80"},
			"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://[fd00:ec2::23]/v1/credentials"},
	} {
		r := mustRender(t, c.vals)
		for _, spec := range []*corev1.PodSpec{&r.Deployment.Spec.Template.Spec, &r.TestPod.Spec} {
			init, ok := container(t, spec, "ecsmeta-init")
			if ok != (c.initUpstream != "") || ok && !slices.Contains(init.Args, c.initUpstream) {
				t.Errorf("%v: ecsmeta-init %v args %v, want %q", c.vals, ok, init.Args, c.initUpstream)
			}
			proxy, _ := container(t, spec, "ecsmeta-proxy")
			for _, a := range c.proxyArgs {
				if !slices.Contains(proxy.Args, a) {
					t.Errorf("%v: proxy args %v lack %s", c.vals, proxy.Args, a)
				}
			}
			app := spec.Containers[len(spec.Containers)-1]
			e := env(app)
			if e[c.appVar].Value != c.appValue {
				t.Errorf("%v: %s %s = %q, want %q", c.vals, app.Name, c.appVar, e[c.appVar].Value, c.appValue)
			}
			tok := e["AWS_CONTAINER_AUTHORIZATION_TOKEN"].ValueFrom
			if tok == nil || tok.SecretKeyRef == nil || tok.SecretKeyRef.Key != "token" {
				t.Errorf("%v: the token must come from the Secret: %+v", c.vals, e["AWS_CONTAINER_AUTHORIZATION_TOKEN"])
			}
		}
	}
}

func TestTokenFileOption(t *testing.T) {
	spec := mustRender(t, valuesFile(t, "tokenfile-values.yaml")).Deployment.Spec.Template.Spec
	app := spec.Containers[0]
	if e := env(app); e["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"].Value != "/var/run/secrets/ecsmeta/token" || e["AWS_CONTAINER_AUTHORIZATION_TOKEN"].Name != "" {
		t.Errorf("token file env: %+v", app.Env)
	}
	if len(app.VolumeMounts) != 1 || len(spec.Volumes) != 1 || spec.Volumes[0].Secret == nil {
		t.Errorf("the Secret must be mounted: mounts %+v volumes %+v", app.VolumeMounts, spec.Volumes)
	}
}

func TestExistingSecretIsUsedAndNoneIsMade(t *testing.T) {
	r := mustRender(t, map[string]any{"auth": map[string]any{"existingSecret": "mine"}})
	if r.Secret != nil {
		t.Error("a Secret was rendered although auth.existingSecret is set")
	}
	if ref := env(r.Deployment.Spec.Template.Spec.Containers[0])["AWS_CONTAINER_AUTHORIZATION_TOKEN"].ValueFrom.SecretKeyRef; ref.Name != "mine" {
		t.Errorf("apps read Secret %q, want mine", ref.Name)
	}
}

func TestMonitoringAndNetworkPolicy(t *testing.T) {
	r := mustRender(t, valuesFile(t, "monitoring-values.yaml"))
	if r.ServiceMonitor == nil || r.Service == nil || r.NetworkPolicy == nil {
		t.Fatal("monitoring values must render a ServiceMonitor, its Service and the NetworkPolicy")
	}
	if ep := r.ServiceMonitor.Spec.Endpoints; len(ep) != 1 || ep[0].Port != "metrics" || r.Service.Spec.Ports[0].Name != "metrics" {
		t.Errorf("ServiceMonitor endpoints %+v must name the Service's metrics port", ep)
	}
	if r.ServiceMonitor.Labels["release"] != "prometheus" || r.Deployment.Labels["team"] != "platform" {
		t.Error("labels from values are missing")
	}
	in := r.NetworkPolicy.Spec.Ingress
	if len(in) != 1 || len(in[0].Ports) != 1 || in[0].Ports[0].Port.IntValue() != 1339 || len(in[0].From) != 1 {
		t.Errorf("NetworkPolicy must admit only the metrics port, from the given peers: %+v", in)
	}
}

func TestHardeningValues(t *testing.T) {
	spec := mustRender(t, valuesFile(t, "hardened-values.yaml")).Deployment.Spec.Template.Spec
	init, _ := container(t, &spec, "ecsmeta-init")
	if !slices.Contains(init.Args, "--allow-uids=1000") || !slices.Contains(init.Args, "--guard-ports=1338") {
		t.Errorf("init args %v", init.Args)
	}
	if cp, _ := container(t, &spec, "credproxy"); cp.StartupProbe != nil || cp.ReadinessProbe != nil {
		t.Error("with its port guarded, CredProxy's kubelet probes would be dropped: they must be left out")
	}
	_, err := Render(map[string]any{"mode": "restricted", "hardening": map[string]any{"allowUIDs": []any{1000}}})
	if err == nil || !strings.Contains(err.Error(), "restricted mode does not run") {
		t.Errorf("hardening in restricted mode: %v", err)
	}
}
