package pgtest

import (
	"flag"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// TestCrashChild is the body of a child process the crash tests start;
	// in a normal run it is not run at all (rather than reported skipped).
	if os.Getenv(crashModeEnv) == "" && flag.Lookup("test.skip").Value.String() == "" {
		_ = flag.Set("test.skip", "^TestCrashChild$")
	}
	Main(m)
}
