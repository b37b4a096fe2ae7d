package main

import (
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/spate-io/spate/consumers"
)

// composeFile is the Compose file at the root of the module.
var composeFile = filepath.Join("..", "..", "compose.yaml")

// composeRoles are the subcommands compose.yaml must run, each in its own service.
var composeRoles = []string{"edge", "project", "fanout"}

// TestCompose checks compose.yaml against the CLI, so that it stays valid as
// the flags change: every service built from this repository runs a
// subcommand of spate, every SPATE_* variable it sets is a flag of that
// subcommand and parses as one, every depends_on names a service, and the
// topics the roles use are created by a one-shot service.
func TestCompose(t *testing.T) {
	src, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(src, &doc); err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	top := composeMap(t, "top level", doc)
	if _, ok := top["version"]; ok {
		t.Error("top-level version: is obsolete in the Compose Specification")
	}
	services := composeMap(t, "services", top["services"])

	var roles, topics []string
	var commands []string // every command of every service, joined
	for _, name := range slices.Sorted(maps.Keys(services)) {
		svc := composeMap(t, "services."+name, services[name])
		where := "services." + name
		_, hasBuild := svc["build"]
		if _, hasImage := svc["image"]; !hasBuild && !hasImage {
			t.Errorf("%s: neither image nor build", where)
		}
		for _, dep := range composeDependsOn(t, where, svc["depends_on"]) {
			target, ok := services[dep.service]
			switch {
			case !ok:
				t.Errorf("%s.depends_on: no service %q", where, dep.service)
			case dep.service == name:
				t.Errorf("%s.depends_on: depends on itself", where)
			case dep.condition == "service_healthy" && composeMap(t, "services."+dep.service, target)["healthcheck"] == nil:
				t.Errorf("%s.depends_on.%s: condition service_healthy, but %s has no healthcheck", where, dep.service, dep.service)
			}
			if !slices.Contains([]string{"", "service_started", "service_healthy", "service_completed_successfully"}, dep.condition) {
				t.Errorf("%s.depends_on.%s: unknown condition %q", where, dep.service, dep.condition)
			}
		}
		args := composeStringList(t, where+".command", svc["command"])
		commands = append(commands, strings.Join(args, " "))
		if !hasBuild {
			continue
		}

		// A spate service: the image's entrypoint is /spate, the command its
		// arguments.
		if len(args) == 0 {
			t.Errorf("%s: no command; want one of %v", where, composeRoles)
			continue
		}
		root := newRoot(io.Discard, io.Discard)
		cmd, rest, err := root.Find(args)
		if err != nil || cmd == root || cmd.Name() != args[0] {
			t.Errorf("%s.command %q: %q is not a subcommand of spate", where, args, args[0])
			continue
		}
		roles = append(roles, cmd.Name())
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("%s.command %q: %v", where, args, err)
		} else if cmd.Args != nil {
			if err := cmd.Args(cmd, cmd.Flags().Args()); err != nil {
				t.Errorf("%s.command %q: %v", where, args, err)
			}
		}
		env := composeEnvironment(t, where+".environment", svc["environment"])
		for _, k := range slices.Sorted(maps.Keys(env)) {
			if !strings.HasPrefix(k, "SPATE_") {
				continue
			}
			composeCheckEnvFlag(t, where+".environment."+k, cmd, k, env[k])
		}
		if f := cmd.Flags().Lookup("topic"); f != nil {
			topic := f.DefValue
			if v, ok := env["SPATE_TOPIC"]; ok {
				topic = v
			}
			topics = append(topics, topic, consumers.DLQTopic(topic))
		}
	}

	slices.Sort(roles)
	if want := slices.Sorted(slices.Values(composeRoles)); !slices.Equal(roles, want) {
		t.Errorf("services built from . run %v, want one service each for %v", roles, want)
	}
	// The roles do not create topics: some one-shot service must.
	all := strings.Join(commands, "\n")
	for _, topic := range slices.Compact(slices.Sorted(slices.Values(topics))) {
		if !strings.Contains(all, "--create --if-not-exists --topic "+topic+" ") {
			t.Errorf("no service creates topic %s (kafka-topics.sh --create --if-not-exists --topic %s ...)", topic, topic)
		}
	}
}

// composeCheckEnvFlag checks that the environment variable k is the fallback of a
// flag of cmd and that value is a valid value of it.
func composeCheckEnvFlag(t *testing.T, where string, cmd *cobra.Command, k, value string) {
	t.Helper()
	name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "SPATE_")), "_", "-")
	f := cmd.Flags().Lookup(name)
	if f == nil || envName(f.Name) != k {
		t.Errorf("%s: spate %s has no flag --%s", where, cmd.Name(), name)
		return
	}
	if err := cmd.Flags().Set(name, value); err != nil {
		t.Errorf("%s=%q: --%s: %v", where, value, name, err)
	}
}

type composeDependency struct{ service, condition string }

// composeDependsOn returns the dependencies of depends_on, short (a list of
// services) or long (a map of service to options) syntax.
func composeDependsOn(t *testing.T, where string, v any) []composeDependency {
	t.Helper()
	var deps []composeDependency
	switch v := v.(type) {
	case nil:
	case []any:
		for _, s := range v {
			deps = append(deps, composeDependency{service: composeScalar(t, where, s)})
		}
	case map[string]any:
		for _, s := range slices.Sorted(maps.Keys(v)) {
			d := composeDependency{service: s}
			if v[s] != nil {
				if c, ok := composeMap(t, where+"."+s, v[s])["condition"]; ok {
					d.condition = composeScalar(t, where+"."+s+".condition", c)
				}
			}
			deps = append(deps, d)
		}
	default:
		t.Errorf("%s: want a list or a map, got %T", where, v)
	}
	return deps
}

// environment returns environment, a map or a list of KEY=VALUE.
func composeEnvironment(t *testing.T, where string, v any) map[string]string {
	t.Helper()
	env := map[string]string{}
	switch v := v.(type) {
	case nil:
	case map[string]any:
		for k, val := range v {
			env[k] = composeScalar(t, where+"."+k, val)
		}
	case []any:
		for _, kv := range v {
			k, val, _ := strings.Cut(composeScalar(t, where, kv), "=")
			env[k] = val
		}
	default:
		t.Errorf("%s: want a list or a map, got %T", where, v)
	}
	return env
}

// composeStringList returns a command: a list, or a string split on spaces.
func composeStringList(t *testing.T, where string, v any) []string {
	t.Helper()
	switch v := v.(type) {
	case nil:
		return nil
	case []any:
		out := make([]string, len(v))
		for i, s := range v {
			out[i] = composeScalar(t, where, s)
		}
		return out
	default:
		return strings.Fields(composeScalar(t, where, v))
	}
}

func composeMap(t *testing.T, where string, v any) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: want a map, got %T", where, v)
	}
	return m
}

func composeScalar(t *testing.T, where string, v any) string {
	t.Helper()
	switch v.(type) {
	case map[string]any, []any:
		t.Errorf("%s: want a scalar, got %T", where, v)
		return ""
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}
