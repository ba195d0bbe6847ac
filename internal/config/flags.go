package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"k8s.io/klog/v2"
)

// Exit codes shared by both binaries.
const (
	ExitOK     = 0
	ExitFailed = 1 // the work failed, or --check found drift
	ExitUsage  = 2 // malformed flags, env vars or values
)

// EnvPrefix prefixes the environment variable that backs every flag.
const EnvPrefix = "ECSMETA_"

// EnvName is the environment variable that backs flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// UsageError is bad input: one line, exit code 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef builds a UsageError.
func Usagef(format string, a ...any) error { return &UsageError{Msg: fmt.Sprintf(format, a...)} }

// IsUsage reports whether err is bad input.
func IsUsage(err error) bool {
	var u *UsageError
	return errors.As(err, &u)
}

// FlagSet is a flag.FlagSet whose every flag can also be set with
// ECSMETA_<NAME>; a flag on the command line wins over its variable.
type FlagSet struct {
	*flag.FlagSet
	Prog    string
	Summary string // first lines of --help
	version *bool  // set by AddVersion
}

// NewFlagSet returns a FlagSet that reports errors instead of printing usage.
func NewFlagSet(prog, summary string) *FlagSet {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &FlagSet{FlagSet: fs, Prog: prog, Summary: summary}
}

// ErrHelp is returned by Parse when --help was asked for (after printing it).
var ErrHelp = flag.ErrHelp

// Parse parses args, then fills every flag not given on the command line
// from its environment variable. Help is printed to stdout.
func (fs *FlagSet) Parse(args []string, stdout io.Writer) error {
	if err := fs.FlagSet.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.PrintUsage(stdout)
			return ErrHelp
		}
		return Usagef("%s (see --help)", flagError(err))
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q (see --help)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		v, ok := os.LookupEnv(EnvName(f.Name))
		if !ok {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = Usagef("invalid value %q in %s: %v (see --help)", v, EnvName(f.Name), e)
		}
	})
	return err
}

// flagError turns the standard library's messages into ours: "--flag".
func flagError(err error) string {
	msg := err.Error()
	msg = strings.Replace(msg, "flag provided but not defined: -", "unknown flag --", 1)
	msg = strings.Replace(msg, "for flag -", "for --", 1)
	msg = strings.Replace(msg, "flag needs an argument: -", "flag needs a value: --", 1)
	return msg
}

// PrintUsage writes --help: the summary, then each flag with its variable
// and default.
func (fs *FlagSet) PrintUsage(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nFlags (each also read from its environment variable; the flag wins):\n", strings.TrimSpace(fs.Summary))
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		f := fs.Lookup(n)
		def := ""
		if f.DefValue != "" && f.DefValue != "false" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%s  [%s]%s\n      %s\n", n, EnvName(n), def, f.Usage)
	}
}

// EndpointsValue is a repeatable, comma-separated --endpoint flag. The
// first use replaces the default.
type EndpointsValue struct {
	List []Endpoint
	set  bool
}

// NewEndpointsValue returns the value with the default endpoint.
func NewEndpointsValue() *EndpointsValue {
	eps, err := ParseEndpoints(DefaultEndpoint)
	if err != nil {
		panic(err)
	}
	return &EndpointsValue{List: eps}
}

func (v *EndpointsValue) String() string {
	if v == nil {
		return ""
	}
	s := make([]string, len(v.List))
	for i, e := range v.List {
		s[i] = e.String()
	}
	return strings.Join(s, ",")
}

func (v *EndpointsValue) Set(s string) error {
	eps, err := ParseEndpoints(s)
	if err != nil {
		return err
	}
	if !v.set {
		v.List, v.set = nil, true
	}
	for _, e := range eps {
		dup := false
		for _, have := range v.List {
			dup = dup || have == e
		}
		if !dup {
			v.List = append(v.List, e)
		}
	}
	return nil
}

// UpstreamValue is the --upstream flag.
type UpstreamValue struct{ Upstream }

// NewUpstreamValue returns the value with the default upstream.
func NewUpstreamValue() *UpstreamValue {
	u, err := ParseUpstream(DefaultUpstream)
	if err != nil {
		panic(err)
	}
	return &UpstreamValue{u}
}

func (v *UpstreamValue) String() string {
	if v == nil {
		return ""
	}
	return v.Upstream.String()
}

func (v *UpstreamValue) Set(s string) error {
	u, err := ParseUpstream(s)
	if err != nil {
		return err
	}
	v.Upstream = u
	return nil
}

// AddEndpoints registers --endpoint, shared by both binaries.
func (fs *FlagSet) AddEndpoints(usage string) *EndpointsValue {
	v := NewEndpointsValue()
	fs.Var(v, "endpoint", usage)
	return v
}

// AddUpstream registers --upstream, shared by both binaries.
func (fs *FlagSet) AddUpstream(usage string) *UpstreamValue {
	v := NewUpstreamValue()
	fs.Var(v, "upstream", usage)
	return v
}

// AddVerbosity registers klog's -v as --v (ECSMETA_V).
func (fs *FlagSet) AddVerbosity() {
	kfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(kfs)
	fs.Var(kfs.Lookup("v").Value, "v", "log verbosity (klog); 4 and above log per-connection and per-command detail")
}

// AddVersion registers --version; ParseMain prints it.
func (fs *FlagSet) AddVersion() {
	fs.version = fs.Bool("version", false, "print the version and exit")
}

// ParseMain parses a binary's arguments as both binaries do: --help and
// --version print to stdout, bad input prints its one line to stderr. When
// done is true the binary exits with code right away.
func (fs *FlagSet) ParseMain(args []string, stdout, stderr io.Writer) (code int, done bool) {
	if err := fs.Parse(args, stdout); err != nil {
		if errors.Is(err, ErrHelp) {
			return ExitOK, true
		}
		fmt.Fprintf(stderr, "%s: %v\n", fs.Prog, err)
		return ExitUsage, true
	}
	if fs.version != nil && *fs.version {
		fmt.Fprintf(stdout, "%s %s\n", fs.Prog, Version)
		return ExitOK, true
	}
	return ExitOK, false
}
