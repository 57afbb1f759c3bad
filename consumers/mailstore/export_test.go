package mailstore

// SetCrashHook makes the Store stop a change after the named step, as a
// crash would; the returned function removes the hook.
func SetCrashHook(f func(step string) error) (restore func()) {
	crashHook = f
	return func() { crashHook = nil }
}
