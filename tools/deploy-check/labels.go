package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// The Kubernetes label syntax (k8s.io/apimachinery/pkg/util/validation), restated here so the
// checker does not pull in apimachinery for three regular expressions.
const (
	labelNameMaxLen   = 63
	labelPrefixMaxLen = 253
	labelValueMaxLen  = 63
)

var (
	labelNameRE   = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
	labelPrefixRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	labelValueRE  = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
)

// kubeletOwnLabels and kubeletOwnLabelNamespaces are the only kubernetes.io / k8s.io labels a
// kubelet may set on its own Node (k8s.io/kubelet/pkg/apis, IsKubeletLabel); any other key in
// those namespaces, such as node-role.kubernetes.io/worker, makes the kubelet exit at start.
var (
	kubeletOwnLabels = []string{
		"beta.kubernetes.io/arch",
		"beta.kubernetes.io/instance-type",
		"beta.kubernetes.io/os",
		"failure-domain.beta.kubernetes.io/region",
		"failure-domain.beta.kubernetes.io/zone",
		"kubernetes.io/arch",
		"kubernetes.io/hostname",
		"kubernetes.io/os",
		"node.kubernetes.io/instance-type",
		"topology.kubernetes.io/region",
		"topology.kubernetes.io/zone",
	}
	kubeletOwnLabelNamespaces = []string{"kubelet.kubernetes.io", "node.kubernetes.io"}
)

// validateNodeLabel returns what the kubelet's --node-labels validation would reject.
func validateNodeLabel(key, value string) []string {
	var problems []string
	prefix, name, hasPrefix := strings.Cut(key, "/")
	if !hasPrefix {
		prefix, name = "", key
	}
	switch {
	case hasPrefix && prefix == "":
		problems = append(problems, "key prefix must not be empty")
	case len(prefix) > labelPrefixMaxLen:
		problems = append(problems, fmt.Sprintf("key prefix longer than %d characters", labelPrefixMaxLen))
	case prefix != "" && !labelPrefixRE.MatchString(prefix):
		problems = append(problems, "key prefix must be a DNS subdomain (lower case alphanumerics, '-' and '.')")
	}
	switch {
	case len(name) > labelNameMaxLen:
		problems = append(problems, fmt.Sprintf("key name longer than %d characters", labelNameMaxLen))
	case !labelNameRE.MatchString(name):
		problems = append(problems,
			"key name must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
	}
	if inKubernetesNamespace(prefix) && !isKubeletOwnLabel(key, prefix) {
		problems = append(problems, "the kubelet refuses labels in the kubernetes.io and k8s.io namespaces "+
			"other than a few of its own (kubernetes.io/os, topology.kubernetes.io/zone, ...) and keys under "+
			"node.kubernetes.io/ or kubelet.kubernetes.io/; use a prefix of your own")
	}
	switch {
	case len(value) > labelValueMaxLen:
		problems = append(problems, fmt.Sprintf("value longer than %d characters", labelValueMaxLen))
	case !labelValueRE.MatchString(value):
		problems = append(problems, fmt.Sprintf(
			"invalid value %q: must be empty or alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
			value))
	}
	return problems
}

func inKubernetesNamespace(prefix string) bool {
	for _, ns := range []string{"kubernetes.io", "k8s.io"} {
		if prefix == ns || strings.HasSuffix(prefix, "."+ns) {
			return true
		}
	}
	return false
}

func isKubeletOwnLabel(key, prefix string) bool {
	if slices.Contains(kubeletOwnLabels, key) {
		return true
	}
	for _, ns := range kubeletOwnLabelNamespaces {
		if prefix == ns || strings.HasSuffix(prefix, "."+ns) {
			return true
		}
	}
	return false
}
