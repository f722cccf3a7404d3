package podinit

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// JoinCgroups moves the calling process into every directory of dirs.
func JoinCgroups(dirs []string) error {
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), pid, 0); err != nil {
			return fmt.Errorf("joining cgroup %s: %w", d, err)
		}
	}
	return nil
}

// Start builds the container's view of the machine and replaces the calling
// process with the container's command. It runs in a fresh mount and UTS
// namespace (the node agent starts podinit with CLONE_NEWNS|CLONE_NEWUTS).
// It returns only on failure.
func Start(s *Spec) error {
	if err := JoinCgroups(s.Cgroups); err != nil {
		return err
	}
	// Open the network namespace while its bind mount is still visible (the
	// container's root does not show /run/netns).
	netFD := -1
	if s.NetNS != "" {
		fd, err := unix.Open(s.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening network namespace: %w", err)
		}
		netFD = fd
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	root, err := buildRoot(s)
	if err != nil {
		return err
	}
	if err := pivot(root); err != nil {
		return err
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("setting hostname: %w", err)
		}
	}
	// The network namespace is per thread: enter it on this locked thread, which
	// is the one that calls execve below, so the command starts inside it.
	runtime.LockOSThread()
	if netFD >= 0 {
		if err := unix.Setns(netFD, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("entering network namespace %s: %w", s.NetNS, err)
		}
		unix.Close(netFD)
	}
	return execAs(s.UID, s.GID, s.Groups, s.WorkingDir, s.Args, s.Env)
}

// execAs drops to uid/gid/groups, changes to dir and executes argv with env.
func execAs(uid, gid uint32, groups []uint32, dir string, argv, env []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("no command given")
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		return err
	}
	gs := make([]int, 0, len(groups))
	for _, g := range groups {
		gs = append(gs, int(g))
	}
	if err := syscall.Setgroups(gs); err != nil {
		return fmt.Errorf("setting supplementary groups: %w", err)
	}
	if err := syscall.Setresgid(int(gid), int(gid), int(gid)); err != nil {
		return fmt.Errorf("setting gid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(int(uid), int(uid), int(uid)); err != nil {
		return fmt.Errorf("setting uid %d: %w", uid, err)
	}
	if dir == "" {
		dir = "/"
	}
	if err := os.Chdir(dir); err != nil {
		return fmt.Errorf("changing to working directory %s: %w", dir, err)
	}
	if err := syscall.Exec(path, argv, env); err != nil {
		return fmt.Errorf("exec %q: %w", argv[0], err)
	}
	return nil
}

// lookPath resolves name against the PATH found in env, as a container
// runtime resolves the command against the container's environment.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	pathVar := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	for _, d := range filepath.SplitList(pathVar) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
}

