package service

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/anvilproject/anvil/catalog"
)

func TestAPITokenRecordedAsDigest(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, false)
	if rotated, err := s.RecordAPIToken("first-token"); err != nil || rotated {
		t.Fatalf("first record: rotated=%v err=%v", rotated, err)
	}
	if rotated, err := s.RecordAPIToken("first-token"); err != nil || rotated {
		t.Fatalf("same token again: rotated=%v err=%v", rotated, err)
	}
	since, err := s.APITokenSince()
	if err != nil || since.IsZero() {
		t.Fatalf("APITokenSince = %v, %v", since, err)
	}
	s.Close()

	s = open(t, dir, false)
	defer s.Close()
	if rotated, err := s.RecordAPIToken("second-token"); err != nil || !rotated {
		t.Fatalf("new token after restart: rotated=%v err=%v, want rotated", rotated, err)
	}
	var stored []byte
	s.cat.View(func(tx *catalog.Tx) error { stored = tx.Meta(metaTokenSHA256); return nil })
	sum := sha256.Sum256([]byte("second-token"))
	if string(stored) != hex.EncodeToString(sum[:]) {
		t.Fatalf("catalog holds %q, want the SHA-256 of the token", stored)
	}
	for _, key := range []string{metaTokenSHA256, metaTokenSince} {
		var v []byte
		s.cat.View(func(tx *catalog.Tx) error { v = tx.Meta(key); return nil })
		if string(v) == "second-token" {
			t.Fatalf("catalog key %s holds the token in plain text", key)
		}
	}
}
