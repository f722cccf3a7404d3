package podinit

import "testing"

func TestUnderAMount(t *testing.T) {
	mounts := []Mount{{Source: "/var/lib/x", Target: "/tmp"}, {Source: "/y", Target: "/etc/mailwarden/policy/"}}
	for path, want := range map[string]bool{
		"/tmp":                      true,
		"/tmp/repo/.venv":           true,
		"/tmpfiles/.venv":           false,
		"/etc/mailwarden/policy/a":  true,
		"/etc/mailwarden":           false,
		"/root/.pyenv/versions/3.1": false,
	} {
		if got := underAMount(path, mounts); got != want {
			t.Errorf("underAMount(%q) = %v, want %v", path, got, want)
		}
	}
}
