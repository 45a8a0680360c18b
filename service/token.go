package service

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/anvilproject/anvil/catalog"
)

// Catalog meta keys of the API token record.
const (
	metaTokenSHA256 = "api_token_sha256"
	metaTokenSince  = "api_token_since"
)

// RecordAPIToken records the API token in force in the catalog, as its
// SHA-256 digest only (the token itself lives in DATA_DIR/api.token or the
// environment, where clients read it), and reports whether it differs from
// the token recorded at the previous start, so a rotation is logged and
// dated.
func (s *Service) RecordAPIToken(token string) (rotated bool, err error) {
	sum := sha256.Sum256([]byte(token))
	digest := []byte(hex.EncodeToString(sum[:]))
	err = s.cat.Update(func(tx *catalog.Tx) error {
		old := tx.Meta(metaTokenSHA256)
		if bytes.Equal(old, digest) {
			return nil
		}
		rotated = old != nil
		if err := tx.SetMeta(metaTokenSHA256, digest); err != nil {
			return err
		}
		return tx.SetMeta(metaTokenSince, []byte(time.Now().UTC().Format(time.RFC3339)))
	})
	if err != nil {
		return false, fmt.Errorf("record API token: %w", err)
	}
	return rotated, nil
}

// APITokenSince reports when the API token in force was first recorded.
func (s *Service) APITokenSince() (time.Time, error) {
	var raw []byte
	s.cat.View(func(tx *catalog.Tx) error { raw = tx.Meta(metaTokenSince); return nil })
	if raw == nil {
		return time.Time{}, fmt.Errorf("API token: %w", ErrNotFound)
	}
	return time.Parse(time.RFC3339, string(raw))
}
