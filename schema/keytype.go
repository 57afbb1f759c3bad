package schema

import "fmt"

// keyRender returns the SQL expression that renders key column col, read
// from the jsonb variable v, as text that does not depend on the session's
// settings: one key value is always one subject.
//
// baseType is the column's type with domains resolved (pg_type.typname),
// typtype its pg_type.typtype.
func keyRender(v, col, baseType string, typtype byte) (string, error) {
	field := v + "->>" + quoteLiteral(col)
	switch {
	case typtype == 'e': // enum: its label
		return field, nil
	}
	switch baseType {
	case "int2", "int4", "int8", "oid", "text", "varchar", "bpchar", "name", "char",
		"uuid", "bool", "date", "timestamp", "time", "citext":
		// to_jsonb renders these the same whatever DateStyle, TimeZone or
		// locale say (dates and timestamps in ISO 8601).
		return field, nil
	case "numeric":
		// 1.50 and 1.5 are the same key.
		return "trim_scale((" + field + ")::numeric)::text", nil
	case "timestamptz":
		// to_jsonb renders the session's offset; normalise to UTC.
		ts := "((" + field + ")::timestamptz AT TIME ZONE 'UTC')"
		return "coalesce(to_char(" + ts + `, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), ` + field + ")", nil
	case "bytea":
		// to_jsonb follows bytea_output; hex is fixed.
		return "encode((" + field + ")::bytea, 'hex')", nil
	}
	return "", fmt.Errorf("key column %q has type %s, whose text form is not stable enough to name a subject "+
		"(supported: integers, text types, uuid, numeric, bool, date, time, timestamp, timestamptz, bytea, enums); pass another --key",
		col, baseType)
}
