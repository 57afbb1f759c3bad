package schema

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// ErrNotInstalled means the database has no (complete) herald schema.
var ErrNotInstalled = errors.New("herald schema is not installed in this database; run `herald migrate` first")

// Migration is one embedded, versioned migration.
type Migration struct {
	Version int
	Name    string
	Up      string
	Down    string
}

// Migrations returns the embedded migrations in version order.
func Migrations() []Migration {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		panic(err)
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		name := e.Name()
		var dir string
		switch {
		case strings.HasSuffix(name, ".up.sql"):
			dir = "up"
		case strings.HasSuffix(name, ".down.sql"):
			dir = "down"
		default:
			continue
		}
		num, rest, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			panic(fmt.Sprintf("schema: migration file %s is not named NNN_name.(up|down).sql", name))
		}
		body, err := migrationFiles.ReadFile("migrations/" + name)
		if err != nil {
			panic(err)
		}
		m := byVersion[v]
		if m == nil {
			m = &Migration{Version: v, Name: strings.TrimSuffix(strings.TrimSuffix(rest, ".up.sql"), ".down.sql")}
			byVersion[v] = m
		}
		if dir == "up" {
			m.Up = string(body)
		} else {
			m.Down = string(body)
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out
}

// LatestVersion is the version the embedded migrations bring a database to.
func LatestVersion() int {
	ms := Migrations()
	return ms[len(ms)-1].Version
}

// MigrateResult says what Migrate did.
type MigrateResult struct {
	Applied []int // versions applied by this call
	Version int   // version after the call
	Epoch   int64 // install epoch
}

// Migrate brings schema herald to the latest version. It runs in one
// transaction under an advisory lock, so running it twice, or from several
// processes at once, ends in the same schema with one epoch.
func Migrate(ctx context.Context, db DB) (MigrateResult, error) {
	var res MigrateResult
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, query("migrate_lock")); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, query("migrate_bootstrap")); err != nil {
			return fmt.Errorf("creating schema herald: %w", err)
		}
		current := 0
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM herald.schema_version`).Scan(&current); err != nil {
			return fmt.Errorf("reading schema version: %w", err)
		}
		for _, m := range Migrations() {
			if m.Version <= current {
				continue
			}
			if _, err := tx.Exec(ctx, m.Up); err != nil {
				return fmt.Errorf("applying migration %03d_%s: %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO herald.schema_version (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
				return fmt.Errorf("recording migration %03d: %w", m.Version, err)
			}
			res.Applied = append(res.Applied, m.Version)
			current = m.Version
		}
		res.Version = current
		return tx.QueryRow(ctx, `SELECT epoch FROM herald.install`).Scan(&res.Epoch)
	})
	if err != nil {
		return MigrateResult{}, explainPgError(err)
	}
	return res, nil
}

// Installed reports the installed schema version and epoch, or
// ErrNotInstalled when schema herald is missing or older than this build.
func Installed(ctx context.Context, db DB) (version int, epoch int64, err error) {
	var ok bool
	if err := db.QueryRow(ctx, `SELECT to_regclass('herald.schema_version') IS NOT NULL AND to_regclass('herald.install') IS NOT NULL`).Scan(&ok); err != nil {
		return 0, 0, fmt.Errorf("checking for schema herald: %w", explainPgError(err))
	}
	if !ok {
		return 0, 0, ErrNotInstalled
	}
	err = db.QueryRow(ctx, `SELECT (SELECT coalesce(max(version), 0) FROM herald.schema_version), (SELECT epoch FROM herald.install)`).Scan(&version, &epoch)
	if err != nil {
		return 0, 0, fmt.Errorf("reading schema version: %w", explainPgError(err))
	}
	if version < LatestVersion() {
		return version, epoch, fmt.Errorf("herald schema is at version %d, this build needs %d; run `herald migrate`: %w", version, LatestVersion(), ErrNotInstalled)
	}
	return version, epoch, nil
}

// explainPgError adds advice to the PostgreSQL errors an operator is likely
// to meet; it keeps the original error wrapped.
func explainPgError(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "42501": // insufficient_privilege
		return fmt.Errorf("%w (the role Herald connects as needs CREATE on the database and ownership of the watched tables)", err)
	case "55P03": // lock_not_available
		return fmt.Errorf("%w (a long transaction holds a lock on the table; retry later or end it)", err)
	}
	return err
}
