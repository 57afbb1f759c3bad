// Package pgtest runs throwaway PostgreSQL clusters for Herald's integration
// tests, built from the PostgreSQL server binaries installed on the machine.
//
// Most tests want a database of their own on a cluster shared by the whole
// test binary:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		connString := pgtest.NewDB(t) // dropped WITH (FORCE) when the test ends
//		...
//	}
//
// Fault tests that stop, kill or restart the server take a dedicated cluster
// with NewCluster, so they never disturb the shared one.
//
// PostgreSQL refuses to run as root, and CI runs as root: in that case initdb
// and postgres run as the "postgres" system user (HERALD_TEST_PG_USER
// overrides the name), in a directory under /tmp that belongs to that user.
// The path is kept short because unix socket paths are limited to 107 bytes.
//
// No server outlives the test binary. Each postmaster is forked from an OS
// thread that stays alive for the server's lifetime and is started with
// Pdeathsig=SIGKILL, so the kernel kills it when the binary exits in any way:
// os.Exit, panic, SIGKILL. The backends follow on their own once the
// postmaster is gone. Main also closes every cluster on SIGINT and SIGTERM,
// and a directory left behind by a killed binary is removed by the next Start
// on the machine.
//
// HERALD_TEST_PG_BIN selects the directory of the PostgreSQL binaries (see
// BinDir). HERALD_TEST_PG_LOG=1 copies the shared cluster's server log to
// standard error.
package pgtest