// buildRoot assembles <LayerDir>/rootfs: an overlay whose lower layer is the
// host root and whose upper layer is the container's own writable layer,
// with /proc, /sys, a minimal /dev, the other host mounts, and the volumes.
func buildRoot(s *Spec) (string, error) {
	upper := filepath.Join(s.LayerDir, "upper")
	work := filepath.Join(s.LayerDir, "work")
	root := filepath.Join(s.LayerDir, "rootfs")
	for _, d := range []string{upper, work, root} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", err
		}
	}
	// The overlay's root directory takes its mode from the upper layer's: make
	// it the host root's (0755), or other users could not even chdir to /.
	if st, err := os.Stat("/"); err == nil {
		if err := os.Chmod(upper, st.Mode().Perm()); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=/,upperdir=%s,workdir=%s", upper, work)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("mounting the container's root (overlay on /): %w", err)
	}
	if err := openTraverse(root, s.TraversePaths); err != nil {
		return "", err
	}
	// The overlay holds only the root file system; bring in the host's other
	// file systems (not the kernel ones, which get their own instances below).
	others, err := hostMounts(append([]string{root, s.LayerDir}, s.HideDirs...))
	if err != nil {
		return "", err
	}
	for _, m := range others {
		t := filepath.Join(root, m)
		if err := unix.Mount(m, t, "", unix.MS_BIND, ""); err != nil {
			// A mount point the overlay cannot show (e.g. under a hidden path) is skipped.
			continue
		}
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("mounting /proc: %w", err)
	}
	sys := filepath.Join(root, "sys")
	if err := unix.Mount("/sys", sys, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return "", fmt.Errorf("mounting /sys: %w", err)
	}
	if err := remountRO(sys); err != nil {
		return "", err
	}
	if err := buildDev(root, s); err != nil {
		return "", err
	}
	for _, h := range s.HideDirs {
		t, err := securejoin.SecureJoin(root, h)
		if err != nil {
			continue
		}
		if _, err := os.Stat(t); err != nil {
			continue
		}
		if err := unix.Mount("tmpfs", t, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=64k,mode=755"); err != nil {
			return "", fmt.Errorf("hiding %s: %w", h, err)
		}
	}
	for _, m := range s.Mounts {
		if err := bindInto(root, m); err != nil {
			return "", err
		}
	}
	// The image's files live on the host (TraversePaths). A volume mounted over
	// one of their ancestors (an emptyDir at /tmp while the virtualenv lives
	// under /tmp) would hide them, which never happens to a real image's
	// files: bind them back, read-only, over the volume.
	for _, p := range s.TraversePaths {
		if !underAMount(p, s.Mounts) {
			continue
		}
		if err := bindInto(root, Mount{Source: p, Target: p, ReadOnly: true}); err != nil {
			return "", fmt.Errorf("keeping the image's %s visible under a volume: %w", p, err)
		}
	}
	// pivot_root's put-old directory must exist before the root turns read-only.
	if err := os.MkdirAll(filepath.Join(root, ".oldroot"), 0o700); err != nil {
		return "", err
	}
	if s.ReadOnlyRoot {
		if err := unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return "", fmt.Errorf("making the root file system read-only: %w", err)
		}
		for _, m := range others {
			_ = remountRO(filepath.Join(root, m))
		}
	}
	return root, nil
}

// openTraverse adds o+x to every ancestor directory of paths inside the
// container's root; on the overlay this copies the directory up into the
// container's layer, so the host's modes are untouched.
func openTraverse(root string, paths []string) error {
	for _, p := range paths {
		for d := filepath.Dir(filepath.Clean(p)); d != "/" && d != "."; d = filepath.Dir(d) {
			t := filepath.Join(root, d)
			st, err := os.Stat(t)
			if err != nil || !st.IsDir() {
				continue
			}
			if st.Mode().Perm()&0o001 == 0 {
				if err := os.Chmod(t, st.Mode().Perm()|0o001); err != nil {
					return fmt.Errorf("opening %s to the container's users: %w", d, err)
				}
			}
		}
	}
	return nil
}

// bindInto bind-mounts m.Source at m.Target inside root, creating the mount
// point (in the container's writable layer) when the image lacks it.
func bindInto(root string, m Mount) error {
	st, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("volume source %s: %w", m.Source, err)
	}
	// Resolve symlinks inside the container's root (/var/run -> /run must
	// lead to the container's /run, never the host's).
	t, err := securejoin.SecureJoin(root, m.Target)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", m.Target, err)
	}
	if st.IsDir() {
		err = os.MkdirAll(t, 0o755)
	} else {
		err = touch(t)
	}
	if err != nil {
		return fmt.Errorf("creating mount point %s: %w", m.Target, err)
	}
	if err := unix.Mount(m.Source, t, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mounting %s at %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		return remountRO(t)
	}
	return nil
}

// underAMount reports whether path p is a volume's mount point or lies below one.
func underAMount(p string, mounts []Mount) bool {
	p = filepath.Clean(p)
	for _, m := range mounts {
		t := filepath.Clean(m.Target)
		if p == t || strings.HasPrefix(p, t+"/") {
			return true
		}
	}
	return false
}

