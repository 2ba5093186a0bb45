package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/kind/pkg/cluster/constants"
)

const (
	kindAPIVersion = "kind.x-k8s.io/v1alpha4"
	kindKind       = "Cluster"
)

// kindSummary is what `deploy-check kind-config` prints: the cluster as kind will create it.
type kindSummary struct {
	Name  string     `json:"name"`
	Nodes []kindNode `json:"nodes"`
}

type kindNode struct {
	Role   string            `json:"role"`
	Labels map[string]string `json:"labels"`
}

// checkKindConfig loads a kind config the way `kind create cluster --config` does (kind's
// encoding.Load: type meta first, then a strict decode into the v1alpha4 types, then defaults)
// and validates it with the rules of kind's internal config.Validate, which cannot be imported.
func checkKindConfig(path string) (any, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cluster, err := decodeKindConfig(raw)
	if err != nil {
		return nil, err
	}
	v1alpha4.SetDefaultsCluster(cluster)
	if cluster.Name == "" {
		// The internal defaulting kind applies after conversion; `--name` overrides it.
		cluster.Name = constants.DefaultClusterName
	}
	if problems := validateCluster(cluster); len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	summary := kindSummary{Name: cluster.Name, Nodes: make([]kindNode, 0, len(cluster.Nodes))}
	for _, n := range cluster.Nodes {
		labels := n.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		summary.Nodes = append(summary.Nodes, kindNode{Role: string(n.Role), Labels: labels})
	}
	return summary, nil
}

// decodeKindConfig checks kind and apiVersion before the strict decode so that a config for
// another API version is reported as such rather than as a list of unknown fields.
func decodeKindConfig(raw []byte) (*v1alpha4.Cluster, error) {
	var meta v1alpha4.TypeMeta
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("not a kind config: %w", err)
	}
	if meta.APIVersion != kindAPIVersion {
		return nil, fmt.Errorf("unknown apiVersion %q (want %q)", meta.APIVersion, kindAPIVersion)
	}
	if meta.Kind != kindKind {
		return nil, fmt.Errorf("unknown kind %q for apiVersion %s (want %q)", meta.Kind, kindAPIVersion, kindKind)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	cluster := &v1alpha4.Cluster{}
	if err := dec.Decode(cluster); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	// kind reads only the first document; a second one would be silently ignored by it.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document; kind reads only the first")
	}
	return cluster, nil
}

// validClusterName is kind's rule: the name becomes part of container and network names.
var validClusterName = regexp.MustCompile(`^[a-z0-9.-]+$`)

// validateCluster returns every problem kind (or the kubelet, for node labels) would reject,
// in a stable order.
func validateCluster(c *v1alpha4.Cluster) []string {
	var problems []string
	if !validClusterName.MatchString(c.Name) {
		problems = append(problems, fmt.Sprintf("invalid cluster name %q: must match %s", c.Name, validClusterName))
	}
	nw := c.Networking
	if nw.APIServerPort != 0 {
		if err := validatePort(nw.APIServerPort); err != nil {
			problems = append(problems, "networking.apiServerPort: "+err.Error())
		}
	}
	switch nw.IPFamily {
	case v1alpha4.IPv4Family, v1alpha4.IPv6Family, v1alpha4.DualStackFamily:
		if err := validateSubnets(nw.PodSubnet, nw.IPFamily); err != nil {
			problems = append(problems, "networking.podSubnet: "+err.Error())
		}
		if err := validateSubnets(nw.ServiceSubnet, nw.IPFamily); err != nil {
			problems = append(problems, "networking.serviceSubnet: "+err.Error())
		}
	default:
		problems = append(problems, fmt.Sprintf("networking.ipFamily: invalid value %q", nw.IPFamily))
	}
	switch nw.KubeProxyMode {
	// "none" (no kube-proxy) is a mode only kind's internal types name.
	case v1alpha4.IPTablesProxyMode, v1alpha4.IPVSProxyMode, v1alpha4.NFTablesProxyMode, "none":
	default:
		problems = append(problems, fmt.Sprintf("networking.kubeProxyMode: invalid value %q", nw.KubeProxyMode))
	}

	controlPlanes := 0
	for i, n := range c.Nodes {
		for _, p := range validateNode(n) {
			problems = append(problems, fmt.Sprintf("nodes[%d]: %s", i, p))
		}
		if n.Role == v1alpha4.ControlPlaneRole {
			controlPlanes++
		}
	}
	if controlPlanes == 0 {
		problems = append(problems, "must have at least one control-plane node")
	}
	return problems
}

