package main

import (
	"slices"
	"testing"

	"securerelay/attach"
	"securerelay/config"
)

// The config package cannot import attach; its list of classes must stay
// the one attach knows.
func TestAttachmentClassesAgree(t *testing.T) {
	var want []string
	for _, c := range attach.DefaultBanned {
		want = append(want, string(c))
	}
	if !slices.Equal(config.DefaultAttachmentBanned, want) {
		t.Errorf("config.DefaultAttachmentBanned = %v, attach.DefaultBanned = %v", config.DefaultAttachmentBanned, want)
	}
	var all []string
	for _, c := range attach.BannableClasses {
		all = append(all, string(c))
	}
	if !slices.Equal(config.DefaultAttachmentBanned, all) {
		t.Errorf("validation accepts %v, attach bans by name %v", config.DefaultAttachmentBanned, all)
	}
}
