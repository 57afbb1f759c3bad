package change

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
)

// Changed compares two row objects, as PostgreSQL's jsonb renders them, and
// returns the sorted names of the columns whose values differ; a column
// present in one row and not the other differs. It returns nil when nothing
// differs. Values compare by their bytes after compacting whitespace: jsonb
// renders equal values identically, so this is exact for its output, and
// 1.50 and 1.5 differ, as they do for a numeric column. A nil, empty or null
// row counts as an object without columns; anything else that is not a JSON
// object is an error.
func Changed(old, new json.RawMessage) ([]string, error) {
	o, err := rowColumns("old", old)
	if err != nil {
		return nil, err
	}
	n, err := rowColumns("new", new)
	if err != nil {
		return nil, err
	}
	var diff []string
	var ob, nb bytes.Buffer
	for col, nv := range n {
		ov, ok := o[col]
		if !ok || !sameValue(ov, nv, &ob, &nb) {
			diff = append(diff, col)
		}
	}
	for col := range o {
		if _, ok := n[col]; !ok {
			diff = append(diff, col)
		}
	}
	slices.Sort(diff)
	return diff, nil
}

func rowColumns(name string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	if isNull(raw) {
		return nil, nil
	}
	if t := trimJSONSpace(raw); t[0] != '{' {
		return nil, fmt.Errorf("comparing rows: %s row is not a JSON object", name)
	}
	var cols map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cols); err != nil {
		return nil, fmt.Errorf("comparing rows: %s row: %w", name, err)
	}
	return cols, nil
}

// sameValue compares two JSON values by their compacted bytes, trying the raw
// bytes first since jsonb's output seldom needs compacting.
func sameValue(a, b json.RawMessage, ab, bb *bytes.Buffer) bool {
	if bytes.Equal(a, b) {
		return true
	}
	ab.Reset()
	bb.Reset()
	// Both values come from a successful json.Unmarshal, so Compact cannot fail.
	_ = json.Compact(ab, a)
	_ = json.Compact(bb, b)
	return bytes.Equal(ab.Bytes(), bb.Bytes())
}
