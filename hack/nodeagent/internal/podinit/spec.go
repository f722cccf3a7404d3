// Package podinit holds what the node agent hands to the podinit binary: the
// description of one container process (its root file system view, mounts,
// namespaces, cgroups, identity and argv). It imports only the standard
// library so that podinit, which runs once per container start and per exec
// probe, stays small and starts in milliseconds.
package podinit

import (
	"encoding/json"
	"fmt"
	"os"
)

// Mount is one bind mount into the container's root.
type Mount struct {
	// Source is a path on the host (a volume's directory, a file, a sub path).
	Source string `json:"source"`
	// Target is the absolute path inside the container.
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// Spec describes one container process.
type Spec struct {
	// Args is argv; Args[0] is looked up in the PATH of Env when it has no slash.
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	WorkingDir string   `json:"workingDir,omitempty"`
	UID        uint32   `json:"uid"`
	GID        uint32   `json:"gid"`
	Groups     []uint32 `json:"groups,omitempty"`

	// NetNS is the path of the pod's network namespace (a bind mount under /run/netns).
	NetNS    string `json:"netns"`
	Hostname string `json:"hostname,omitempty"`
	// Cgroups are the directories (one per cgroup v1 controller) the process joins
	// before anything else, so every process it starts is accounted and killable.
	Cgroups []string `json:"cgroups,omitempty"`

	// LayerDir holds the container's writable layer (upper/, work/) and its
	// root mount point (rootfs/). The host root is the read-only lower layer.
	LayerDir     string `json:"layerDir"`
	ReadOnlyRoot bool   `json:"readOnlyRoot,omitempty"`
	// HideDirs are host directories covered by an empty tmpfs inside the container
	// (the node agents' state, which holds every pod's secrets).
	HideDirs []string `json:"hideDirs,omitempty"`
	// TraversePaths are host paths the image's files live in (the virtualenv,
	// the Python it links to): their parent directories become traversable by
	// every user in the container's own layer (the host keeps its modes), as
	// an image's /opt/... is for its non-root USER.
	TraversePaths []string `json:"traversePaths,omitempty"`
	// DevShm is the pod's shared /dev/shm directory (a tmpfs on the host).
	DevShm string `json:"devShm,omitempty"`
	// TerminationLog is the host file bind-mounted at TerminationLogPath.
	TerminationLog     string  `json:"terminationLog,omitempty"`
	TerminationLogPath string  `json:"terminationLogPath,omitempty"`
	Mounts             []Mount `json:"mounts,omitempty"`
}

// StatusFD is the descriptor on which podinit reports a setup failure; on a
// successful exec it is closed (close-on-exec) without a byte written.
const StatusFD = 3

// Write stores the spec as JSON at path (mode 0600: it holds the environment).
func (s *Spec) Write(path string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Read loads a spec written by Write.
func Read(path string) (*Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}
