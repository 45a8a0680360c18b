package main

import (
	"log/slog"
	"syscall"
)

// fdReserve is a rough count of the descriptors the daemon needs besides
// front-end connections: volume files, the catalog, API connections.
const fdReserve = 128

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit, so that
// connection floods meet the connection caps rather than EMFILE, and logs
// the result, with a warning when the front ends' connection caps (iSCSI
// plus NVMe/TCP) do not fit in it. The syscall package already raises the soft limit at start-up, but
// only to one below the hard limit (it uses that value to notice changes
// made from outside), and only as an implementation detail.
func raiseFileLimit(log *slog.Logger, maxConns int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("reading the open file limit", "err", err)
		return
	}
	before := lim.Cur
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Warn("raising the open file limit", "soft", before, "hard", lim.Max, "err", err)
			lim.Cur = before
		}
	}
	log.Info("open file limit", "soft", lim.Cur, "hard", lim.Max, "raised_from", before)
	if lim.Cur < uint64(maxConns)+fdReserve {
		log.Warn("the open file limit is below iscsi.max_connections plus nvme.max_connections plus a reserve for files and the API; a connection flood can run the daemon out of descriptors (it keeps serving, but new connections wait)",
			"soft", lim.Cur, "max_connections", maxConns, "reserve", fdReserve)
	}
}
