//go:build !unix

package netfault

import "syscall"

// setBuffers is a no-op here; the buffers are set after connecting instead.
func setBuffers(_, _ string, _ syscall.RawConn) error { return nil }
