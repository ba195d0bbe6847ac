// Package rules decides: it turns configuration into the desired addresses
// and iptables state, parses iptables-save output into the part of it that
// ecsmeta owns, and computes the iptables-restore text that moves one to the
// other. It runs nothing; the iptables package applies what it decides.
package rules

import (
	"bufio"
	"fmt"
	"sort"
	"strings"
)

// ChainPrefix marks every chain ecsmeta creates; nothing else is ours,
// except the jumps into these chains.
const ChainPrefix = "ECSMETA-"

// Jump is a rule in a built-in chain that jumps to one of our chains. We
// always want it at position 1.
type Jump struct {
	From, To string
	Pos      int // 1-based position within From; 0 in a desired state
}

// Table is the part of one table that ecsmeta owns.
type Table struct {
	Chains map[string][]string // our chain -> its rules, as iptables-save prints them after "-A CHAIN "
	Jumps  []Jump
}

// State is the part of one family's ruleset that ecsmeta owns, by table.
type State map[string]*Table

// Empty reports whether we own nothing.
func (s State) Empty() bool {
	for _, t := range s {
		if len(t.Chains) > 0 || len(t.Jumps) > 0 {
			return false
		}
	}
	return true
}

func (s State) table(name string) *Table {
	t, ok := s[name]
	if !ok {
		t = &Table{Chains: map[string][]string{}}
		s[name] = t
	}
	return t
}

