package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// dockerfileSummary is what `deploy-check dockerfile` prints.
type dockerfileSummary struct {
	// GlobalArgs are the ARGs before the first FROM, usable in FROM lines.
	GlobalArgs []argument `json:"global_args"`
	Stages     []stage    `json:"stages"`
	Warnings   []warning  `json:"warnings"`
}

type stage struct {
	Name         string        `json:"name"`
	Base         string        `json:"base"`
	Platform     string        `json:"platform"`
	Line         int           `json:"line"`
	Instructions []instruction `json:"instructions"`
}

type instruction struct {
	Cmd      string         `json:"cmd"`
	Original string         `json:"original"`
	Line     int            `json:"line"`
	Args     map[string]any `json:"args"`
}

type argument struct {
	Name    string  `json:"name"`
	Default *string `json:"default"`
}

type warning struct {
	Rule    string `json:"rule"`
	Message string `json:"message"`
	Line    int    `json:"line"`
}

// checkDockerfile parses a Dockerfile with BuildKit's parser and instruction decoder, which
// report syntax errors, unknown instructions and malformed arguments exactly as `docker build`
// does, then checks the stage references that BuildKit only resolves while building.
func checkDockerfile(path string) (any, error) {
	dt, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	result, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return nil, err
	}
	// Honour a "# check=skip=...;error=true" directive as `docker build` does.
	checkDirective, _, _, _ := parser.ParseDirective("check", dt)
	lintConfig, err := linter.ParseLintOptions(checkDirective)
	if err != nil {
		return nil, fmt.Errorf("check directive: %w", err)
	}

	summary := dockerfileSummary{GlobalArgs: []argument{}, Stages: []stage{}, Warnings: []warning{}}
	lintConfig.Warn = func(rule, _, _, msg string, location []parser.Range) {
		summary.Warnings = append(summary.Warnings, warning{Rule: rule, Message: msg, Line: firstLine(location)})
	}
	lint := linter.New(lintConfig)
	// The parser's own warnings go through the linter, so that the check directive applies.
	for _, w := range result.Warnings {
		var location []parser.Range
		if w.Location != nil {
			location = []parser.Range{*w.Location}
		}
		lint.Run(&linter.RuleNoEmptyContinuation, location, w.Short)
	}
	stages, metaArgs, err := instructions.Parse(result.AST, lint)
	if err != nil {
		return nil, err
	}
	if len(stages) == 0 {
		return nil, errors.New("no build stage (FROM) in file")
	}
	lintStages(stages, lint)

	// BuildKit keeps quotes in arguments until it expands variables while building. Expanding
	// against an empty environment with unset references kept as written removes the quotes
	// (ENV A="x y" gives x y) and decodes RUN --mount options, without inventing values.
	lex := shell.NewLex(result.EscapeToken)
	lex.SkipUnsetEnv = true
	noEnv := shell.EnvsFromSlice(nil)
	unquote := func(word string) (string, error) {
		out, _, err := lex.ProcessWord(word, noEnv)
		return out, err
	}

	for _, a := range metaArgs {
		if err := a.Expand(unquote); err != nil {
			return nil, fmt.Errorf("line %d: ARG: %w", firstLine(a.Location()), err)
		}
		summary.GlobalArgs = append(summary.GlobalArgs, arguments(&a)...)
	}

	for i, st := range stages {
		out := stage{
			Name: st.Name, Base: st.BaseName, Platform: st.Platform, Line: firstLine(st.Location),
			Instructions: make([]instruction, 0, len(st.Commands)),
		}
		for _, c := range st.Commands {
			if e, ok := c.(instructions.SupportsSingleWordExpansion); ok {
				if err := e.Expand(unquote); err != nil {
					return nil, fmt.Errorf("line %d: %s: %w", firstLine(c.Location()), strings.ToUpper(c.Name()), err)
				}
			}
			if err := checkStageReferences(c, stages, i); err != nil {
				return nil, fmt.Errorf("line %d: %w", firstLine(c.Location()), err)
			}
			out.Instructions = append(out.Instructions, describe(c))
		}
		summary.Stages = append(summary.Stages, out)
	}
	if err := lint.Error(); err != nil {
		return nil, err // only with check=error=true
	}
	return summary, nil
}

