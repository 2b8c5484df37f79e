//go:build unix

package netfault

import "syscall"

// setBuffers sets a socket's receive and send buffers before it listens or
// connects, so the TCP window is negotiated small from the start (shrinking
// the buffers of an established connection makes the kernel drop segments
// the peer was allowed to send, which then crawl through retransmissions).
func setBuffers(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		if err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, sockBuf); err != nil {
			return
		}
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, sockBuf)
	}); cerr != nil {
		return cerr
	}
	return err
}
