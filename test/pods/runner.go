// Package pods realizes a rendered Kubernetes pod spec with podman, closely
// enough to prove the chart's pods start and serve: one podman pod on a
// network of the test's own; init containers in order; native sidecars
// (restartPolicy Always) started and gated on their startupProbe; then the
// containers. Probes are sent to the pod's own non-loopback address from
// inside its network namespace, as the kubelet's reach the pod IP, so a
// health server bound to loopback or a wrong port is caught. It honours
// command/args, env (values and secretKeyRef), user/group, runAsNonRoot,
// capabilities, read-only root, no-new-privileges, memory limits and
// emptyDir/Secret volumes, and fails loudly on any other field.
//
// It is test-only: `podman kube play` (4.3) cannot run native sidecars or
// probes.
package pods

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Event is one step of a pod's life, for order assertions.
type Event struct {
	At        time.Time
	Container string
	What      string // "started", "startup-ok", "ready", "exited 0", ...
}

// Runner runs one pod.
type Runner struct {
	Spec    corev1.PodSpec
	Secrets map[string]*corev1.Secret
	// Getter is a static HTTP getter run inside the pod's netns for probes
	// (ecsmeta-testkit get).
	Getter string
	Log    func(format string, a ...any)

	name, network, dir string
	podIP, infraPID    string
	mu                 sync.Mutex
	events             []Event
	containers         []string
}

func (r *Runner) event(ctr, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, Event{At: time.Now(), Container: ctr, What: what})
	r.Log("pod %s: %s %s", r.name, ctr, what)
}

// Events returns the pod's timeline.
func (r *Runner) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func podman(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "podman", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// Implemented fields, by their JSON names; anything else set is an error.
var (
	podFields       = set("initContainers", "containers", "volumes", "securityContext", "automountServiceAccountToken", "restartPolicy")
	podSecFields    = set("seccompProfile", "runAsUser", "runAsGroup", "runAsNonRoot")
	containerFields = set("name", "image", "imagePullPolicy", "command", "args", "env", "ports", "startupProbe", "readinessProbe",
		"livenessProbe", "securityContext", "resources", "volumeMounts", "restartPolicy")
	secFields    = set("runAsUser", "runAsGroup", "runAsNonRoot", "capabilities", "readOnlyRootFilesystem", "allowPrivilegeEscalation", "seccompProfile")
	probeFields  = set("httpGet", "periodSeconds", "failureThreshold", "timeoutSeconds", "initialDelaySeconds", "successThreshold")
	volumeFields = set("name", "emptyDir", "secret")
)

func set(s ...string) map[string]bool {
	m := map[string]bool{}
	for _, x := range s {
		m[x] = true
	}
	return m
}

// unimplemented lists the JSON fields of v that are set and not in known.
func unimplemented(where string, v any, known map[string]bool) []string {
	b, _ := json.Marshal(v)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	var out []string
	for k := range m {
		if !known[k] {
			out = append(out, where+"."+k)
		}
	}
	sort.Strings(out)
	return out
}

func (r *Runner) check() error {
	s := r.Spec
	bad := unimplemented("spec", s, podFields)
	if s.SecurityContext != nil {
		bad = append(bad, unimplemented("spec.securityContext", s.SecurityContext, podSecFields)...)
		if sp := s.SecurityContext.SeccompProfile; sp != nil && sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			bad = append(bad, "spec.securityContext.seccompProfile="+string(sp.Type))
		}
	}
	if s.AutomountServiceAccountToken == nil || *s.AutomountServiceAccountToken {
		bad = append(bad, "spec.automountServiceAccountToken (a token to mount)")
	}
	for _, v := range s.Volumes {
		bad = append(bad, unimplemented("volume "+v.Name, v, volumeFields)...)
	}
	for _, c := range append(append([]corev1.Container{}, s.InitContainers...), s.Containers...) {
		where := "container " + c.Name
		bad = append(bad, unimplemented(where, c, containerFields)...)
		if c.SecurityContext != nil {
			bad = append(bad, unimplemented(where+".securityContext", c.SecurityContext, secFields)...)
		}
		for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
			if p != nil {
				bad = append(bad, unimplemented(where+".probe", p, probeFields)...)
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef == nil {
				bad = append(bad, where+".env."+e.Name+".valueFrom (only secretKeyRef)")
			}
		}
		if c.RestartPolicy != nil && !slices.ContainsFunc(s.InitContainers, func(i corev1.Container) bool { return i.Name == c.Name }) {
			bad = append(bad, where+".restartPolicy outside initContainers")
		}
		for k := range c.Resources.Limits {
			if k != corev1.ResourceMemory && k != corev1.ResourceCPU {
				bad = append(bad, where+".resources.limits."+string(k))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("pod runner: pod spec uses fields it does not implement: %s", strings.Join(bad, ", "))
	}
	return nil
}

// Run realizes the pod and waits until every container exited, or ctx ends.
// It returns each container's logs.
func (r *Runner) Run(ctx context.Context) (map[string]string, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	r.name = "ecsmeta-pod-" + hex.EncodeToString(b)
	r.network = r.name + "-net"
	var err error
	if r.dir, err = os.MkdirTemp("", r.name); err != nil {
		return nil, err
	}
	// The pod's network: the test's own, internal (no route off the machine).
	if _, err := podman(ctx, "network", "create", "--internal", r.network); err != nil {
		return nil, err
	}
	if _, err := podman(ctx, "pod", "create", "--name", r.name, "--network", r.network); err != nil {
		return nil, err
	}
	if _, err := podman(ctx, "pod", "start", r.name); err != nil {
		return nil, err
	}
	infra, err := podman(ctx, "pod", "inspect", "--format", "{{.InfraContainerID}}", r.name)
	if err != nil {
		return nil, err
	}
	if r.infraPID, err = podman(ctx, "inspect", "--format", "{{.State.Pid}}", infra); err != nil {
		return nil, err
	}
	if r.podIP, err = podman(ctx, "inspect", "--format", "{{(index .NetworkSettings.Networks \""+r.network+"\").IPAddress}}", infra); err != nil || r.podIP == "" {
		return nil, fmt.Errorf("pod IP: %q %v", r.podIP, err)
	}
	r.Log("pod %s: IP %s", r.name, r.podIP)
	vols, err := r.volumes()
	if err != nil {
		return nil, err
	}
	for _, c := range r.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			if err := r.start(ctx, c, vols); err != nil {
				return r.logs(), err
			}
			// Without a startupProbe a sidecar counts as started once running.
			if c.StartupProbe != nil {
				if err := r.probeUntil(ctx, c, c.StartupProbe, "startup-ok"); err != nil {
					return r.logs(), err
				}
			}
			continue
		}
		if err := r.start(ctx, c, vols); err != nil {
			return r.logs(), err
		}
		if code, err := r.wait(ctx, c.Name); err != nil || code != "0" {
			return r.logs(), fmt.Errorf("init container %s exited %s: %v", c.Name, code, err)
		}
	}
	for _, c := range r.Spec.Containers {
		if err := r.start(ctx, c, vols); err != nil {
			return r.logs(), err
		}
	}
	// Every running container must pass its readiness and liveness probes
	// once, through the pod IP.
	for _, c := range append(append([]corev1.Container{}, r.Spec.InitContainers...), r.Spec.Containers...) {
		for _, p := range []struct {
			probe *corev1.Probe
			what  string
		}{{c.ReadinessProbe, "ready"}, {c.LivenessProbe, "live"}} {
			if p.probe != nil {
				if err := r.probeUntil(ctx, c, p.probe, p.what); err != nil {
					return r.logs(), err
				}
			}
		}
	}
	for _, c := range r.Spec.Containers {
		if code, err := r.wait(ctx, c.Name); err != nil || code != "0" {
			return r.logs(), fmt.Errorf("container %s exited %s: %v", c.Name, code, err)
		}
	}
	return r.logs(), nil
}