// lintStages runs the stage-level rules BuildKit applies in its LLB conversion (which this tool
// does not import: it would pull in the whole solver).
func lintStages(stages []instructions.Stage, lint *linter.Linter) {
	seen := map[string]bool{}
	for _, st := range stages {
		if st.Name == "context" || st.Name == "scratch" {
			lint.Run(&linter.RuleReservedStageName, st.Location, linter.RuleReservedStageName.Format(st.Name))
		}
		if st.Name != "" && seen[st.Name] {
			lint.Run(&linter.RuleDuplicateStageName, st.Location, linter.RuleDuplicateStageName.Format(st.Name))
		}
		seen[st.Name] = true
		for _, c := range st.Commands {
			var prependShell bool
			switch c := c.(type) {
			case *instructions.CmdCommand:
				prependShell = c.PrependShell
			case *instructions.EntrypointCommand:
				prependShell = c.PrependShell
			}
			if prependShell {
				name := strings.ToUpper(c.Name())
				lint.Run(&linter.RuleJSONArgsRecommended, c.Location(), linter.RuleJSONArgsRecommended.Format(name))
			}
		}
	}
}

// checkStageReferences checks COPY --from and RUN --mount=from= in stage number current.
//
// BuildKit takes a --from value that names no stage for an image reference, so a typo in a
// stage name becomes a pull of a nonexistent image at build time. Here a bare word (no registry,
// tag or digest) must name an earlier stage; an image is accepted when written as a full
// reference, such as busybox:1.36 or ghcr.io/org/image@sha256:....
func checkStageReferences(c instructions.Command, stages []instructions.Stage, current int) error {
	var refs []string
	switch c := c.(type) {
	case *instructions.CopyCommand:
		if c.From != "" {
			refs = append(refs, c.From)
		}
	case *instructions.RunCommand:
		for _, m := range instructions.GetMounts(c) {
			if m.From != "" {
				refs = append(refs, m.From)
			}
		}
	}
	flag := "--from"
	if _, isRun := c.(*instructions.RunCommand); isRun {
		flag = "--mount from"
	}
	for _, ref := range refs {
		if strings.Contains(ref, "$") {
			return fmt.Errorf("%s %s=%s: variable expansion is not supported for a stage reference",
				strings.ToUpper(c.Name()), flag, ref)
		}
		if index, err := strconv.Atoi(ref); err == nil {
			if index < 0 || index >= current {
				return fmt.Errorf("%s %s=%d: stage %d is not an earlier stage (this is stage %d)",
					strings.ToUpper(c.Name()), flag, index, index, current)
			}
			continue
		}
		if strings.ContainsAny(ref, ":/@") {
			continue // an image reference
		}
		found := -1
		for j, st := range stages {
			if strings.EqualFold(st.Name, ref) {
				found = j
				break
			}
		}
		switch {
		case found < 0:
			return fmt.Errorf("%s %s=%s: no stage named %q (for an image, write a full reference such as %s:TAG)",
				strings.ToUpper(c.Name()), flag, ref, ref, ref)
		case found >= current:
			return fmt.Errorf("%s %s=%s: stage %q must be defined before the stage that uses it",
				strings.ToUpper(c.Name()), flag, ref, ref)
		}
	}
	return nil
}

