package pgproxy

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxStampAge bounds how far back a kernel receive timestamp may move the
// arrival time; older stamps (a wall clock step) are ignored.
const maxStampAge = int64(50 * time.Millisecond)

// stampedReader reads from a connection and reports when the data arrived.
// For TCP connections on Linux it uses the kernel's receive timestamp
// (SO_TIMESTAMPNS), which on loopback is taken when the sender's segment is
// queued: the arrival time then does not include the time the reader
// goroutine took to wake up. Otherwise it uses the time Read returned.
type stampedReader struct {
	conn net.Conn
	rc   syscall.RawConn // nil: plain Read
	oob  []byte
}

func newStampedReader(c net.Conn) *stampedReader {
	r := &stampedReader{conn: c}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return r
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return r
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return r
	}
	r.rc = rc
	r.oob = make([]byte, unix.CmsgSpace(64))
	return r
}

// read reads into b and returns the number of bytes, their arrival time
// (mono clock) and an error, like io.Reader.
func (r *stampedReader) read(b []byte) (int, int64, error) {
	if r.rc == nil {
		n, err := r.conn.Read(b)
		return n, mono(), err
	}
	var n, oobn int
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), b, r.oob, 0)
			if rerr != unix.EINTR {
				return rerr != unix.EAGAIN
			}
		}
	})
	// One clock reading gives both the monotonic time (for mono) and the
	// wall time (to compare with the kernel's CLOCK_REALTIME stamp).
	t := time.Now()
	now := int64(t.Sub(epoch))
	if err == nil && rerr != nil {
		err = os.NewSyscallError("recvmsg", rerr)
	}
	if err != nil {
		return 0, now, err
	}
	if n == 0 {
		return 0, now, io.EOF
	}
	if ts, ok := parseStamp(r.oob[:oobn]); ok {
		if age := t.UnixNano() - ts; age > 0 && age < maxStampAge {
			now -= age
		}
	}
	return n, now, nil
}

// parseStamp returns the SCM_TIMESTAMPNS time (Unix nanoseconds) in oob.
func parseStamp(oob []byte) (int64, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_TIMESTAMPNS {
			continue
		}
		switch len(m.Data) {
		case 16:
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return sec*1e9 + nsec, true
		case 8:
			sec := int64(int32(binary.NativeEndian.Uint32(m.Data[0:4])))
			nsec := int64(int32(binary.NativeEndian.Uint32(m.Data[4:8])))
			return sec*1e9 + nsec, true
		}
	}
	return 0, false
}

// sleeper sleeps precisely. Each pipe writer has its own.
//
// It arms a timerfd (a high-resolution kernel timer without timer slack) and
// reads it through Go's network poller, so the goroutine parks and its P is
// free for other goroutines while it sleeps. A plain nanosleep(2) would keep
// the P in a system call for the whole sleep: with GOMAXPROCS=2, two writers
// sleeping at once would then stall every other goroutine, including the
// ones that forward data, until one woke up. If a timerfd cannot be set up,
// it falls back to nanosleep(2) with the thread's timer slack lowered.
type sleeper struct {
	f      *os.File // timerfd, nil until first use or if unavailable
	fd     int
	failed bool
	buf    [8]byte
}

// sleep sleeps for about ns nanoseconds (possibly less).
func (s *sleeper) sleep(ns int64) {
	if ns <= 0 {
		return
	}
	if s.f == nil && !s.failed {
		fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
		if err != nil {
			s.failed = true
		} else {
			s.f, s.fd = os.NewFile(uintptr(fd), "pgproxy-timerfd"), fd
		}
	}
	if s.f != nil {
		its := unix.ItimerSpec{Value: unix.NsecToTimespec(ns)}
		if unix.TimerfdSettime(s.fd, 0, &its, nil) == nil {
			_, _ = s.f.Read(s.buf[:]) // parks until the timer expires
			return
		}
	}
	nanosleep(ns)
}

// close releases the timerfd.
func (s *sleeper) close() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// nanosleep sleeps with nanosleep(2) on the current thread with its timer
// slack lowered to 1 ns (the default 50 µs slack would make every wake-up
// about 50 µs late), restoring the thread's default slack afterwards.
func nanosleep(ns int64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	ts := unix.NsecToTimespec(ns)
	_ = unix.Nanosleep(&ts, nil)                       // EINTR: the caller recomputes and sleeps again
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0) // 0: the thread's default
}
