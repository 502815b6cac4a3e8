package config

import (
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

func bcryptCheck(hash, password string) error {
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password))
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"0", 0},
		{"30s", 30 * time.Second},
		{"5m", 5 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"5d", 5 * 24 * time.Hour},
		{"1d12h", 36 * time.Hour},
		{"1.5d", 36 * time.Hour},
		{"1d 12h", 36 * time.Hour},
		{"250ms", 250 * time.Millisecond},
		{"-1m", -time.Minute},
		{" 2h ", 2 * time.Hour},
	} {
		got, err := ParseDuration(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "5", "d", "5x", "5days", "1..5h", "h5", "300000000d", "5m-3s"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"4096", 4096},
		{"100B", 100},
		{"1KB", 1000},
		{"50MB", 50_000_000},
		{"2GB", 2_000_000_000},
		{"1KiB", 1024},
		{"50MiB", 50 << 20},
		{"1GiB", 1 << 30},
		{"1K", 1024},
		{"50M", 50 << 20},
		{"1G", 1 << 30},
		{"50mb", 50_000_000},
		{"50 MiB", 50 << 20},
		{"1.5G", 3 << 29},
		{"0.5KB", 500},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "MB", "-5MB", "50XB", "1.5", "1e6", "9999999TiB", "5 M B"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %v, want an error", in, got)
		}
	}
}

func TestUnitsRoundTrip(t *testing.T) {
	type T struct {
		D Duration `yaml:"d"`
		S Size     `yaml:"s"`
	}
	for _, v := range []T{
		{Duration(5 * 24 * time.Hour), 50_000_000},
		{Duration(90 * time.Second), 50 << 20},
		{Duration(36 * time.Hour), 1234},
		{0, 0},
	} {
		out, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var back T
		if err := yaml.Unmarshal(out, &back); err != nil || back != v {
			t.Errorf("%+v -> %q -> %+v, %v", v, out, back, err)
		}
	}
	if got := Duration(5 * 24 * time.Hour).String(); got != "5d" {
		t.Errorf("5 days prints as %q", got)
	}
	if got := Size(50 << 20).String(); got != "50MiB" {
		t.Errorf("50MiB prints as %q", got)
	}
}

func TestUnitsFromYAMLIntegers(t *testing.T) {
	var v struct {
		S Size     `yaml:"s"`
		D Duration `yaml:"d"`
	}
	if err := yaml.Unmarshal([]byte("s: 10485760\nd: 0\n"), &v); err != nil || v.S != 10485760 || v.D != 0 {
		t.Errorf("got %+v, %v", v, err)
	}
}