func (r *Runner) ctrName(c string) string { return r.name + "-" + c }

// volumes prepares emptyDir and Secret volumes as host directories.
func (r *Runner) volumes() (map[string]string, error) {
	out := map[string]string{}
	for _, v := range r.Spec.Volumes {
		dir := filepath.Join(r.dir, "vol-"+v.Name)
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return nil, err
		}
		_ = os.Chmod(dir, 0o777)
		switch {
		case v.EmptyDir != nil:
		case v.Secret != nil:
			s := r.Secrets[v.Secret.SecretName]
			if s == nil {
				return nil, fmt.Errorf("volume %s: no Secret %q", v.Name, v.Secret.SecretName)
			}
			for k, data := range s.Data {
				if err := os.WriteFile(filepath.Join(dir, k), data, 0o644); err != nil {
					return nil, err
				}
			}
		default:
			return nil, fmt.Errorf("volume %s: only emptyDir and secret are implemented", v.Name)
		}
		out[v.Name] = dir
	}
	return out, nil
}

func (r *Runner) start(ctx context.Context, c corev1.Container, vols map[string]string) error {
	args := []string{"run", "-d", "--pod", r.name, "--name", r.ctrName(c.Name), "--pull=never"}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	podSC := r.Spec.SecurityContext
	if podSC == nil {
		podSC = &corev1.PodSecurityContext{}
	}
	uid, gid := firstInt(sc.RunAsUser, podSC.RunAsUser), firstInt(sc.RunAsGroup, podSC.RunAsGroup)
	if uid == nil {
		// The image's user, as the kubelet would see it.
		u, err := podman(ctx, "image", "inspect", "--format", "{{.Config.User}}", c.Image)
		if err != nil {
			return err
		}
		if u == "" {
			u = "0"
		}
		var n int64
		if _, err := fmt.Sscanf(strings.SplitN(u, ":", 2)[0], "%d", &n); err == nil {
			uid = &n
		} else {
			return fmt.Errorf("container %s: image user %q is not numeric: runAsNonRoot cannot be verified", c.Name, u)
		}
	}
	if nonRoot := firstBool(sc.RunAsNonRoot, podSC.RunAsNonRoot); nonRoot != nil && *nonRoot && *uid == 0 {
		return fmt.Errorf("container %s: runAsNonRoot but it would run as uid 0 (the kubelet refuses to start it)", c.Name)
	}
	user := fmt.Sprint(*uid)
	if gid != nil {
		user += fmt.Sprintf(":%d", *gid)
	}
	args = append(args, "--user", user)
	if sc.Capabilities != nil {
		for _, d := range sc.Capabilities.Drop {
			args = append(args, "--cap-drop", strings.ToLower(string(d)))
		}
		for _, a := range sc.Capabilities.Add {
			args = append(args, "--cap-add", string(a))
		}
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		args = append(args, "--read-only", "--read-only-tmpfs=false")
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	if m, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		args = append(args, "--memory", fmt.Sprint(m.Value()))
	}
	for _, e := range c.Env {
		v := e.Value
		if ref := envSecret(e); ref != nil {
			s := r.Secrets[ref.Name]
			if s == nil || s.Data[ref.Key] == nil {
				return fmt.Errorf("container %s: env %s: no key %q in Secret %q", c.Name, e.Name, ref.Key, ref.Name)
			}
			v = string(s.Data[ref.Key])
		}
		args = append(args, "--env", e.Name+"="+v)
	}
	for _, m := range c.VolumeMounts {
		dir, ok := vols[m.Name]
		if !ok {
			return fmt.Errorf("container %s: volume %q is not defined", c.Name, m.Name)
		}
		opt := dir + ":" + m.MountPath
		if m.ReadOnly {
			opt += ":ro"
		}
		args = append(args, "-v", opt)
	}
	if len(c.Command) > 0 {
		args = append(args, "--entrypoint", toJSON(c.Command))
	}
	args = append(args, c.Image)
	args = append(args, c.Args...)
	if _, err := podman(ctx, args...); err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	r.mu.Lock()
	r.containers = append(r.containers, c.Name)
	r.mu.Unlock()
	r.event(c.Name, "started")
	return nil
}

