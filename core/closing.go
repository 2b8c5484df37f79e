package core

import (
	"sync"
	"time"
)

// waitBounded waits for wg; past d it calls giveUp, which must make what wg
// waits for return, and waits on. Close uses it to stay within
// CloseTimeout whatever the network does.
func waitBounded(wg *sync.WaitGroup, d time.Duration, giveUp func()) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		giveUp()
		<-done
	}
}
