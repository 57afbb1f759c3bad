package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// BinEnv names the environment variable that points BinDir at a directory of
// PostgreSQL server binaries, for machines with several versions or a build
// of their own.
const BinEnv = "HERALD_TEST_PG_BIN"

// debianBinGlob matches where Debian and Ubuntu install each major version's
// server binaries; they are not on PATH there.
const debianBinGlob = "/usr/lib/postgresql/*/bin"

// BinDir returns the directory holding the PostgreSQL server binaries
// (initdb and postgres). It looks, in order, at $HERALD_TEST_PG_BIN,
// `pg_config --bindir`, the highest version under /usr/lib/postgresql/*/bin
// and finally initdb on PATH. A directory named by HERALD_TEST_PG_BIN that
// lacks the binaries is an error rather than a reason to look elsewhere,
// because silently testing against another version hides the mistake.
func BinDir() (string, error) {
	if dir := os.Getenv(BinEnv); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("pgtest: %s=%s: %w; point it at the directory holding initdb and postgres", BinEnv, dir, err)
		}
		return dir, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		// pg_config may come from a client-only package whose bindir has no
		// server, so its answer is checked like any other candidate.
		if dir := strings.TrimSpace(string(out)); dir != "" && checkBinDir(dir) == nil {
			return dir, nil
		}
	}
	for _, dir := range debianBinDirs() {
		if checkBinDir(dir) == nil {
			return dir, nil
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if dir := filepath.Dir(initdb); checkBinDir(dir) == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("pgtest: no PostgreSQL server binaries (initdb, postgres) found via %s, pg_config, %s or PATH: "+
		"install the PostgreSQL server package (Debian/Ubuntu: apt-get install postgresql) or set %s to the directory holding them",
		BinEnv, debianBinGlob, BinEnv)
}

// debianBinDirs lists /usr/lib/postgresql/<version>/bin, highest version
// first, so a machine with several versions tests against the newest.
func debianBinDirs() []string {
	dirs, _ := filepath.Glob(debianBinGlob)
	version := func(dir string) float64 {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
		if err != nil {
			return -1
		}
		return v
	}
	sort.SliceStable(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	return dirs
}

// checkBinDir reports why dir cannot serve as the binary directory, or nil.
func checkBinDir(dir string) error {
	var errs []error
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("no %s: %w", name, err))
		case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s is not an executable file", filepath.Join(dir, name)))
		}
	}
	return errors.Join(errs...)
}
