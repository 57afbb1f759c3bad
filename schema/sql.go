package schema

import (
	"context"
	"embed"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed sql/*.sql
var sqlFiles embed.FS

// query returns the text of sql/<name>.sql. A missing file is a programming
// error caught by the package tests, so it panics.
func query(name string) string {
	b, err := sqlFiles.ReadFile("sql/" + name + ".sql")
	if err != nil {
		panic(fmt.Sprintf("schema: missing embedded query %s: %v", name, err))
	}
	return strings.TrimSpace(string(b))
}

// Query returns one of the embedded queries by name (the file name under
// sql/ without .sql), for the bridge and tools that run Herald's SQL.
func Query(name string) string { return query(name) }

// DB is what the schema functions need from a connection: *pgx.Conn,
// *pgxpool.Pool and pgx.Tx all satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}
