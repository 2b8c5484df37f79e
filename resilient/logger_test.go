package resilient_test

import (
	"fmt"
	"strings"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
)

// recordingLogger keeps every line, to check what the publisher logs.
type recordingLogger struct {
	mu     sync.Mutex
	lines  []string
	fields watermill.LogFields
}

func (l *recordingLogger) log(level, msg string, err error, fields watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf("%s %s err=%v %v %v", level, msg, err, l.fields, fields))
}

func (l *recordingLogger) Error(msg string, err error, fields watermill.LogFields) {
	l.log("ERROR", msg, err, fields)
}
func (l *recordingLogger) Info(msg string, fields watermill.LogFields) {
	l.log("INFO", msg, nil, fields)
}
func (l *recordingLogger) Debug(msg string, fields watermill.LogFields) {
	l.log("DEBUG", msg, nil, fields)
}
func (l *recordingLogger) Trace(msg string, fields watermill.LogFields) {
	l.log("TRACE", msg, nil, fields)
}
func (l *recordingLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &childLogger{parent: l, fields: fields}
}

func (l *recordingLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

type childLogger struct {
	parent *recordingLogger
	fields watermill.LogFields
}

func (c *childLogger) Error(msg string, err error, fields watermill.LogFields) {
	c.parent.log("ERROR", msg, err, c.fields.Add(fields))
}
func (c *childLogger) Info(msg string, fields watermill.LogFields) {
	c.parent.log("INFO", msg, nil, c.fields.Add(fields))
}
func (c *childLogger) Debug(msg string, fields watermill.LogFields) {
	c.parent.log("DEBUG", msg, nil, c.fields.Add(fields))
}
func (c *childLogger) Trace(msg string, fields watermill.LogFields) {
	c.parent.log("TRACE", msg, nil, c.fields.Add(fields))
}
func (c *childLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &childLogger{parent: c.parent, fields: c.fields.Add(fields)}
}
