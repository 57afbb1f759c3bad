package consumers

import (
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// SplitTable splits a consumer's table setting, "schema.table", at the
// first dot; a name without a dot is in schema public.
func SplitTable(s string) (schema, table string, err error) {
	schema, table, ok := strings.Cut(s, ".")
	if !ok {
		schema, table = "public", s
	}
	if schema == "" || table == "" {
		return "", "", fmt.Errorf("%q: use schema.table, e.g. public.__cmdb", s)
	}
	return schema, table, nil
}

// TableCounter registers (or finds, when another consumer of the same
// process registered it first) a counter vector labelled by table and
// returns the counter for table. Consumer packages use it for their own
// metrics.
func TableCounter(reg prometheus.Registerer, name, help, table string) (prometheus.Counter, error) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"table"})
	if err := reg.Register(v); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("registering %s: %w", name, err)
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, fmt.Errorf("registering %s: %w", name, err)
		}
		v = existing
	}
	return v.WithLabelValues(table), nil
}
