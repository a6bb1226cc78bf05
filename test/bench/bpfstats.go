package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// progStat is one BPF program's counters as bpftool reports them with
// kernel.bpf_stats_enabled=1.
type progStat struct {
	ID        int    `json:"id"`
	Name      string `json:"name"`
	RunTimeNs uint64 `json:"run_time_ns"`
	RunCnt    uint64 `json:"run_cnt"`
}

// bpfStats reads the counters of the programs pid holds open (from its
// file descriptors' fdinfo).
func bpfStats(pid int) (map[int]progStat, error) {
	ids, err := progIDs(pid)
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("bpftool", "-j", "prog", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("bpftool prog show: %w", err)
	}
	var progs []progStat
	if err := json.Unmarshal(out, &progs); err != nil {
		return nil, fmt.Errorf("bpftool prog show: %w", err)
	}
	m := map[int]progStat{}
	for _, p := range progs {
		if ids[p.ID] {
			m[p.ID] = p
		}
	}
	return m, nil
}

func progIDs(pid int) (map[int]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	ids := map[int]bool{}
	for _, e := range ents {
		data, err := os.ReadFile(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					ids[id] = true
				}
			}
		}
	}
	return ids, nil
}

// enableBPFStats turns on the kernel's per-program run-time accounting and
// returns a function that restores the previous setting.
func enableBPFStats() (func(), error) {
	const knob = "/proc/sys/kernel/bpf_stats_enabled"
	old, err := os.ReadFile(knob)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(knob, []byte("1"), 0o644); err != nil {
		return nil, err
	}
	return func() { _ = os.WriteFile(knob, old, 0o644) }, nil
}

// printStatsDelta prints, per program, the runs and time spent between two
// readings, and the share of one CPU that took over d.
func printStatsDelta(label string, before, after map[int]progStat, d time.Duration) {
	type row struct {
		name    string
		cnt, ns uint64
	}
	var rows []row
	var total uint64
	for id, a := range after {
		b := before[id]
		r := row{name: a.Name, cnt: a.RunCnt - b.RunCnt, ns: a.RunTimeNs - b.RunTimeNs}
		if r.cnt == 0 {
			continue
		}
		total += r.ns
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ns > rows[j].ns })
	var sb strings.Builder
	fmt.Fprintf(&sb, "BPF programs during one %s run (%s): %.1f%% of one CPU\n", label, d, float64(total)/float64(d.Nanoseconds())*100)
	for _, r := range rows {
		fmt.Fprintf(&sb, "  %-24s %10d runs %7.0f ns/run %6.2f%% CPU\n", r.name, r.cnt, float64(r.ns)/float64(r.cnt), float64(r.ns)/float64(d.Nanoseconds())*100)
	}
	fmt.Print(sb.String())
}
