//go:build race

package encrypt_test

const raceEnabled = true
