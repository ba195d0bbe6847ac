module github.com/ecsmeta/ecsmeta

go 1.26.8

require (
	github.com/coreos/go-iptables v0.8.0
	github.com/vishvananda/netlink v1.3.1
	golang.org/x/sys v0.48.0
	k8s.io/klog/v2 v2.140.0
)

require (
	github.com/go-logr/logr v1.4.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
)