func remountRO(p string) error {
	if err := unix.Mount("", p, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("making %s read-only: %w", p, err)
	}
	return nil
}

func touch(p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// buildDev gives the container its own /dev: a tmpfs with the usual device
// nodes (bound from the host), /dev/pts, the pod's /dev/shm and the
// termination-message file.
func buildDev(root string, s *Spec) error {
	dev := filepath.Join(root, "dev")
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_STRICTATIME, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("mounting /dev: %w", err)
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		t := filepath.Join(dev, n)
		if err := touch(t); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+n, t, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding /dev/%s: %w", n, err)
		}
	}
	links := map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
	for n, to := range links {
		if err := os.Symlink(to, filepath.Join(dev, n)); err != nil {
			return err
		}
	}
	pts := filepath.Join(dev, "pts")
	if err := os.MkdirAll(pts, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("devpts", pts, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mounting /dev/pts: %w", err)
	}
	shm := filepath.Join(dev, "shm")
	if err := os.MkdirAll(shm, 0o1777); err != nil {
		return err
	}
	if s.DevShm != "" {
		if err := unix.Mount(s.DevShm, shm, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mounting /dev/shm: %w", err)
		}
	}
	if s.TerminationLog != "" {
		p := s.TerminationLogPath
		if p == "" {
			p = "/dev/termination-log"
		}
		// A path outside /dev is created in the writable layer by bindInto.
		if err := bindInto(root, Mount{Source: s.TerminationLog, Target: p}); err != nil {
			return err
		}
	}
	return nil
}

// hostMounts lists the host's mount points other than / and the kernel file
// systems (/proc, /sys, /dev, /run/netns), shortest first, skipping any under
// the excluded paths.
func hostMounts(exclude []string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	skip := append([]string{"/proc", "/sys", "/dev", "/run/netns"}, exclude...)
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == "/" || seen[mp] || under(mp, skip) {
			continue
		}
		seen[mp] = true
		out = append(out, mp)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) < len(out[j]) })
	return out, sc.Err()
}

func under(p string, roots []string) bool {
	for _, r := range roots {
		if r == "" {
			continue
		}
		if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") {
			return true
		}
	}
	return false
}

// unescapeMount decodes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func pivot(root string) error {
	old := filepath.Join(root, ".oldroot")
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host root: %w", err)
	}
	// On a read-only root the directory stays; it is empty and harmless.
	_ = os.Remove("/.oldroot")
	return nil
}

// Enter runs argv inside the running container whose first process is pid
// (kubectl exec, exec probes and exec hooks): it joins the container's
// cgroups, then nsenter joins its mount, UTS and network namespaces and runs
// `podinit setid` there, which drops to the container's identity.
func Enter(s *Spec, pid int, self string) error {
	if err := JoinCgroups(s.Cgroups); err != nil {
		return err
	}
	nsenter, err := lookPath("nsenter", []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin"})
	if err != nil {
		return fmt.Errorf("nsenter (util-linux) is needed to exec in a container: %w", err)
	}
	args := []string{nsenter, "-t", strconv.Itoa(pid), "-m", "-u", "-n", "--",
		self, "setid", "--uid", fmt.Sprint(s.UID), "--gid", fmt.Sprint(s.GID),
		"--groups", joinUint(s.Groups), "--dir", s.WorkingDir, "--"}
	args = append(args, s.Args...)
	return syscall.Exec(nsenter, args, s.Env)
}

// SetID is the last step of Enter, run inside the container's namespaces.
func SetID(uid, gid uint32, groups []uint32, dir string, argv []string) error {
	return execAs(uid, gid, groups, dir, argv, os.Environ())
}

func joinUint(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatUint(uint64(x), 10)
	}
	return strings.Join(s, ",")
}

// ParseUints parses a comma-separated list written by joinUint.
func ParseUints(s string) ([]uint32, error) {
	if s == "" {
		return nil, nil
	}
	var out []uint32
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, err
		}
		out = append(out, uint32(n))
	}
	return out, nil
}
