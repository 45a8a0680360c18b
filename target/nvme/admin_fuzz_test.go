package nvme

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// FuzzAdminCommand sends an arbitrary SQE with arbitrary data to an
// enabled admin queue (and, for Connect-shaped input, to Target.Connect).
// No input may panic (Execute recovers panics, so the test watches the
// recovered-panic counter), and the controller must still answer Identify
// afterwards unless the command legitimately tore it down or disabled it.
func FuzzAdminCommand(f *testing.F) {
	seed := func(c *Command) { f.Add(c.SQE[:], c.Data) }
	seed(identifyCmd(cnsController, 0))
	seed(identifyCmd(cnsActiveNSList, 0))
	seed(identifyCmd(cnsNamespace, 1))
	seed(identifyCmd(cnsNSDescriptors, 1))
	seed(logCmd(logSMART, 0xffffffff, 512, 0, false))
	seed(logCmd(logError, 0, 4096, 0, false))
	seed(logCmd(logChangedNS, 0, 4096, 0, true))
	seed(logCmd(logEffects, 0, 4096, 1020, false))
	seed(logCmd(logDiscovery, 0, 1024, 0, false))
	seed(adminCmd(OpSetFeatures, 0, featNumQueues, 0xffff))
	seed(adminCmd(OpSetFeatures, 0, featKeepAlive, 1))
	seed(adminCmd(OpSetFeatures, 0, featWriteCache, 0))
	seed(adminCmd(OpGetFeatures, 0, featHostID|3<<8, 1))
	seed(adminCmd(OpAsyncEventReq, 0))
	seed(adminCmd(OpAbort, 0, 0x10<<16))
	seed(adminCmd(OpKeepAlive, 0))
	seed(propGetCmd(propCAP, true))
	seed(propSetCmd(propCC, 1<<ccSHNShift|ccEnable))
	seed(propSetCmd(propCC, 0))
	seed(connectCmd(0, 31, 0, connectData(testHostID, 0xffff, testSubNQN, testHostNQN)))
	seed(connectCmd(1, 0xffff, 0, connectData(testHostID, 1, testSubNQN, testHostNQN)))

	f.Fuzz(func(t *testing.T, sqe, data []byte) {
		// A command that never returns is as much a bug as a panic.
		watchdog := time.AfterFunc(10*time.Second, func() {
			buf := make([]byte, 1<<20)
			panic(fmt.Sprintf("admin command % x hangs:\n%s", sqe, buf[:runtime.Stack(buf, true)]))
		})
		defer watchdog.Stop()
		e := newTestEnv(t)
		q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
		cmd := &Command{Data: data}
		copy(cmd.SQE[:], sqe)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		q.Execute(ctx, cmd)
		if cmd.Opcode() == OpFabrics && cmd.FCType() == FabricsConnect {
			if nq, c := e.tgt.Connect(ctx, cmd, testLocal); nq != nil {
				if !c.Status.OK() {
					t.Fatalf("Connect returned a queue with status %v", c.Status)
				}
				nq.Close()
			}
		}
		if n := e.tgt.stats.panics.Load(); n != 0 {
			t.Fatalf("%d panics recovered executing % x", n, sqe)
		}
		select {
		case <-q.Done():
			return
		default:
		}
		if !q.Controller().ready() || q.disconnected.Load() {
			return
		}
		id := identifyCmd(cnsController, 0)
		if c, b := q.Execute(context.Background(), id); !c.Status.OK() || len(b) != identifyDataLength {
			t.Fatalf("identify after the fuzzed command: %v, %d bytes", c.Status, len(b))
		}
	})
}
