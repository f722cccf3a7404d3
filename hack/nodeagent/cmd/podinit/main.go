// Command podinit turns itself into one container process of a pod run by
// the node agent. It is started by the agent in a new mount and UTS namespace
// and execs the container's command once its view of the machine is built.
//
//	podinit start SPEC          build the container's root and exec its command
//	podinit enter SPEC PID      run SPEC's args inside the running container PID
//	podinit setid --uid U --gid G --groups G1,G2 --dir D -- ARGV
//	                            (internal: the last step of enter)
//
// A setup failure is written to descriptor 3 (when open) and stderr, and the
// exit code is 128, as a container runtime's "StartError".
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"mailwarden/hack/nodeagent/internal/podinit"
)

func fail(err error) {
	msg := err.Error()
	if f := os.NewFile(podinit.StatusFD, "status"); f != nil {
		_, _ = f.WriteString(msg)
	}
	fmt.Fprintln(os.Stderr, "podinit:", msg)
	os.Exit(128)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: podinit start SPEC | enter SPEC PID | setid ... -- ARGV")
		os.Exit(2)
	}
	// The status pipe is inherited without close-on-exec; set it so a
	// successful exec closes it and the agent reads EOF ("started").
	syscall.CloseOnExec(podinit.StatusFD)
	switch os.Args[1] {
	case "start":
		s, err := podinit.Read(os.Args[2])
		if err != nil {
			fail(err)
		}
		fail(podinit.Start(s))
	case "enter":
		if len(os.Args) != 4 {
			fail(fmt.Errorf("usage: podinit enter SPEC PID"))
		}
		s, err := podinit.Read(os.Args[2])
		if err != nil {
			fail(err)
		}
		pid, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fail(fmt.Errorf("bad pid %q", os.Args[3]))
		}
		self, err := os.Executable()
		if err != nil {
			fail(err)
		}
		fail(podinit.Enter(s, pid, self))
	case "setid":
		fs := flag.NewFlagSet("setid", flag.ExitOnError)
		uid := fs.Uint("uid", 0, "user id")
		gid := fs.Uint("gid", 0, "group id")
		groups := fs.String("groups", "", "supplementary groups, comma-separated")
		dir := fs.String("dir", "", "working directory")
		_ = fs.Parse(os.Args[2:])
		gs, err := podinit.ParseUints(*groups)
		if err != nil {
			fail(err)
		}
		fail(podinit.SetID(uint32(*uid), uint32(*gid), gs, *dir, fs.Args()))
	default:
		fmt.Fprintf(os.Stderr, "podinit: unknown mode %q\n", os.Args[1])
		os.Exit(2)
	}
}
