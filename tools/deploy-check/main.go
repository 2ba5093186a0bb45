// Command deploy-check checks Esper's deployment files with the parsers of the tools that
// consume them, so the test suite catches what `kind create cluster` or `docker build` would
// reject without needing Docker or a cluster:
//
//	deploy-check kind-config PATH   a kind cluster config, decoded into kind's v1alpha4 types
//	deploy-check dockerfile PATH    a Dockerfile, parsed by BuildKit's parser
//
// On success it prints a JSON summary on stdout and exits 0. On a problem it prints one line,
// "deploy-check: PATH: PROBLEM", on stderr and exits 1; a usage error exits 2.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

const usage = `usage: deploy-check kind-config PATH
       deploy-check dockerfile PATH`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process exit, returning the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var check func(path string) (any, error)
	switch args[0] {
	case "kind-config":
		check = checkKindConfig
	case "dockerfile":
		check = checkDockerfile
	default:
		fmt.Fprintf(stderr, "deploy-check: unknown subcommand %q\n%s\n", args[0], usage)
		return 2
	}
	path := args[1]
	summary, err := check(path)
	if err != nil {
		fmt.Fprintf(stderr, "deploy-check: %s: %s\n", path, oneLine(err.Error()))
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(summary); err != nil {
		fmt.Fprintf(stderr, "deploy-check: %s: writing the summary: %v\n", path, err)
		return 1
	}
	return 0
}

// lineBreak matches a line break and the indentation around it: BuildKit and YAML errors can
// span lines, and every failure must be a single line a caller can match on.
var lineBreak = regexp.MustCompile(`[ \t]*\r?\n[ \t]*`)

func oneLine(msg string) string {
	return lineBreak.ReplaceAllString(strings.TrimSpace(msg), " ")
}
