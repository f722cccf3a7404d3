// Package cgroups manages the cgroup v1 directories of a node's pods and
// containers: it creates them under the agent's own cgroup, applies memory
// limits, reads CPU and memory usage, detects OOM kills and kills every
// process of a container (or of a whole node) at once through the freezer.
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Controllers the agent uses. memory: limits, working set, OOM; cpuacct: CPU
// time; freezer: atomic kill of a process tree; pids: counts.
var Controllers = []string{"memory", "cpuacct", "freezer", "pids"}

// Root is the base of one node's cgroups: for each controller, the directory
// <mount>/<agent's own cgroup>/<prefix>.
type Root struct {
	dirs map[string]string
}

// Group is one cgroup (a pod or a container) across the controllers.
type Group struct {
	dirs map[string]string
}

// mounts maps a cgroup v1 controller to its mount point, from /proc/self/mountinfo.
func mounts() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		pre, post := strings.Fields(line[:sep]), strings.Fields(line[sep+3:])
		if len(pre) < 5 || len(post) < 3 || post[0] != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(post[2], ",") {
			out[opt] = pre[4]
		}
	}
	return out, sc.Err()
}

// own maps each controller to the calling process's cgroup path.
func own() (map[string]string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

// Open returns the node's cgroup root "<prefix>" under the agent's own cgroup
// of each controller, creating it. It fails with a clear error when a
// controller is not mounted (cgroup v1) or not writable.
func Open(prefix string) (*Root, error) {
	m, err := mounts()
	if err != nil {
		return nil, err
	}
	self, err := own()
	if err != nil {
		return nil, err
	}
	r := &Root{dirs: map[string]string{}}
	for _, c := range Controllers {
		mp, ok := m[c]
		if !ok {
			return nil, fmt.Errorf("cgroup v1 controller %q is not mounted (the node agent needs memory, cpuacct, freezer and pids)", c)
		}
		d := filepath.Join(mp, self[c], prefix)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating cgroup %s: %w", d, err)
		}
		r.dirs[c] = d
	}
	return r, nil
}

// Dirs returns the node root's directory per controller.
func (r *Root) Dirs() map[string]string { return copyMap(r.dirs) }

// Group returns (and creates) the cgroup at rel below the root.
func (r *Root) Group(rel string) (*Group, error) {
	g := &Group{dirs: map[string]string{}}
	for c, d := range r.dirs {
		p := filepath.Join(d, rel)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, fmt.Errorf("creating cgroup %s: %w", p, err)
		}
		g.dirs[c] = p
	}
	return g, nil
}

// AsGroup views the node root itself as a group (to kill everything in it).
func (r *Root) AsGroup() *Group { return &Group{dirs: copyMap(r.dirs)} }

func copyMap(m map[string]string) map[string]string {
	o := make(map[string]string, len(m))
	for k, v := range m {
		o[k] = v
	}
	return o
}

// Paths lists the group's directories (what a process joins).
func (g *Group) Paths() []string {
	out := make([]string, 0, len(g.dirs))
	for _, c := range Controllers {
		out = append(out, g.dirs[c])
	}
	return out
}

// SetMemoryLimit caps memory (and memory+swap, so the limit is not dodged by
// swapping) at bytes; 0 means no limit.
func (g *Group) SetMemoryLimit(bytes int64) error {
	if bytes <= 0 {
		return nil
	}
	d := g.dirs["memory"]
	v := []byte(strconv.FormatInt(bytes, 10))
	if err := os.WriteFile(filepath.Join(d, "memory.limit_in_bytes"), v, 0); err != nil {
		return fmt.Errorf("setting memory limit: %w", err)
	}
	// memsw exists only with swap accounting; its absence is not an error.
	_ = os.WriteFile(filepath.Join(d, "memory.memsw.limit_in_bytes"), v, 0)
	return nil
}

// Usage is a point-in-time reading of a group.
type Usage struct {
	CPUNanos        uint64 // cumulative CPU time
	MemoryBytes     uint64 // usage including page cache
	WorkingSetBytes uint64 // usage minus inactive file pages (the kubelet's figure)
	RSSBytes        uint64
	OOMKills        uint64 // processes killed by the OOM killer for this group
	Time            time.Time
}

func readUint(p string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

func readKV(p string) (map[string]uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out, nil
}

// Usage reads CPU and memory figures.
func (g *Group) Usage() (Usage, error) {
	u := Usage{Time: time.Now()}
	var err error
	if u.CPUNanos, err = readUint(filepath.Join(g.dirs["cpuacct"], "cpuacct.usage")); err != nil {
		return u, err
	}
	md := g.dirs["memory"]
	if u.MemoryBytes, err = readUint(filepath.Join(md, "memory.usage_in_bytes")); err != nil {
		return u, err
	}
	st, err := readKV(filepath.Join(md, "memory.stat"))
	if err != nil {
		return u, err
	}
	inactive := st["total_inactive_file"]
	if inactive < u.MemoryBytes {
		u.WorkingSetBytes = u.MemoryBytes - inactive
	}
	u.RSSBytes = st["total_rss"]
	oc, err := readKV(filepath.Join(md, "memory.oom_control"))
	if err == nil {
		u.OOMKills = oc["oom_kill"]
	}
	return u, nil
}

// Procs lists the process ids in the group and all groups below it.
func (g *Group) Procs() ([]int, error) {
	var pids []int
	err := filepath.WalkDir(g.dirs["freezer"], func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
		return nil
	})
	return pids, err
}

// Signal sends sig to every process of the group (and the groups below).
func (g *Group) Signal(sig syscall.Signal) error {
	pids, err := g.Procs()
	if err != nil {
		return err
	}
	for _, p := range pids {
		_ = syscall.Kill(p, sig)
	}
	return nil
}

// Kill SIGKILLs every process of the group at once: the group is frozen so no
// process can fork or escape meanwhile, killed, then thawed so the kernel
// delivers the signals. It waits (up to timeout) until the group is empty.
func (g *Group) Kill(timeout time.Duration) error {
	state := filepath.Join(g.dirs["freezer"], "freezer.state")
	frozen := os.WriteFile(state, []byte("FROZEN"), 0) == nil
	if frozen {
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			b, _ := os.ReadFile(state)
			if strings.TrimSpace(string(b)) == "FROZEN" {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	_ = g.Signal(syscall.SIGKILL)
	if frozen {
		_ = os.WriteFile(state, []byte("THAWED"), 0)
	}
	deadline := time.Now().Add(timeout)
	for {
		pids, err := g.Procs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d processes still in the cgroup after SIGKILL", len(pids))
		}
		_ = g.Signal(syscall.SIGKILL)
		time.Sleep(10 * time.Millisecond)
	}
}

// Remove deletes the group's directories (children first). Processes must be gone.
func (g *Group) Remove() error {
	var firstErr error
	for _, d := range g.dirs {
		var dirs []string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) && firstErr == nil {
				firstErr = err
			}
		}
	}
	return firstErr
}
