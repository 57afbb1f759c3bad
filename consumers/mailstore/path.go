package mailstore

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrUnsafeName is wrapped by every error about a username or domain that
// cannot name a mailbox directory. Such changes are dead-lettered and
// nothing is written.
var ErrUnsafeName = errors.New("unfit for a mailbox path")

// MaxNameLen is the longest username or domain accepted, in bytes. It leaves
// room in a file name (255 bytes) for the archive's "-<time>" suffix.
const MaxNameLen = 200

// stateDirName is the directory, at the top of the root, where mailstore
// keeps its guard records. Domains never start with a dot, so no mailbox can
// land there.
const stateDirName = ".herald-mailstore"

// ownerFileName is the file, in every mailbox directory, that names the row
// owning it. It moves with the mailbox, so a rename moves it atomically.
const ownerFileName = ".herald-mailstore"

// maildirName is the Maildir inside a mailbox directory.
const maildirName = "Maildir"

// stampLayout renders the time of a delete in an archived mailbox's name:
// sortable, UTC, microseconds (the precision of PostgreSQL's timestamps),
// and no character a shell or a mail tool minds.
const stampLayout = "20060102T150405.000000Z"

// CheckName reports why s cannot be one element of a mailbox path, or nil.
// what names s in the error ("username", "domain"). Refused: empty, longer
// than MaxNameLen, not UTF-8, a leading '.' or '-', "..", '/', '\', NUL,
// whitespace, control or invisible formatting characters.
func CheckName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrUnsafeName, what)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%w: %s %.40q… is longer than %d bytes", ErrUnsafeName, what, s, MaxNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s %q is not valid UTF-8", ErrUnsafeName, what, s)
	case s[0] == '.':
		return fmt.Errorf("%w: %s %q starts with '.' (hidden names belong to the archive and mailstore's state)", ErrUnsafeName, what, s)
	case s[0] == '-':
		return fmt.Errorf("%w: %s %q starts with '-', which tools would read as an option", ErrUnsafeName, what, s)
	case strings.Contains(s, ".."):
		return fmt.Errorf("%w: %s %q contains \"..\"", ErrUnsafeName, what, s)
	case strings.ContainsAny(s, "/\\"):
		return fmt.Errorf("%w: %s %q contains a path separator", ErrUnsafeName, what, s)
	case strings.ContainsRune(s, 0):
		return fmt.Errorf("%w: %s %q contains a NUL byte", ErrUnsafeName, what, s)
	}
	for _, r := range s {
		switch {
		case unicode.IsSpace(r):
			return fmt.Errorf("%w: %s %q contains whitespace", ErrUnsafeName, what, s)
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError:
			return fmt.Errorf("%w: %s %q contains a control or invisible character (%U)", ErrUnsafeName, what, s, r)
		}
	}
	return nil
}

// MailboxPath returns the mailbox directory of a user, relative to the root:
// "<domain>/<username>". The result is always two plain, clean path
// elements, neither hidden: it cannot leave the root or reach the archive's
// dot-folder or the state directory.
func MailboxPath(domain, username string) (string, error) {
	if err := CheckName("domain", domain); err != nil {
		return "", err
	}
	if err := CheckName("username", username); err != nil {
		return "", err
	}
	return domain + "/" + username, nil
}

// splitMailbox returns the domain and username of a path MailboxPath made.
func splitMailbox(p string) (domain, username string) {
	domain, username, _ = strings.Cut(p, "/")
	return domain, username
}

// archiveName returns where a delete at time at moves the mailbox p:
// <archive>/<domain>/<username>-<time>. The name depends only on the
// mailbox and the change, so a replayed delete looks for the same name.
func archiveName(archive, p string, at time.Time) string {
	domain, username := splitMailbox(p)
	return path.Join(archive, domain, username+"-"+at.UTC().Format(stampLayout))
}

// inDir reports whether p is dir or below it.
func inDir(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}
