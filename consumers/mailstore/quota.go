package mailstore

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// maildirsizeName is the Maildir++ quota file, inside the Maildir.
const maildirsizeName = "maildirsize"

// The Maildir++ quota file, as Courier defined it and Dovecot reads it:
//
//	<limit>S[,<count>C]        the quota: bytes, and optionally messages
//	<bytes> <count>            usage: one line per change, summed by readers
//	…
//
// mailstore writes the first line and keeps the usage lines. Mail servers
// append usage lines and rebuild the file when it grows or looks wrong.

// quotaFile is a parsed maildirsize.
type quotaFile struct {
	limit  int64    // the S part
	others []string // other parts of the definition (a C limit), as written
	usage  []string // usage lines, as written
}

// parseQuotaFile parses a maildirsize. It fails when the definition has no
// single byte limit, or when a usage line is not two integers: such a file
// has to be rebuilt.
func parseQuotaFile(data []byte) (quotaFile, error) {
	var q quotaFile
	text := string(data)
	if text == "" {
		return q, errors.New("empty")
	}
	if !strings.HasSuffix(text, "\n") {
		// A writer stopped in the middle of a line: the last line may be
		// cut short.
		return q, errors.New("does not end with a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	def := lines[0]
	gotS := false
	for _, part := range strings.Split(def, ",") {
		part = strings.TrimSpace(part)
		if len(part) < 2 {
			return q, fmt.Errorf("definition %q: empty part", def)
		}
		n, err := strconv.ParseInt(part[:len(part)-1], 10, 64)
		if err != nil || n < 0 {
			return q, fmt.Errorf("definition %q: %q is not a non-negative number", def, part[:len(part)-1])
		}
		switch part[len(part)-1] {
		case 'S':
			if gotS {
				return q, fmt.Errorf("definition %q has two byte limits", def)
			}
			q.limit, gotS = n, true
		case 'C':
			q.others = append(q.others, part)
		default:
			return q, fmt.Errorf("definition %q: unknown limit %q (want <n>S or <n>C)", def, part)
		}
	}
	if !gotS {
		return q, fmt.Errorf("definition %q has no byte limit", def)
	}
	for _, l := range lines[1:] {
		if !validUsage(l) {
			return q, fmt.Errorf("usage line %q is not two integers", l)
		}
		q.usage = append(q.usage, l)
	}
	return q, nil
}

// validUsage reports whether l is "<bytes> <count>", integers that may be
// negative (a delete's delta), padded with blanks.
func validUsage(l string) bool {
	f := strings.Fields(l)
	if len(f) != 2 {
		return false
	}
	for _, x := range f {
		if _, err := strconv.ParseInt(x, 10, 64); err != nil {
			return false
		}
	}
	return true
}

// definition renders the quota line.
func definition(limit int64, others []string) string {
	var b strings.Builder
	b.WriteString(strconv.FormatInt(limit, 10))
	b.WriteByte('S')
	for _, o := range others {
		b.WriteByte(',')
		b.WriteString(o)
	}
	return b.String()
}

// newQuotaFile is the maildirsize of a mailbox holding bytes in count
// messages.
func newQuotaFile(limit, bytes, count int64) []byte {
	return fmt.Appendf(nil, "%s\n%d %d\n", definition(limit, nil), bytes, count)
}

// withLimit returns the maildirsize that sets limit on the file holding
// data: the first line rewritten, any message-count limit and every usage
// line kept. A file that cannot be parsed is rebuilt with usage from scan.
// changed is false when data already has the limit and nothing to fix.
func withLimit(data []byte, exists bool, limit int64, scan func() (bytes, count int64, err error)) (out []byte, changed bool, err error) {
	if exists {
		q, perr := parseQuotaFile(data)
		if perr == nil {
			if q.limit == limit {
				return data, false, nil
			}
			var b bytes.Buffer
			b.WriteString(definition(limit, q.others))
			b.WriteByte('\n')
			for _, l := range q.usage {
				b.WriteString(l)
				b.WriteByte('\n')
			}
			return b.Bytes(), true, nil
		}
	}
	n, c, err := scan()
	if err != nil {
		return nil, false, err
	}
	return newQuotaFile(limit, n, c), true, nil
}

// scanUsage sums the messages of the Maildir at dir, the way Maildir++
// counts them: files in cur and new of the inbox and of every folder (the
// ".Name" subdirectories). A message's size is taken from the ",S=<size>"
// its name carries, as mail servers write it, or else from the file.
func scanUsage(fsys fs.FS, dir string) (bytes, count int64, err error) {
	ents, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return 0, 0, fmt.Errorf("listing %s: %w", dir, err)
	}
	folders := []string{dir}
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), ".") && e.Name() != "." && e.Name() != ".." {
			folders = append(folders, path.Join(dir, e.Name()))
		}
	}
	for _, f := range folders {
		for _, sub := range []string{"cur", "new"} {
			msgs, err := fs.ReadDir(fsys, path.Join(f, sub))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return 0, 0, fmt.Errorf("listing %s: %w", path.Join(f, sub), err)
			}
			for _, m := range msgs {
				if !m.Type().IsRegular() || strings.HasPrefix(m.Name(), ".") {
					continue
				}
				size, ok := sizeFromName(m.Name())
				if !ok {
					fi, err := m.Info()
					if err != nil {
						continue // delivered and expunged meanwhile
					}
					size = fi.Size()
				}
				bytes += size
				count++
			}
		}
	}
	return bytes, count, nil
}

// sizeFromName reads the S=<size> field of a Maildir file name
// ("1700000000.M1P2.host,S=1234,W=1260:2,S").
func sizeFromName(name string) (int64, bool) {
	base, _, _ := strings.Cut(name, ":")
	for _, f := range strings.Split(base, ",")[1:] {
		if v, ok := strings.CutPrefix(f, "S="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return 0, false
			}
			return n, true
		}
	}
	return 0, false
}
