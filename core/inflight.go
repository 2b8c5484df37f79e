package core

// inFlight holds a lane's unconfirmed handoffs in delivery-tag order: the
// order they were sent in, which a lane reports them in.
type inFlight struct {
	items []*handoff
	head  int
}

func (f *inFlight) len() int { return len(f.items) - f.head }

func (f *inFlight) push(d *handoff) { f.items = append(f.items, d) }

func (f *inFlight) oldest() *handoff {
	if f.len() == 0 {
		return nil
	}
	return f.items[f.head]
}

func (f *inFlight) pop() *handoff {
	d := f.items[f.head]
	f.items[f.head] = nil
	f.head++
	if f.head == len(f.items) {
		f.items, f.head = f.items[:0], 0
	} else if f.head > 1024 && f.head*2 > len(f.items) {
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items, f.head = f.items[:n], 0
	}
	return d
}