// Save renders the state as an iptables-save fragment (the --dry-run view):
// tables and chains in a stable order.
func (s State) Save() string {
	var b strings.Builder
	for _, tn := range sortedKeys(s) {
		t := s[tn]
		if len(t.Chains) == 0 && len(t.Jumps) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", tn)
		for _, cn := range sortedKeys(t.Chains) {
			fmt.Fprintf(&b, ":%s - [0:0]\n", cn)
		}
		for _, j := range t.Jumps {
			fmt.Fprintf(&b, "-I %s 1 -j %s\n", j.From, j.To)
		}
		for _, cn := range sortedKeys(t.Chains) {
			for _, r := range t.Chains[cn] {
				fmt.Fprintf(&b, "-A %s %s\n", cn, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Foreign summarizes what others hold where it matters to us.
type Foreign struct {
	// NATOutputRules counts rules in nat OUTPUT that are not our jump: a
	// mesh's redirect, say.
	NATOutputRules int
	// Rules counts all "-A" lines that are not ours, to pick a backend.
	Rules int
}

// Parse reads iptables-save output and returns what ecsmeta owns in it and
// a summary of everything else.
func Parse(save string) (State, Foreign, error) {
	st := State{}
	var fr Foreign
	var cur string
	pos := map[string]int{} // built-in chain -> rules seen so far, for jump positions
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = line[1:]
			pos = map[string]int{}
		case line == "COMMIT":
			cur = ""
		case strings.HasPrefix(line, ":"):
			name := strings.Fields(line[1:])[0]
			if cur != "" && strings.HasPrefix(name, ChainPrefix) {
				st.table(cur).Chains[name] = nil
			}
		case strings.HasPrefix(line, "-A "):
			if cur == "" {
				return nil, fr, fmt.Errorf("parse iptables-save: rule outside a table: %q", line)
			}
			f := strings.SplitN(line[3:], " ", 2)
			chain, spec := f[0], ""
			if len(f) == 2 {
				spec = f[1]
			}
			if strings.HasPrefix(chain, ChainPrefix) {
				t := st.table(cur)
				t.Chains[chain] = append(t.Chains[chain], spec)
				continue
			}
			pos[chain]++
			if to, ok := strings.CutPrefix(spec, "-j "); ok && strings.HasPrefix(to, ChainPrefix) && !strings.Contains(to, " ") {
				t := st.table(cur)
				t.Jumps = append(t.Jumps, Jump{From: chain, To: to, Pos: pos[chain]})
				continue
			}
			fr.Rules++
			if cur == "nat" && chain == "OUTPUT" {
				fr.NATOutputRules++
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fr, fmt.Errorf("parse iptables-save: %w", err)
	}
	// Drop tables where we own nothing, so that equal states compare equal.
	for tn, t := range st {
		if len(t.Chains) == 0 && len(t.Jumps) == 0 {
			delete(st, tn)
		}
	}
	return st, fr, nil
}

// Transition returns the iptables-restore --noflush input that turns our
// part of the ruleset from cur into want, touching nothing else; "" when
// they already agree. Declaring a chain in restore input flushes it, so a
// wanted chain is always rewritten whole.
func Transition(cur, want State) string {
	var b strings.Builder
	names := map[string]bool{}
	for n := range cur {
		names[n] = true
	}
	for n := range want {
		names[n] = true
	}
	for _, tn := range sortedKeys(names) {
		c, w := cur[tn], want[tn]
		if c == nil {
			c = &Table{}
		}
		if w == nil {
			w = &Table{}
		}
		if tableEqual(c, w) {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", tn)
		for _, cn := range sortedKeys(w.Chains) {
			fmt.Fprintf(&b, ":%s - [0:0]\n", cn)
		}
		// Remove jumps that are unwanted or out of place (by spec, not by
		// number: others may insert rules between our save and restore).
		for _, j := range c.Jumps {
			if !hasJump(w.Jumps, j.From, j.To) || !jumpInPlace(c.Jumps, j.From, j.To) {
				fmt.Fprintf(&b, "-D %s -j %s\n", j.From, j.To)
			}
		}
		// Insert in reverse so that the first wanted jump ends up first.
		for i := len(w.Jumps) - 1; i >= 0; i-- {
			j := w.Jumps[i]
			if !jumpInPlace(c.Jumps, j.From, j.To) {
				fmt.Fprintf(&b, "-I %s 1 -j %s\n", j.From, j.To)
			}
		}
		for _, cn := range sortedKeys(w.Chains) {
			for _, r := range w.Chains[cn] {
				fmt.Fprintf(&b, "-A %s %s\n", cn, r)
			}
		}
		for _, cn := range sortedKeys(c.Chains) {
			if _, keep := w.Chains[cn]; !keep {
				fmt.Fprintf(&b, "-F %s\n-X %s\n", cn, cn)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Diff lists, one line each, how cur differs from want; nil when equal.
func Diff(family string, cur, want State) []string {
	var out []string
	names := map[string]bool{}
	for n := range cur {
		names[n] = true
	}
	for n := range want {
		names[n] = true
	}
	for _, tn := range sortedKeys(names) {
		c, w := cur[tn], want[tn]
		if c == nil {
			c = &Table{}
		}
		if w == nil {
			w = &Table{}
		}
		for _, j := range w.Jumps {
			switch {
			case !hasJump(c.Jumps, j.From, j.To):
				out = append(out, fmt.Sprintf("%s %s: missing jump %s -> %s", family, tn, j.From, j.To))
			case !jumpInPlace(c.Jumps, j.From, j.To):
				out = append(out, fmt.Sprintf("%s %s: jump %s -> %s is not at position 1 (another rule was inserted before it)", family, tn, j.From, j.To))
			}
		}
		for _, j := range c.Jumps {
			if !hasJump(w.Jumps, j.From, j.To) {
				out = append(out, fmt.Sprintf("%s %s: unexpected jump %s -> %s", family, tn, j.From, j.To))
			}
		}
		for _, cn := range sortedKeys(w.Chains) {
			have, ok := c.Chains[cn]
			if !ok {
				out = append(out, fmt.Sprintf("%s %s: missing chain %s", family, tn, cn))
				continue
			}
			if equalStrings(have, w.Chains[cn]) {
				continue
			}
			n := len(out)
			for _, r := range w.Chains[cn] {
				if !contains(have, r) {
					out = append(out, fmt.Sprintf("%s %s: missing rule -A %s %s", family, tn, cn, r))
				}
			}
			for _, r := range have {
				if !contains(w.Chains[cn], r) {
					out = append(out, fmt.Sprintf("%s %s: unexpected rule -A %s %s", family, tn, cn, r))
				}
			}
			if len(out) == n {
				out = append(out, fmt.Sprintf("%s %s: rules of %s are duplicated or out of order", family, tn, cn))
			}
		}
		for _, cn := range sortedKeys(c.Chains) {
			if _, ok := w.Chains[cn]; !ok {
				out = append(out, fmt.Sprintf("%s %s: unexpected chain %s", family, tn, cn))
			}
		}
	}
	return out
}

func tableEqual(c, w *Table) bool {
	if len(c.Chains) != len(w.Chains) || len(c.Jumps) != len(w.Jumps) {
		return false
	}
	for cn, rs := range w.Chains {
		have, ok := c.Chains[cn]
		if !ok || !equalStrings(have, rs) {
			return false
		}
	}
	for _, j := range w.Jumps {
		if !jumpInPlace(c.Jumps, j.From, j.To) {
			return false
		}
	}
	return true
}

func hasJump(js []Jump, from, to string) bool { return countJumps(js, from, to) > 0 }

func countJumps(js []Jump, from, to string) int {
	n := 0
	for _, j := range js {
		if j.From == from && j.To == to {
			n++
		}
	}
	return n
}

// jumpInPlace: exactly one such jump, and it is first in its chain.
func jumpInPlace(js []Jump, from, to string) bool {
	if countJumps(js, from, to) != 1 {
		return false
	}
	for _, j := range js {
		if j.From == from && j.To == to {
			return j.Pos == 1
		}
	}
	return false
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
