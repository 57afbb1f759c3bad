package filesync

import "os"

// SetFsync replaces the fsync of files and directories of s, so that a
// test can make one of them fail. f is called concurrently.
func SetFsync(s *Syncer, f func(*os.File) error) { s.fsync = f }