func envSecret(e corev1.EnvVar) *corev1.SecretKeySelector {
	if e.ValueFrom == nil {
		return nil
	}
	return e.ValueFrom.SecretKeyRef
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func firstInt(a, b *int64) *int64 {
	if a != nil {
		return a
	}
	return b
}

func firstBool(a, b *bool) *bool {
	if a != nil {
		return a
	}
	return b
}

// probeUntil runs an httpGet probe against the pod IP from inside the
// pod's network namespace until it succeeds or its failureThreshold is
// used up.
func (r *Runner) probeUntil(ctx context.Context, c corev1.Container, p *corev1.Probe, what string) error {
	g := p.HTTPGet
	if g == nil {
		return fmt.Errorf("container %s: only httpGet probes are implemented", c.Name)
	}
	port := g.Port.IntValue()
	if g.Port.StrVal != "" {
		for _, cp := range c.Ports {
			if cp.Name == g.Port.StrVal {
				port = int(cp.ContainerPort)
			}
		}
		if port == 0 {
			return fmt.Errorf("container %s: probe port %q is not one of its ports", c.Name, g.Port.StrVal)
		}
	}
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	tries := max(p.FailureThreshold, 3)
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	url := fmt.Sprintf("http://%s:%d%s", r.podIP, port, g.Path)
	var last string
	for i := int32(0); i < tries; i++ {
		// A container that died fails its probes for good: say so at once.
		if st, err := podman(ctx, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", r.ctrName(c.Name)); err != nil || strings.HasPrefix(st, "exited") {
			return fmt.Errorf("container %s: %s before its %s probe passed (%v)", c.Name, st, what, err)
		}
		cctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
		out, err := exec.CommandContext(cctx, "nsenter", "-t", r.infraPID, "-n", r.Getter, "get", "--timeout", timeout.String(), url).CombinedOutput()
		cancel()
		code := 0
		fmt.Sscanf(string(out), "%d", &code)
		if err == nil && code >= 200 && code < 400 {
			r.event(c.Name, what)
			return nil
		}
		last = strings.TrimSpace(string(out))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(period):
		}
	}
	return fmt.Errorf("container %s: %s probe %s failed %d times: %s", c.Name, what, url, tries, last)
}

func (r *Runner) wait(ctx context.Context, name string) (string, error) {
	code, err := podman(ctx, "wait", r.ctrName(name))
	if err == nil {
		r.event(name, "exited "+code)
	}
	return code, err
}

func (r *Runner) logs() map[string]string {
	out := map[string]string{}
	r.mu.Lock()
	names := slices.Clone(r.containers)
	r.mu.Unlock()
	for _, c := range names {
		l, _ := exec.Command("podman", "logs", r.ctrName(c)).CombinedOutput()
		out[c] = string(l)
	}
	return out
}

// Close removes the pod, its network and its volumes.
func (r *Runner) Close() {
	if r.name == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, _ = podman(ctx, "pod", "rm", "-f", "-t", "1", r.name)
	_, _ = podman(ctx, "network", "rm", "-f", r.network)
	_ = os.RemoveAll(r.dir)
}
