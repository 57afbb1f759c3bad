package filesync

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"
)

// Placeholder is the part of a path template replaced by the row's key.
const Placeholder = "{key}"

// stateDirName is the directory, at the top of the root, where filesync keeps
// what cannot live in the synced files' extended attributes: tombstones of
// deleted keys and the table's truncate floor. Keys never start with a dot,
// so no key's file can land there.
const stateDirName = ".herald-filesync"

// nameMax is the longest file name most Linux file systems accept.
const nameMax = 255

// ErrUnsafeKey is wrapped by every error about a key that cannot be turned
// into a path inside the root. Such changes are dead-lettered, never written.
var ErrUnsafeKey = errors.New("key cannot be used in a file path")

// template is a compiled path template: literal parts between placeholders.
type template struct {
	raw   string
	parts []string // len(parts) == placeholders+1
}

// parseTemplate checks a path template: relative, clean, '/'-separated, with
// at least one {key} and no other braces, and not reaching into the state
// directory.
func parseTemplate(raw string) (template, error) {
	if raw == "" {
		return template{}, errors.New("empty; use something like {key}/host_specific.json")
	}
	parts := strings.Split(raw, Placeholder)
	if len(parts) < 2 {
		return template{}, fmt.Errorf("%q has no %s; every key would write the same file", raw, Placeholder)
	}
	for _, p := range parts {
		if strings.ContainsAny(p, "{}") {
			return template{}, fmt.Errorf("%q: only %s may appear between braces", raw, Placeholder)
		}
		if strings.ContainsRune(p, 0) {
			return template{}, fmt.Errorf("%q contains a NUL byte", raw)
		}
	}
	// Check the shape with a harmless stand-in for the key.
	sample := strings.Join(parts, "k")
	if strings.HasPrefix(sample, "/") {
		return template{}, fmt.Errorf("%q is absolute; paths are relative to the directory root", raw)
	}
	for _, c := range strings.Split(sample, "/") {
		switch {
		case c == "":
			return template{}, fmt.Errorf("%q has an empty path element (a doubled or trailing '/')", raw)
		case c == "." || c == "..":
			return template{}, fmt.Errorf("%q contains %q; paths must stay inside the root", raw, c)
		}
	}
	if first, _, _ := strings.Cut(sample, "/"); first == stateDirName {
		return template{}, fmt.Errorf("%q writes into %s, which filesync keeps for its own state", raw, stateDirName)
	}
	return template{raw: raw, parts: parts}, nil
}

// KeyText renders a key as {key} shows it: a single-column key is its value;
// the columns of a multi-column key are joined with ','. A column of a
// multi-column key that holds ',' is refused, since two keys would share a
// file.
func KeyText(key []string) (string, error) {
	if len(key) == 0 {
		return "", fmt.Errorf("%w: the change has no key", ErrUnsafeKey)
	}
	for _, k := range key {
		if err := checkKeyValue(k); err != nil {
			return "", err
		}
		if len(key) > 1 && strings.ContainsRune(k, ',') {
			return "", fmt.Errorf("%w: %q: a column of a multi-column key must not contain ',', which joins the columns in {key}", ErrUnsafeKey, k)
		}
	}
	return strings.Join(key, ","), nil
}

// checkKeyValue refuses the values that could name something other than one
// ordinary file or directory of the root.
func checkKeyValue(k string) error {
	switch {
	case k == "":
		return fmt.Errorf("%w: empty key", ErrUnsafeKey)
	case k == "." || k == "..":
		return fmt.Errorf("%w: %q", ErrUnsafeKey, k)
	case strings.HasPrefix(k, "."):
		return fmt.Errorf("%w: %q starts with '.' (hidden files and %s are not for keys)", ErrUnsafeKey, k, stateDirName)
	case strings.ContainsRune(k, '/'):
		return fmt.Errorf("%w: %q contains '/'", ErrUnsafeKey, k)
	case strings.ContainsRune(k, 0):
		return fmt.Errorf("%w: %q contains a NUL byte", ErrUnsafeKey, k)
	case !utf8.ValidString(k):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrUnsafeKey, k)
	}
	for _, r := range k {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %q contains a control character", ErrUnsafeKey, k)
		}
	}
	return nil
}

// render returns the path, relative to the root, of the key's file. The
// result is always local to the root: no absolute path, no '.' or '..'
// element, no element longer than a file name may be, nothing in the state
// directory.
func (t template) render(key []string) (string, error) {
	text, err := KeyText(key)
	if err != nil {
		return "", err
	}
	p := strings.Join(t.parts, text)
	// Belt and braces: the checks above should make these impossible.
	if p != path.Clean(p) || strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%w: %q gives the path %q, which is not clean", ErrUnsafeKey, text, p)
	}
	for i, c := range strings.Split(p, "/") {
		switch {
		case c == "" || c == "." || c == "..":
			return "", fmt.Errorf("%w: %q gives the path %q, outside the root", ErrUnsafeKey, text, p)
		case len(c) > nameMax:
			return "", fmt.Errorf("%w: %q makes the file name %.40q… longer than %d bytes", ErrUnsafeKey, text, c, nameMax)
		case i == 0 && c == stateDirName:
			return "", fmt.Errorf("%w: %q gives a path in %s", ErrUnsafeKey, text, stateDirName)
		}
	}
	return p, nil
}
