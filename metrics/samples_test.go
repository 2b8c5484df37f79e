package metrics_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// samples are the values of a registry or a scrape, by series: a name with
// its non-empty labels in order, e.g. `x_total{a="1",b="2"}`. A histogram
// gives name_count and name_sum.
type samples map[string]float64

// series names a series as samples does; labels alternate names and values.
func series(name string, labels ...string) string {
	pairs := make([]string, 0, len(labels)/2)
	for i := 0; i+1 < len(labels); i += 2 {
		if labels[i+1] != "" {
			pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
		}
	}
	slices.Sort(pairs)
	if len(pairs) == 0 {
		return name
	}
	return name + "{" + strings.Join(pairs, ",") + "}"
}

func flatten(fams []*dto.MetricFamily) samples {
	s := samples{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				s[series(f.GetName(), labels...)] = m.Counter.GetValue()
			case m.Gauge != nil:
				s[series(f.GetName(), labels...)] = m.Gauge.GetValue()
			case m.Histogram != nil:
				s[series(f.GetName()+"_count", labels...)] = float64(m.Histogram.GetSampleCount())
				s[series(f.GetName()+"_sum", labels...)] = m.Histogram.GetSampleSum()
			case m.Untyped != nil:
				s[series(f.GetName(), labels...)] = m.Untyped.GetValue()
			}
		}
	}
	return s
}

// gather reads every series of g.
func gather(t testing.TB, g prometheus.Gatherer) samples {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return flatten(fams)
}

// scrape reads every series from a /metrics URL, as Prometheus would.
func scrape(t testing.TB, client *http.Client, url string) samples {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, body)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	byName, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	fams := make([]*dto.MetricFamily, 0, len(byName))
	for _, f := range byName {
		fams = append(fams, f)
	}
	return flatten(fams)
}

// family reports whether any series of the family name (or its histogram
// _count) is present.
func (s samples) family(name string) bool {
	for k := range s {
		if k == name || strings.HasPrefix(k, name+"{") || strings.HasPrefix(k, name+"_count") {
			return true
		}
	}
	return false
}

// sum adds the values of every series of name whose labels include all of
// labels (alternating names and values).
func (s samples) sum(name string, labels ...string) float64 {
	total := 0.0
	for k, v := range s {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(k, fmt.Sprintf("%s=%q", labels[i], labels[i+1])) {
				match = false
				break
			}
		}
		if match {
			total += v
		}
	}
	return total
}
