package testutil

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStatusKB reads a "kB" field of /proc/self/status (VmRSS, VmHWM, …),
// for the tests that bound a process's memory.
func ProcStatusKB(key string) (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/self/status %s: %w", key, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/self/status", key)
}
