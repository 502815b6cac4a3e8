//go:build race

package attach_test

const raceEnabled = true