// describe turns a parsed instruction into its JSON form, with the arguments BuildKit decoded.
func describe(c instructions.Command) instruction {
	out := instruction{Cmd: strings.ToLower(c.Name()), Line: firstLine(c.Location()), Args: map[string]any{}}
	if s, ok := c.(fmt.Stringer); ok {
		out.Original = s.String()
	}
	a := out.Args
	switch c := c.(type) {
	case *instructions.RunCommand:
		a["command"] = strings.Join(c.CmdLine, " ")
		if !c.PrependShell {
			a["exec"] = c.CmdLine
		}
		if mounts := instructions.GetMounts(c); len(mounts) > 0 {
			ms := make([]map[string]string, 0, len(mounts))
			for _, m := range mounts {
				ms = append(ms, map[string]string{
					"type": string(m.Type), "from": m.From, "source": m.Source, "target": m.Target,
				})
			}
			a["mounts"] = ms
		}
	case *instructions.CmdCommand:
		shellOrExec(a, c.ShellDependantCmdLine)
	case *instructions.EntrypointCommand:
		shellOrExec(a, c.ShellDependantCmdLine)
	case *instructions.CopyCommand:
		a["from"] = c.From
		a["sources"] = sources(c.SourcesAndDest)
		a["dest"] = c.DestPath
		a["chown"] = c.Chown
		a["chmod"] = c.Chmod
		a["link"] = c.Link
	case *instructions.AddCommand:
		a["sources"] = sources(c.SourcesAndDest)
		a["dest"] = c.DestPath
		a["chown"] = c.Chown
		a["chmod"] = c.Chmod
		a["checksum"] = c.Checksum
	case *instructions.UserCommand:
		a["user"] = c.User
	case *instructions.EnvCommand:
		a["env"] = pairs(c.Env)
	case *instructions.LabelCommand:
		a["labels"] = pairs(c.Labels)
	case *instructions.WorkdirCommand:
		a["path"] = c.Path
	case *instructions.ArgCommand:
		args := arguments(c)
		// Most ARG lines declare one name; "name"/"default" give it directly, "args" all of them.
		a["name"], a["default"] = args[0].Name, args[0].Default
		a["args"] = args
	case *instructions.ExposeCommand:
		a["ports"] = c.Ports
	case *instructions.HealthCheckCommand:
		h := c.Health
		a["test"] = h.Test
		a["interval"] = h.Interval.String()
		a["timeout"] = h.Timeout.String()
		a["start_period"] = h.StartPeriod.String()
		a["start_interval"] = h.StartInterval.String()
		a["retries"] = h.Retries
	case *instructions.VolumeCommand:
		a["volumes"] = c.Volumes
	case *instructions.StopSignalCommand:
		a["signal"] = c.Signal
	case *instructions.ShellCommand:
		a["shell"] = c.Shell
	case *instructions.OnbuildCommand:
		a["expression"] = c.Expression
	case *instructions.MaintainerCommand:
		a["maintainer"] = c.Maintainer
	}
	return out
}

// shellOrExec records the exec form (a JSON list, run without a shell) as "exec" and the shell
// form as "shell", since only the exec form lets the process receive signals as PID 1.
func shellOrExec(a map[string]any, cmd instructions.ShellDependantCmdLine) {
	if cmd.PrependShell {
		a["shell"] = strings.Join(cmd.CmdLine, " ")
	} else {
		a["exec"] = cmd.CmdLine
	}
}

func sources(sd instructions.SourcesAndDest) []string {
	out := append([]string{}, sd.SourcePaths...)
	for _, content := range sd.SourceContents {
		out = append(out, content.Path)
	}
	return out
}

func pairs(kvs instructions.KeyValuePairs) map[string]string {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		out[kv.Key] = kv.Value
	}
	return out
}

func arguments(c *instructions.ArgCommand) []argument {
	out := make([]argument, 0, len(c.Args))
	for _, kv := range c.Args {
		out = append(out, argument{Name: kv.Key, Default: kv.Value})
	}
	return out
}

func firstLine(location []parser.Range) int {
	if len(location) == 0 {
		return 0
	}
	return location[0].Start.Line
}
