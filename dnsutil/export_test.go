package dnsutil

// SetShuffle replaces the MX shuffle for a test and returns the restore func.
func SetShuffle(f func(n int, swap func(i, j int))) (restore func()) {
	old := shuffle
	shuffle = f
	return func() { shuffle = old }
}