func validateNode(n v1alpha4.Node) []string {
	var problems []string
	switch n.Role {
	case v1alpha4.ControlPlaneRole, v1alpha4.WorkerRole:
	default:
		problems = append(problems, fmt.Sprintf("invalid role %q (want %q or %q)",
			n.Role, v1alpha4.ControlPlaneRole, v1alpha4.WorkerRole))
	}
	if n.Image == "" {
		problems = append(problems, "image is required")
	}
	// kind passes labels to the kubelet's --node-labels, which refuses the node on a bad one,
	// so the cluster would fail to come up rather than the config being rejected early.
	keys := make([]string, 0, len(n.Labels))
	for k := range n.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, p := range validateNodeLabel(k, n.Labels[k]) {
			problems = append(problems, fmt.Sprintf("label %q: %s", k, p))
		}
	}
	for j, m := range n.ExtraPortMappings {
		if err := validatePort(m.HostPort); err != nil {
			problems = append(problems, fmt.Sprintf("extraPortMappings[%d].hostPort: %v", j, err))
		}
		if err := validatePort(m.ContainerPort); err != nil {
			problems = append(problems, fmt.Sprintf("extraPortMappings[%d].containerPort: %v", j, err))
		}
	}
	if err := validatePortMappings(n.ExtraPortMappings); err != nil {
		problems = append(problems, "extraPortMappings: "+err.Error())
	}
	return problems
}

// validatePort allows -1 and 0, which make the container runtime or kind pick a port.
func validatePort(port int32) error {
	if port < -1 || port > 65535 {
		return fmt.Errorf("invalid port number %d", port)
	}
	return nil
}

// validatePortMappings rejects two mappings that bind the same host address, port and
// protocol; a wildcard address (0.0.0.0 or ::) clashes with every address on that port.
func validatePortMappings(mappings []v1alpha4.PortMapping) error {
	bound := map[string][]net.IP{} // "port/protocol" -> listen addresses
	for _, m := range mappings {
		if m.HostPort == -1 || m.HostPort == 0 {
			continue // a random host port never clashes
		}
		addr := net.IPv4zero
		if m.ListenAddress != "" {
			addr = net.ParseIP(m.ListenAddress)
			if addr == nil {
				return fmt.Errorf("invalid listenAddress %q", m.ListenAddress)
			}
		}
		if addr.Equal(net.IPv6unspecified) {
			addr = net.IPv4zero
		}
		protocol := m.Protocol
		if protocol == "" {
			protocol = v1alpha4.PortMappingProtocolTCP
		}
		key := fmt.Sprintf("%d/%s", m.HostPort, protocol)
		for _, other := range bound[key] {
			if other.Equal(addr) || other.Equal(net.IPv4zero) || addr.Equal(net.IPv4zero) {
				return fmt.Errorf("host port %s is mapped twice on %s", key, addr)
			}
		}
		bound[key] = append(bound[key], addr)
	}
	return nil
}

// validateSubnets checks a comma-separated CIDR list against the IP family: one CIDR of the
// family, or one of each family for dual stack.
func validateSubnets(subnets string, family v1alpha4.ClusterIPFamily) error {
	var v4, v6 int
	parts := strings.Split(subnets, ",")
	for _, s := range parts {
		ip, _, err := net.ParseCIDR(s)
		if err != nil {
			return fmt.Errorf("invalid CIDR %q", s)
		}
		if ip.To4() != nil {
			v4++
		} else {
			v6++
		}
	}
	switch family {
	case v1alpha4.DualStackFamily:
		if len(parts) > 2 || (len(parts) == 2 && (v4 != 1 || v6 != 1)) {
			return errors.New("dual-stack wants one CIDR, or one IPv4 and one IPv6 CIDR")
		}
	case v1alpha4.IPv4Family, v1alpha4.IPv6Family:
		if len(parts) > 1 {
			return errors.New("only one CIDR allowed for single-stack networking")
		}
		if family == v1alpha4.IPv4Family && v4 == 0 {
			return errors.New("expected an IPv4 CIDR for the ipv4 family")
		}
		if family == v1alpha4.IPv6Family && v6 == 0 {
			return errors.New("expected an IPv6 CIDR for the ipv6 family")
		}
	}
	return nil
}
