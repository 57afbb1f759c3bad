package mailstore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// Defaults applied by Config.Validate to fields left at their zero value.
const (
	DefaultDurable = "mailstore"
	DefaultTable   = "public.mail_users"
	DefaultArchive = ".archive"
)

// ChownMode says whether mailboxes are given to Config.UID and the row's gid.
type ChownMode string

// Chown modes.
const (
	// ChownAuto (the default) changes ownership when the process runs as
	// root, the only case where it can give files away.
	ChownAuto ChownMode = "auto"
	// ChownAlways changes ownership, and fails to start if it cannot.
	ChownAlways ChownMode = "always"
	// ChownNever leaves every file to the process's own user; gid changes
	// are then ignored.
	ChownNever ChownMode = "never"
)

// Config configures a Store.
type Config struct {
	// Root is the directory the mailboxes live under. Required; created if
	// missing. Nothing outside it is touched.
	Root string
	// Table is the watched table, "schema.table" (default
	// public.mail_users); a name without a dot is in schema public.
	Table string
	// UID owns every mailbox when ownership is changed (see Chown). It is
	// required then, and may not be 0: mail is never given to root.
	UID int
	// Chown says when ownership is changed (default ChownAuto).
	Chown ChownMode
	// Archive is the folder, inside Root, deleted mailboxes are moved to
	// (default .archive). An absolute path must lie inside Root.
	Archive string
	// PurgeAfter, when positive, removes archived mailboxes once their
	// delete is this old. 0 (the default) keeps them forever.
	PurgeAfter time.Duration
	// DryRun logs what would be done and changes nothing: no mailbox, no
	// guard record, no dead letter.
	DryRun bool
}

// Validate fills in defaults and names the first invalid field. It does not
// touch the file system: New checks that Root can be opened and that the
// archive, resolved through it, stays inside.
func (c *Config) Validate() error {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.Chown == "" {
		c.Chown = ChownAuto
	}
	if c.Archive == "" {
		c.Archive = DefaultArchive
	}
	if c.Root == "" {
		return fmt.Errorf("mailstore config: Root is required: the directory the mailboxes live under")
	}
	if _, _, err := consumers.SplitTable(c.Table); err != nil {
		return fmt.Errorf("mailstore config: Table: %w", err)
	}
	switch c.Chown {
	case ChownAuto, ChownAlways, ChownNever:
	default:
		return fmt.Errorf("mailstore config: Chown %q: use auto, always or never", c.Chown)
	}
	if c.chowning() {
		if c.UID == 0 {
			return fmt.Errorf("mailstore config: UID is required when ownership is changed (running as root, or with Chown set to always): " +
				"the uid of the mail user, e.g. vmail's; or set Chown to never")
		}
		if c.UID < 0 || int64(c.UID) > maxID {
			return fmt.Errorf("mailstore config: UID %d is not a valid uid", c.UID)
		}
		if c.Chown == ChownAlways && os.Geteuid() != 0 {
			return fmt.Errorf("mailstore config: Chown is always but the process does not run as root, so it cannot give mailboxes to uid %d", c.UID)
		}
	}
	if _, err := archiveDir(c.Root, c.Archive); err != nil {
		return fmt.Errorf("mailstore config: Archive: %w", err)
	}
	if c.PurgeAfter < 0 {
		return fmt.Errorf("mailstore config: PurgeAfter %s is negative; use 0 to keep archived mailboxes forever", c.PurgeAfter)
	}
	return nil
}

// chowning reports whether ownership is changed.
func (c *Config) chowning() bool {
	switch c.Chown {
	case ChownAlways:
		return true
	case ChownNever:
		return false
	}
	return os.Geteuid() == 0
}

// archiveDir returns the archive folder relative to root, clean and local:
// not the root itself, not outside it, not in mailstore's state directory.
func archiveDir(root, archive string) (string, error) {
	a := archive
	if filepath.IsAbs(a) {
		absRoot, err := filepath.Abs(root)
		if err != nil {
			return "", fmt.Errorf("%q: resolving the root: %w", archive, err)
		}
		rel, err := filepath.Rel(absRoot, filepath.Clean(a))
		if err != nil || !filepath.IsLocal(rel) {
			return "", fmt.Errorf("%q is outside the root %s; archived mailboxes must stay inside it (e.g. .archive)", archive, root)
		}
		a = rel
	}
	if !filepath.IsLocal(a) {
		return "", fmt.Errorf("%q is not a folder inside the root %s (no '..', not the root itself); use e.g. .archive", archive, root)
	}
	a = filepath.ToSlash(filepath.Clean(a))
	if a == "." {
		return "", fmt.Errorf("%q is the root itself; use a folder inside it, e.g. .archive", archive)
	}
	if first, _, _ := strings.Cut(a, "/"); first == stateDirName {
		return "", fmt.Errorf("%q is inside %s, where mailstore keeps its state", archive, stateDirName)
	}
	for _, el := range strings.Split(a, "/") {
		if strings.ContainsRune(el, 0) {
			return "", fmt.Errorf("%q contains a NUL byte", archive)
		}
	}
	return a, nil
}

// ConsumerConfig returns base with what mailstore needs from the runtime:
// the table's filter subject. A base without a durable name gets
// DefaultDurable. Call after Validate.
func (c Config) ConsumerConfig(base consumers.Config) consumers.Config {
	if base.Durable == "" {
		base.Durable = DefaultDurable
	}
	prefix := base.Prefix
	if prefix == "" {
		prefix = consumers.DefaultPrefix
	}
	schema, table, _ := consumers.SplitTable(c.Table)
	base.FilterSubjects = []string{change.TableFilter(prefix, schema, table)}
	return base
}
