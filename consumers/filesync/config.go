package filesync

import (
	"fmt"
	"os"
	"time"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// Defaults applied by Config.Validate to fields left at their zero value.
const (
	DefaultDurable  = "filesync"
	DefaultTable    = "public.__cmdb"
	DefaultColumn   = "value"
	DefaultPath     = Placeholder + "/host_specific.json"
	DefaultFileMode = os.FileMode(0o644)
	DefaultDirMode  = os.FileMode(0o755)
)

// Config configures filesync.
type Config struct {
	// Table is the watched table, "schema.table" (default public.__cmdb); a
	// name without a dot is in schema public. The first dot separates schema
	// and table.
	Table string
	// Keys, when set, limits this instance to these keys (values of a
	// single-column key): only their files are ever written. Truncates of
	// the table still apply, to these keys' files only.
	Keys []string
	// Column is the column whose JSON value each file holds (default value).
	Column string
	// Dir is the root directory. Required. Nothing outside it is touched.
	Dir string
	// Path is the file's path under Dir (default {key}/host_specific.json);
	// {key} is the row's key, see KeyText.
	Path string
	// Quiet is the per-key quiet period passed to the runtime (default 0).
	Quiet time.Duration
	// FileMode is the mode of the files written (default 0644).
	FileMode os.FileMode
	// DirMode is the mode of the directories created (default 0755).
	DirMode os.FileMode
}

// Validate fills in defaults and names the first invalid field.
func (c *Config) Validate() error {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.Column == "" {
		c.Column = DefaultColumn
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if c.FileMode == 0 {
		c.FileMode = DefaultFileMode
	}
	if c.DirMode == 0 {
		c.DirMode = DefaultDirMode
	}
	if _, _, err := consumers.SplitTable(c.Table); err != nil {
		return fmt.Errorf("filesync config: Table: %w", err)
	}
	if c.Dir == "" {
		return fmt.Errorf("filesync config: Dir is required: the root directory the files are written under")
	}
	if _, err := parseTemplate(c.Path); err != nil {
		return fmt.Errorf("filesync config: Path: %w", err)
	}
	for _, k := range c.Keys {
		if err := checkKeyValue(k); err != nil {
			return fmt.Errorf("filesync config: Keys: %w", err)
		}
	}
	if c.Quiet < 0 {
		return fmt.Errorf("filesync config: Quiet %s is negative", c.Quiet)
	}
	if c.FileMode&^os.ModePerm != 0 {
		return fmt.Errorf("filesync config: FileMode %#o: only permission bits (e.g. 0644)", uint32(c.FileMode))
	}
	if c.DirMode&^os.ModePerm != 0 {
		return fmt.Errorf("filesync config: DirMode %#o: only permission bits (e.g. 0755)", uint32(c.DirMode))
	}
	if c.FileMode&0o600 != 0o600 {
		return fmt.Errorf("filesync config: FileMode %#o: the owner must be able to read and write the files", uint32(c.FileMode))
	}
	if c.DirMode&0o700 != 0o700 {
		return fmt.Errorf("filesync config: DirMode %#o: the owner must be able to list and write the directories", uint32(c.DirMode))
	}
	return nil
}

// ConsumerConfig returns base with what filesync needs from the runtime: its
// filter subjects (the table, or the chosen keys and the table's table-level
// subject) and the quiet period. A base without a durable name gets
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
	if len(c.Keys) == 0 {
		base.FilterSubjects = []string{change.TableFilter(prefix, schema, table)}
	} else {
		seen := map[string]bool{}
		// Truncates are table-level: every instance needs them.
		base.FilterSubjects = []string{change.Subject(prefix, schema, table, nil)}
		for _, k := range c.Keys {
			if seen[k] {
				continue
			}
			seen[k] = true
			base.FilterSubjects = append(base.FilterSubjects, change.KeyFilter(prefix, schema, table, []string{k}))
		}
	}
	base.Quiet = c.Quiet
	return base
}
