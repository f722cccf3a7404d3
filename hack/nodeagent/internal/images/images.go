// Package images is the node's image catalog. There is no container engine:
// an "image" is a program installed on the machine (our package's virtualenv)
// plus the config its Dockerfile gives it (ENTRYPOINT, CMD, ENV, USER,
// WORKDIR). A pod's image reference is matched by repository name, any tag
// or digest; an image outside the catalog cannot run here.
package images

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Image is one runnable image.
type Image struct {
	// Names are repository names this image answers to ("ghcr.io/mailwarden/mailwarden", "mailwarden").
	Names      []string          `json:"names"`
	Entrypoint []string          `json:"entrypoint"`
	Cmd        []string          `json:"cmd,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	// User is "UID[:GID]" as in a Dockerfile's USER (numeric only).
	User       string `json:"user,omitempty"`
	WorkingDir string `json:"workingDir,omitempty"`
	// Paths are the host directories the image's files live in; their parents
	// are made traversable for the container's (non-root) users.
	Paths []string `json:"paths,omitempty"`
}

// Catalog is the set of images a node runs.
type Catalog struct {
	Images []Image `json:"images"`
}

// Load reads a catalog (JSON) from path.
func Load(path string) (*Catalog, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Catalog
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("image catalog %s: %w", path, err)
	}
	for i, im := range c.Images {
		if len(im.Names) == 0 || len(im.Entrypoint) == 0 {
			return nil, fmt.Errorf("image catalog %s: image %d needs names and an entrypoint", path, i)
		}
		if _, _, err := im.IDs(); err != nil {
			return nil, fmt.Errorf("image catalog %s: %w", path, err)
		}
	}
	return &c, nil
}

// Repository strips the tag and digest from an image reference.
func Repository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	slash := strings.LastIndex(ref, "/")
	if colon := strings.LastIndex(ref, ":"); colon > slash {
		ref = ref[:colon]
	}
	return ref
}

// Resolve finds the image for ref, or explains why none matches.
func (c *Catalog) Resolve(ref string) (*Image, error) {
	repo := Repository(ref)
	var known []string
	for i := range c.Images {
		for _, n := range c.Images[i].Names {
			if n == repo {
				return &c.Images[i], nil
			}
			known = append(known, n)
		}
	}
	sort.Strings(known)
	return nil, fmt.Errorf("image %q is not available on this node: there is no container engine, the node agent runs only its installed images (%s)", ref, strings.Join(known, ", "))
}

// IDs parses User into uid and gid (gid defaults to uid's primary group 0
// when absent, as a numeric Dockerfile USER does).
func (im *Image) IDs() (uid, gid *int64, err error) {
	if im.User == "" {
		return nil, nil, nil
	}
	parts := strings.SplitN(im.User, ":", 2)
	u, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return nil, nil, fmt.Errorf("image user %q: only numeric UID[:GID] is supported", im.User)
	}
	uid = &u
	g := int64(0)
	if len(parts) == 2 {
		if g, err = strconv.ParseInt(parts[1], 10, 64); err != nil {
			return nil, nil, fmt.Errorf("image user %q: only numeric UID[:GID] is supported", im.User)
		}
	}
	gid = &g
	return uid, gid, nil
}

// Argv is the container's argv per the Kubernetes rules: command replaces
// ENTRYPOINT (and drops CMD), args replace CMD.
func (im *Image) Argv(command, args []string) []string {
	var argv []string
	if len(command) > 0 {
		argv = append(argv, command...)
		argv = append(argv, args...)
		return argv
	}
	argv = append(argv, im.Entrypoint...)
	if len(args) > 0 {
		return append(argv, args...)
	}
	return append(argv, im.Cmd...)
}
