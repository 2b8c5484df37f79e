package core

import (
	"testing"
	"time"
)

// The bounds stay as configured while the broker answers fast, grow with
// its answers when it slows down (never beyond four times), and come back
// as it speeds up again.
func TestPaceStretchesBoundsWithTheBrokersAnswers(t *testing.T) {
	var p pace
	const base = 500 * time.Millisecond
	if got := p.stretch(base); got != base {
		t.Fatalf("nothing observed: %s, want %s", got, base)
	}
	for range 50 {
		p.observe(5 * time.Millisecond)
	}
	if got := p.stretch(base); got != base {
		t.Errorf("fast answers: %s, want %s", got, base)
	}
	for range 50 {
		p.observe(300 * time.Millisecond)
	}
	if got := p.stretch(base); got <= base || got > 4*base {
		t.Errorf("answers of 300 ms: %s, want within (%s, %s]", got, base, 4*base)
	}
	for range 50 {
		p.observe(10 * time.Second)
	}
	if got := p.stretch(base); got != 4*base {
		t.Errorf("answers of 10 s: %s, want the cap %s", got, 4*base)
	}
	for range 100 {
		p.observe(5 * time.Millisecond)
	}
	if got := p.stretch(base); got != base {
		t.Errorf("fast again: %s, want %s", got, base)
	}
}
